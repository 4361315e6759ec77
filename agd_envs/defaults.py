"""Where a dream env finds its world model and start states when the caller names neither.

``gym.make("AGD-Dream-Hopper", critic=...)`` with no ``model`` uses :func:`default_model`:

1. a checkpoint cached in ``<cache>/models/<task>-cpu-<key>/`` (``<key>``: a hash of the recipe;
   ``<cache>`` = ``$AGD_ENVS_CACHE``, else ``$XDG_CACHE_HOME/agd-envs``, else ``~/.cache/agd-envs``),
   written by an earlier call or by
   ``agd fit`` (the error message below prints the exact directory);
2. otherwise a ``cpu``-preset model is trained once (progress bar) on the task's shipped
   dataset and cached there, so later calls load it in a second.

The shipped dataset ``<task>-mixed`` is looked up in ``$AGD_ENVS_DATASETS``, then in
``agd_envs/shipped_datasets/`` (where a wheel install has them: pyproject.toml maps the checkout's
``datasets/`` there), then in the ``datasets/`` directory of a source checkout; the same dataset
supplies start states when no ``dataset`` is given. When it cannot be found the error prints the
commands that create it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from agd_envs.tasks import Task, get_task

DEFAULT_PRESET = "cpu"
"""WorldModelConfig preset of the default models."""
DEFAULT_FIT_STEPS = 2500
"""Updates of the one-time default fit (about 100 s on one free CPU core with the ``cpu`` preset, whose dynamics
prior makes an update 2.5x dearer; its held-out state error is within 2x of the 1928-update one after 800,
tests/test_world_model.py)."""
DEFAULT_COLLECT_STEPS = 20_000
"""Real steps the suggested ``agd collect`` command gathers (as the shipped datasets)."""
SHIPPED_DATASET = "{task}-mixed"
"""Directory name of a task's shipped dataset (``datasets/README.md`` has the cards)."""


def cache_dir() -> Path:
    """Root of the user cache: ``$AGD_ENVS_CACHE``, ``$XDG_CACHE_HOME/agd-envs`` or ``~/.cache/agd-envs``."""
    if os.environ.get("AGD_ENVS_CACHE"):
        return Path(os.environ["AGD_ENVS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "agd-envs"


MODEL_REVISION = 4
"""Bumped whenever a change of the code alters what a saved model means (2: states anchored on s_0; 3: 5000 fit
steps; 4: the dynamics prior and 2500 fit steps)."""


def default_model_dir(task: str | Task) -> Path:
    """Cache directory of a task's default model: ``<cache>/models/<task>-cpu-<key>``.

    The key hashes the preset's config and MODEL_REVISION (bump it when DEFAULT_FIT_STEPS or the
    meaning of a checkpoint changes), so a release that changes either trains a fresh default model
    instead of loading a stale one.
    """
    from agd_envs.world_model import WorldModelConfig

    name = get_task(task).name
    recipe = {"config": WorldModelConfig.preset(DEFAULT_PRESET, name).to_dict(), "revision": MODEL_REVISION}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "models" / f"{name.lower()}-{DEFAULT_PRESET}-{key}"


def dataset_dirs() -> list[Path]:
    """Directories searched for shipped datasets: ``$AGD_ENVS_DATASETS``, the installed package's, the checkout's."""
    dirs = [Path(os.environ["AGD_ENVS_DATASETS"]).expanduser()] if os.environ.get("AGD_ENVS_DATASETS") else []
    package = Path(__file__).resolve().parent
    if (package / "shipped_datasets").is_dir():
        dirs.append(package / "shipped_datasets")
    if (package.parent / "pyproject.toml").is_file():  # a source checkout (editable install)
        dirs.append(package.parent / "datasets")
    return dirs


def fix_commands(task: str | Task) -> str:
    """The shell commands that create a task's default dataset and model."""
    name = get_task(task).name
    data = f"datasets/{SHIPPED_DATASET.format(task=name.lower())}"
    return (
        f"agd collect --task {name} --steps {DEFAULT_COLLECT_STEPS} --policy mixed --num-envs 8 --out {data} && "
        f"agd fit --task {name} --dataset {data} --preset {DEFAULT_PRESET} --steps {DEFAULT_FIT_STEPS} "
        f"--out {default_model_dir(name)}"
    )


def default_dataset_path(task: str | Task) -> Path:
    """Path of the task's shipped ``<task>-mixed`` dataset; FileNotFoundError naming the fix if absent."""
    name = SHIPPED_DATASET.format(task=get_task(task).name.lower())
    searched = [d / name for d in dataset_dirs()]
    for path in searched:
        if (path / "data" / "metadata.json").is_file():
            return path
    raise FileNotFoundError(
        f"no {get_task(task).name} dataset found (looked in {', '.join(map(str, searched))}). Create one with "
        f"`{fix_commands(task)}`, set AGD_ENVS_DATASETS to the directory holding {name}/, or pass dataset=... "
        f"(a dataset path or an EpisodeDataset)."
    )


def default_model(task: str | Task, device: str | torch.device = "cpu", *, progress: bool = True):  # -> WorldModel
    """The task's default world model: the cached checkpoint, else trained once on the shipped dataset and cached.

    :param task: task name or Task.
    :param device: where the model is placed (training runs there too).
    :param progress: show a tqdm bar during the one-time fit.
    :raises FileNotFoundError: no cached model and no shipped dataset; the message names the commands to run.
    :raises agd_envs.world_model.CheckpointError: the cached checkpoint is damaged (delete the directory it names).
    """
    from agd_envs.datasets import EpisodeDataset
    from agd_envs.training import WorldModelTrainer
    from agd_envs.world_model import WorldModel, WorldModelConfig

    task = get_task(task)
    target = default_model_dir(task)
    if (target / "config.json").is_file():
        return WorldModel.load(target, task=task, device=device)
    dataset = EpisodeDataset.open(default_dataset_path(task), task=task)
    print(
        f"agd-envs: no cached {task.name} world model; training one ({DEFAULT_FIT_STEPS} updates, "
        f"'{DEFAULT_PRESET}' preset) on {dataset.path}, cached in {target} for next time.",
        file=sys.stderr,
    )
    model = WorldModel(WorldModelConfig.preset(DEFAULT_PRESET, task)).to(device)
    generator = torch.Generator().manual_seed(0)
    WorldModelTrainer(model).fit(dataset, DEFAULT_FIT_STEPS, generator=generator, progress=progress)
    _save_atomically(model, target)
    return model


def _save_atomically(model, target: Path) -> None:
    """Save into a temporary sibling and rename, so a concurrent process never loads half a checkpoint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
