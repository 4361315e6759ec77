"""Run directories of ``agd train``: config, dataset, and atomic checkpoints for bit-identical resume.

Layout: ``<run>/config.json``, ``<run>/data/`` (the run's HDF5 dataset), ``<run>/progress.csv``,
``<run>/tb/``, ``<run>/checkpoint/`` (``state.json``, ``agent.pt``, ``model/``, ``training.pt``: the
world-model trainer's state and the RNG states).
A checkpoint is written to ``checkpoint.tmp`` and swapped in by renames, so a crash leaves either the
old or the new one. Resuming rolls the dataset back to the episodes the checkpoint had seen (later
ones are kept in ``data.rolled-back-<n>``, never deleted) so the continuation replays exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agd_envs.datasets import DatasetError, DatasetWriter, EpisodeDataset
from agd_envs.oracle import OracleWorldModel
from agd_envs.tasks import Task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel

if TYPE_CHECKING:
    from agents.a2c import A2CAgent

Model = WorldModel | OracleWorldModel
"""A run's world model: ``save``/``load``/``state_dict`` are what a checkpoint touches."""


TRAINER_KEY = "model_trainer"
"""Key of ``WorldModelTrainer.state_dict()`` in ``training.pt`` (None for the oracle, which has no trainer)."""


class RunError(ValueError):
    """A run directory cannot be used as asked; the message says why and what to do."""


class RunCheckpoint:
    """Reads and writes the files of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.data_dir = self.run_dir / "data"
        self.dir = self.run_dir / "checkpoint"
        self.config_path = self.run_dir / "config.json"
        self._new_target: dict[str, Any] | None = None  # the config of a resumed run whose steps were extended

    def prepare(self, config: dict[str, Any], resume: bool) -> None:
        """Create a fresh run directory, or check that ``resume`` can continue the one there.

        :param config: the run's config as a JSON-serialisable dict (``dataclasses.asdict(TrainerConfig)``).
        """
        saved = json.loads(self.config_path.read_text()) if self.config_path.exists() else None
        task = config["task"]
        if resume:
            if saved is None:
                raise RunError(f"{self.run_dir}: no run to resume (no config.json); start it without --resume")
            if saved["task"] != task:
                raise RunError(f"{self.run_dir}: holds a {saved['task']} run, not {task}; pass --task {saved['task']} or another --out")
            if not (self.dir / "state.json").exists():
                raise RunError(f"{self.run_dir}: no checkpoint yet (checkpoint/state.json); start the run again without --resume in a new --out")
            wanted = json.loads(json.dumps(config))  # tuples -> lists, as saved
            # A field missing from the saved config was added after the run started: it resumes at its default.
            changed = sorted(k for k in saved if k != "steps" and saved[k] != wanted.get(k))
            if changed:
                key = changed[0]
                raise RunError(
                    f"{self.run_dir}: a resumed run keeps its config, but {key} = {wanted.get(key)!r} differs from the saved "
                    f"{saved.get(key)!r}; only steps can change (to extend the run); start a new --out to change {key}"
                )
            if wanted["steps"] != saved["steps"]:  # extending the run: the saved target moves once load succeeds
                self._new_target = wanted
            return
        if saved is not None:
            what = f"a {saved['task']} run" if saved.get("task") != task else "a run"
            raise RunError(f"{self.run_dir}: already holds {what}; pass --resume to continue it or choose another --out (nothing was overwritten)")
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise RunError(f"{self.run_dir}: exists and is not empty; choose another --out (nothing was overwritten)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def copy_dataset(self, source: Path, task: Task) -> None:
        """Start the run's dataset as a copy of ``source`` (checked to hold ``task`` data)."""
        EpisodeDataset.open(source, task=task)  # raises DatasetError naming the problem
        data = source / "data" if (source / "data").is_dir() else source
        shutil.copytree(data, self.data_dir)
        for journal in self.data_dir.glob("journal*"):
            journal.unlink()

    def save(
        self, state: dict[str, Any], agent: "A2CAgent", model: Model, trainer: WorldModelTrainer | None,
        generator: torch.Generator,
    ) -> None:
        """Write a complete checkpoint atomically (``trainer``: the world model's, None for the oracle)."""
        tmp = self.run_dir / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(agent.state_dict(), tmp / "agent.pt")
        model.save(tmp / "model")
        training = {
            TRAINER_KEY: None if trainer is None else trainer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "generator": generator.get_state(),
        }
        torch.save(training, tmp / "training.pt")
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
        old = self.run_dir / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            self.dir.rename(old)
        tmp.rename(self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def load(
        self, agent: "A2CAgent", model: Model, trainer: WorldModelTrainer | None, generator: torch.Generator
    ) -> dict[str, Any]:
        """Restore agent, model, trainer (optimizers) and RNGs in place; roll the dataset back; return the state."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
            agent.load_state_dict(torch.load(self.dir / "agent.pt", map_location=agent.device, weights_only=True))
            model.load_state_dict(type(model).load(self.dir / "model", task=model.task, device=model.device).state_dict())
            training = torch.load(self.dir / "training.pt", weights_only=True)
        except Exception as err:  # torch raises pickle, zip and runtime errors for damaged files
            raise RunError(f"{self.dir}: corrupt checkpoint ({type(err).__name__}: {err}); start a new run in another --out") from err
        trainer_state = _trainer_state(training)
        if trainer is not None and trainer_state is not None:
            trainer.load_state_dict(trainer_state)
        torch.set_rng_state(training["torch_rng"])
        generator.set_state(training["generator"])
        self._roll_back_dataset(state["num_episodes"], model.task)
        if self._new_target is not None:
            self.config_path.write_text(json.dumps(self._new_target, indent=2) + "\n")
        return state

    def _roll_back_dataset(self, num_episodes: int, task: Task) -> None:
        try:
            data = EpisodeDataset.open(self.data_dir, task=task)
        except DatasetError as err:
            raise RunError(f"{self.data_dir}: the run's dataset cannot be opened ({err})") from err
        if data.num_episodes == num_episodes:
            return
        if data.num_episodes < num_episodes:
            raise RunError(f"{self.data_dir}: holds {data.num_episodes} episodes but the checkpoint saw {num_episodes}; the dataset was altered")
        backup = self.run_dir / f"data.rolled-back-{data.num_episodes}"
        episodes = [data.episode(i) for i in range(num_episodes)]
        meta = data.metadata
        self.data_dir.rename(backup)
        with DatasetWriter(self.data_dir, task, policy=meta.get("algorithm_name", "unknown"), description=meta.get("description", ""), dataset_id=meta.get("dataset_id")) as writer:
            for e in episodes:
                writer.add_episode(e.observations, e.actions, e.rewards, e.terminations, e.truncations, seed=e.seed)


def _trainer_state(training: dict[str, Any]) -> dict[str, Any] | None:
    """The world-model trainer's state in a loaded ``training.pt``, or None.

    Checkpoints written before ``WorldModelTrainer`` existed hold the optimizer's state alone, under
    ``model_optimizer``; they resume exactly as they did.
    """
    if TRAINER_KEY in training:
        return training[TRAINER_KEY]
    optimizer = training.get("model_optimizer")
    return None if optimizer is None else {"optimizer": optimizer}
