"""Collect real MuJoCo transitions into an HDF5 dataset (Minari layout) with a vector env.

Sub-environments autoreset in Gymnasium's SAME_STEP mode: the step that ends an episode returns the
reset observation and puts the true last observation in ``info["final_obs"]``, so every stored episode
has its real final observation and episodes are stitched per sub-environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Union

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

from agd_envs.datasets import DatasetWriter, EpisodeDataset
from agd_envs.policies import SCRIPTED_POLICIES
from agd_envs.tasks import Task, get_task

# Full integration state (qpos, qvel, act, warm-start accelerations, time...): restoring it makes the
# next mj_step bit-identical, which resuming a training run needs.
_SIM_STATE = mujoco.mjtState.mjSTATE_INTEGRATION

Policy = Callable[[np.ndarray], Union[np.ndarray, torch.Tensor]]


class Refittable(Protocol):
    """What trains a model on a dataset in place (``agd_envs.training.WorldModelTrainer`` satisfies it)."""

    def fit(self, dataset: EpisodeDataset, steps: int, **kwargs: Any) -> Any: ...


@dataclass
class _EpisodeBuffer:
    """Transitions of one sub-environment's episode in flight."""

    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    seed: int | None = None


def _as_numpy_actions(actions: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().numpy()
    return np.asarray(actions, dtype=np.float32)


class RealEnvCollector:
    """Steps ``num_envs`` copies of a real task with a batched policy and appends finished episodes.

    :param task: task name (``"Hopper"``) or :class:`Task`.
    :param dataset: dataset directory (created, or appended to if it exists) or an open DatasetWriter.
    :param num_envs: sub-environments in one ``SyncVectorEnv`` (async is slower on 2 cores).
    :param seed: seeds the sub-environments (``seed + i``) and the built-in random policy.
    """

    def __init__(
        self,
        task: str | Task,
        dataset: str | os.PathLike | DatasetWriter,
        *,
        num_envs: int = 1,
        seed: int = 0,
        policy_name: str = "unknown",
        progress: bool = True,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task = get_task(task)
        if isinstance(dataset, DatasetWriter):
            self.writer = dataset
        else:
            self.writer = DatasetWriter(Path(dataset), self.task, policy=policy_name)
        self.num_envs = num_envs
        self.seed = seed
        self.progress = progress
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(self.task.env_id) for _ in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        self._obs: np.ndarray | None = None
        self._buffers = [_EpisodeBuffer() for _ in range(num_envs)]
        self.total_steps = 0
        self.episode_returns: list[float] = []  # undiscounted return of each episode finished, in order (not checkpointed)
        self._dataset: EpisodeDataset | None = None  # the last refit's read; the next one adds only new episodes

    def scripted_policy(self, name: str) -> Policy:
        """A built-in policy (``"random"`` or ``"sine"``) seeded from the collector's seed."""
        if name not in SCRIPTED_POLICIES:
            raise ValueError(f"unknown policy {name!r}; built-in policies: {', '.join(SCRIPTED_POLICIES)}")
        return SCRIPTED_POLICIES[name](self.task, seed=self.seed)

    def _start(self) -> np.ndarray:
        obs, _ = self.envs.reset(seed=[self.seed + i for i in range(self.num_envs)])
        for i, buffer in enumerate(self._buffers):
            buffer.seed = self.seed + i
            buffer.observations.append(obs[i])
        return obs

    def _act(self, policy: Policy | torch.nn.Module, obs: np.ndarray) -> np.ndarray:
        if isinstance(policy, torch.nn.Module):
            device = next(policy.parameters(), torch.empty(0)).device
            with torch.no_grad():
                actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device))
        else:
            actions = policy(obs)
        actions = _as_numpy_actions(actions)
        expected = (self.num_envs, self.task.act_dim)
        if actions.shape != expected:
            raise ValueError(
                f"policy returned actions of shape {actions.shape}, expected {expected} "
                f"(num_envs x act_dim for {self.task.env_id})"
            )
        if not np.all(np.isfinite(actions)):
            raise ValueError("policy returned NaN or inf actions; check the policy's outputs")
        # Stored actions are the ones executed: clipped to the bounds as the v5 envs' actuators clamp them.
        return np.clip(actions, self.task.action_low, self.task.action_high)

    def collect(self, policy: Policy | torch.nn.Module | str, steps: int) -> int:
        """Step all sub-environments for ``steps`` transitions in total; returns episodes finished.

        ``policy`` maps a batch ``num_envs x obs_dim`` (numpy, or a float32 tensor for an nn.Module)
        to ``num_envs x act_dim`` actions (numpy or torch), or names a built-in policy (``"random"``, ``"sine"``).
        """
        if isinstance(policy, str):
            policy = self.scripted_policy(policy)
        obs = self._start() if self._obs is None else self._obs
        finished = 0
        iterations = -(-steps // self.num_envs)
        bar = tqdm(total=iterations * self.num_envs, desc=f"collect {self.task.name}", unit="step", disable=not self.progress)
        for _ in range(iterations):
            actions = self._act(policy, obs)
            next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
            done = terminated | truncated
            for i, buffer in enumerate(self._buffers):
                buffer.actions.append(actions[i])
                buffer.rewards.append(float(rewards[i]))
                if done[i]:
                    buffer.observations.append(info["final_obs"][i])
                    self._write(buffer, bool(terminated[i]), bool(truncated[i]))
                    finished += 1
                    self._buffers[i] = _EpisodeBuffer(observations=[next_obs[i]])
                else:
                    buffer.observations.append(next_obs[i])
            obs = next_obs
            self.total_steps += self.num_envs
            bar.update(self.num_envs)
        bar.close()
        self._obs = obs
        return finished

    def refit(self, trainer: Refittable, steps: int, **fit_kwargs: Any) -> Any:
        """Train ``trainer``'s model in place for ``steps`` updates on every finished episode; returns the fit log.

        The writer is checkpointed (so the dataset on disk holds every finished episode; episodes still
        in flight are not included) and reopened as an :class:`EpisodeDataset`. Refitting in place keeps
        the model object: live dream envs hold a reference to it and step with the new weights (and, as
        ``fit`` refits the normalizer from all the data by default, the new statistics) from their next
        ``step``. Their start states are the dataset they were built with; build a new env to draw from
        the new episodes.

        :param trainer: e.g. ``WorldModelTrainer(model)``, kept across refits so its optimizer state persists.
        :param steps: gradient updates.
        :param fit_kwargs: passed to ``trainer.fit`` (``generator``, ``max_seconds``, ...; ``progress``
            defaults to this collector's).
        """
        self.writer.checkpoint()
        dataset = self._dataset.reopen() if self._dataset is not None else EpisodeDataset.open(self.writer.path, task=self.task)
        self._dataset = dataset
        fit_kwargs.setdefault("progress", self.progress)
        return trainer.fit(dataset, steps, **fit_kwargs)

    def _write(self, buffer: _EpisodeBuffer, terminated: bool, truncated: bool) -> None:
        n = len(buffer.actions)
        self.episode_returns.append(float(np.sum(buffer.rewards)))
        terminations = np.zeros(n, dtype=bool)
        truncations = np.zeros(n, dtype=bool)
        terminations[-1] = terminated
        truncations[-1] = truncated or not terminated
        self.writer.add_episode(
            observations=np.stack(buffer.observations),
            actions=np.stack(buffer.actions),
            rewards=np.asarray(buffer.rewards, dtype=np.float64),
            terminations=terminations,
            truncations=truncations,
            seed=buffer.seed,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue collection bit-identically: MuJoCo states, time limits,
        env RNGs, episodes in flight (JSON-serialisable; floats round-trip exactly through JSON)."""
        envs = []
        for env in self.envs.envs:
            sim = env.unwrapped
            state = np.empty(mujoco.mj_stateSize(sim.model, _SIM_STATE))
            mujoco.mj_getState(sim.model, sim.data, state, _SIM_STATE)
            envs.append({
                "sim": state.tolist(),
                "elapsed_steps": env.get_wrapper_attr("_elapsed_steps"),
                "rng": sim.np_random.bit_generator.state,
            })  # fmt: skip
        buffers = [
            {"observations": np.asarray(b.observations).tolist(), "actions": np.asarray(b.actions).tolist(),
             "rewards": b.rewards, "seed": b.seed}
            for b in self._buffers
        ]  # fmt: skip
        obs = None if self._obs is None else self._obs.tolist()
        return {"envs": envs, "buffers": buffers, "obs": obs, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same task and ``num_envs``)."""
        if len(state["envs"]) != self.num_envs:
            raise ValueError(f"collector state has {len(state['envs'])} sub-environments, this collector {self.num_envs}")
        if self._obs is None:
            self.envs.reset(seed=[self.seed + i for i in range(self.num_envs)])
        for env, saved in zip(self.envs.envs, state["envs"]):
            sim = env.unwrapped
            mujoco.mj_setState(sim.model, sim.data, np.asarray(saved["sim"], dtype=np.float64), _SIM_STATE)
            mujoco.mj_forward(sim.model, sim.data)
            env.set_wrapper_attr("_elapsed_steps", saved["elapsed_steps"])
            sim.np_random.bit_generator.state = saved["rng"]
        obs_dtype = self.envs.single_observation_space.dtype
        self._buffers = [
            _EpisodeBuffer(
                observations=[np.asarray(o, dtype=obs_dtype) for o in b["observations"]],
                actions=[np.asarray(a, dtype=np.float32) for a in b["actions"]],
                rewards=list(b["rewards"]), seed=b["seed"],
            )
            for b in state["buffers"]
        ]  # fmt: skip
        self._obs = None if state["obs"] is None else np.asarray(state["obs"], dtype=obs_dtype)
        self.total_steps = state["total_steps"]

    def close(self, keep_partial: bool = True) -> None:
        """Store episodes in flight as truncated (``keep_partial``), close the envs and the dataset."""
        if keep_partial:
            for buffer in self._buffers:
                if buffer.actions:
                    self._write(buffer, terminated=False, truncated=True)
        self._buffers = [_EpisodeBuffer() for _ in range(self.num_envs)]
        self.envs.close()
        self.writer.close()

    def __enter__(self) -> "RealEnvCollector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
