"""An oracle world model: the real MuJoCo simulator behind the world-model interface.

``OracleWorldModel`` imagines segments by restoring each start observation into a real Gymnasium v5
env (``gymnasium.make(task.env_id)`` with default arguments) and stepping it with the policy's
actions. It stands in for the diffusion ``WorldModel`` wherever no gradient through the model is
needed: ``agd_envs.sampling.imagine`` with guide ``none`` and ``AGDTrainer`` with
``world_model="oracle"`` (an upper bound for what a perfect model gives the agent).

State restore from an observation (``qpos``, ``qvel`` for ``env.unwrapped.set_state``):

- Hopper, Walker2d, HalfCheetah: the observation is ``[qpos[1:], qvel]`` (the x position is left
  out), so ``qpos = [0, obs[:nq-1]]`` and ``qvel = obs[nq-1:]``. The dynamics and rewards do not
  depend on x (the forward reward uses the x *change*), so x = 0 loses nothing. Hopper-v5 and
  Walker2d-v5 clip qvel to [-10, 10] in the observation: a state with a faster joint is restored
  with the clipped velocity (HalfCheetah does not clip, so it is exact there).
- Reacher: the observation is ``[cos q0, cos q1, sin q0, sin q1, target x, target y, qvel0, qvel1,
  (fingertip - target) x, y]``; the joint angles are ``atan2(sin, cos)`` (joint 0 is an unlimited
  hinge, so the wrap to (-pi, pi] changes nothing), the target's position is ``qpos[2:]``, its
  velocity is 0 (as every reset sets it and no force acts on it), and the fingertip-target vector
  is derived by the simulator.

Before each restore the env's ``MjData`` is reset (``mj_resetData``), so a rollout is a function of
its inputs only (no solver warm start carried over from earlier segments); next observations and
rewards equal the real env's to 1e-8 (tests/test_oracle.py).

Segments. One env is built (on first use) and each segment gets its own ``MjData`` of that env's
model, swapped into the env before it is stepped (``MujocoEnv.step`` reads only ``model`` and
``data``): no model compile per segment (HalfCheetah's XML prints a warning per compile). All
segments advance in lockstep, so the actor is called once per step on the whole batch. The executed
action is the policy sample clipped to the task's bounds (what the collector sends to a real env);
``SegmentBatch.actions`` keeps the unclipped samples, as the diffusion sampler does. After a
termination (Hopper, Walker2d) a segment's sim is not stepped again: the remaining rows hold the
terminal state with reward 0 and ``terminations`` True (the env's flag, made sticky; it equals
``task.terminated(states[:, 1:])`` except for Hopper's |qvel| > 100 rule, which only the env sees
through the clipped observation). The A2C masks every transition after
the first termination (``agents.returns.alive_mask``), so those rows are never learned from.

Speed (one torch thread, a shared 2-core CPU machine): Hopper at batch 256, H = 10, the A2C agent's
256x256 actor: 0.32-0.35 s per rollout, ~7,500 transitions/s. That is the simulator's own speed: a
bare ``env.step`` of Hopper-v5 (4 MuJoCo steps) ran 6,700-8,500 per second on the same machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium
import mujoco
import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from agd_envs.batch import SegmentBatch
from agd_envs.guides import Critic, advantages
from agd_envs.sampling import Actor, Simulator, policy_moments  # Simulator: re-exported for older imports
from agd_envs.segments import SegmentLayout
from agd_envs.tasks import Task, get_task

ORACLE_FILE = "oracle.json"
"""What ``OracleWorldModel.save`` writes: the task and the config (there are no weights)."""

Restore = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]
"""``restore(obs: B x S, nq, nv)`` -> (``B x nq`` qpos, ``B x nv`` qvel) of the env's ``set_state``."""


def locomotion_state(obs: np.ndarray, nq: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Hopper/Walker2d/HalfCheetah observations ``[qpos[1:], qvel]`` ``B x S`` -> qpos (x = 0), qvel."""
    qpos = np.concatenate([np.zeros((len(obs), 1)), obs[:, : nq - 1]], axis=1)
    return qpos, obs[:, nq - 1 : nq - 1 + nv]


def reacher_state(obs: np.ndarray, nq: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Reacher observations ``B x 10`` -> qpos (atan2 angles, target position), qvel (target's 0)."""
    angles = np.arctan2(obs[:, 2:4], obs[:, 0:2])
    qpos = np.concatenate([angles, obs[:, 4:6]], axis=1)
    qvel = np.concatenate([obs[:, 6:8], np.zeros((len(obs), nv - 2))], axis=1)
    return qpos, qvel


RESTORERS: dict[str, Restore] = {
    "HalfCheetah": locomotion_state,
    "Hopper": locomotion_state,
    "Walker2d": locomotion_state,
    "Reacher": reacher_state,
}
"""Per task name: how an observation becomes the simulator state."""


@dataclass
class OracleConfig:
    """What the trainer reads from a world model's config."""

    horizon: int = 10
    """Default segment length H (the diffusion model's ``WorldModelConfig.horizon``)."""

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")


class OracleWorldModel:
    """The real simulator of ``task`` as a world model (see the module docstring).

    :param task: task name or ``Task``.
    :param config: segment horizon (default ``OracleConfig()``: H = 10, as both world-model presets).
    :param device: where ``rollout`` puts its tensors.
    """

    def __init__(self, task: str | Task, config: OracleConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.task = get_task(task)
        self.config = config if config is not None else OracleConfig()
        self.layout = SegmentLayout(self.task.obs_dim, self.task.act_dim, self.config.horizon)
        self._device = torch.device(device)
        self._restore = RESTORERS[self.task.name]
        self._env: Any = None  # the unwrapped MujocoEnv, built on first use
        self._data: list[mujoco.MjData] = []  # one simulator state per segment of the largest batch so far

    @property
    def device(self) -> torch.device:
        """Device of the tensors ``rollout`` returns."""
        return self._device

    def to(self, device: str | torch.device) -> "OracleWorldModel":
        """Return tensors on ``device`` from now on (the simulator itself runs on the CPU)."""
        self._device = torch.device(device)
        return self

    def _segments(self, obs: np.ndarray) -> list[mujoco.MjData]:
        """One simulator state per observation ``B x S`` (float64), restored from a freshly reset ``MjData``."""
        if self._env is None:
            self._env = gymnasium.make(self.task.env_id).unwrapped
        env = self._env
        while len(self._data) < len(obs):
            self._data.append(mujoco.MjData(env.model))
        qpos, qvel = self._restore(obs, env.model.nq, env.model.nv)
        for data, p, v in zip(self._data, qpos, qvel):
            mujoco.mj_resetData(env.model, data)
            env.data = data
            env.set_state(p, v)
        return self._data[: len(obs)]

    def _step(self, data: mujoco.MjData, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """``env.step(action)`` on the segment whose simulator state is ``data`` -> (obs, reward, terminated)."""
        self._env.data = data  # MujocoEnv.step reads and writes only self.model and self.data
        obs, reward, terminated, _, _ = self._env.step(action)
        return obs, reward, terminated

    def close(self) -> None:
        """Close the env and drop the segment states."""
        if self._env is not None:
            self._env.close()
        self._env = None
        self._data.clear()

    def step(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One real transition from each observation ``B x S`` with actions ``B x A`` (clipped before
        execution) -> (next observations ``B x S``, rewards ``B``, terminated ``B`` bool)."""
        obs_np = obs.detach().cpu().double().numpy().reshape(-1, self.task.obs_dim)
        segments = self._segments(obs_np)
        executed = actions.detach().clamp(self.task.action_low, self.task.action_high).cpu().double().numpy()
        results = [self._step(data, a) for data, a in zip(segments, executed)]
        next_obs, rewards, terminated = (np.array(column) for column in zip(*results))
        return self._tensor(next_obs, obs.dtype), self._tensor(rewards, obs.dtype), self._tensor(terminated, torch.bool)

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(array).to(device=self.device, dtype=dtype)

    @torch.no_grad()
    def rollout(
        self,
        s0: Tensor,
        actor: Actor,
        horizon: int | None = None,
        generator: torch.Generator | None = None,
        *,
        critic: Critic | None = None,
        gamma: float = 0.99,
    ) -> SegmentBatch:
        """H-step segments (default ``config.horizon``) from real start states ``s0`` ``B x S``.

        a_t = mean(s_t) + std(s_t) * xi_t for a distribution-valued ``actor`` (xi ``B x H x A`` drawn
        once from ``generator``, on its device), a_t = actor(s_t) for a tensor-valued one. Rows after
        a termination hold the terminal state (reward 0, terminated True). With a ``critic``,
        ``advantages`` are ``agd_envs.guides.advantages`` of the segments. Tensors come back in
        ``s0``'s dtype on ``self.device``.
        """
        horizon = self.config.horizon if horizon is None else int(horizon)
        if s0.dim() != 2 or s0.shape[-1] != self.task.obs_dim:
            raise ValueError(f"s0 must be B x S = B x {self.task.obs_dim} for {self.task.name}, got {tuple(s0.shape)}")
        batch, act_dim, dtype = s0.shape[0], self.task.act_dim, s0.dtype
        xi_device = generator.device if generator is not None else self.device
        xi = torch.randn(batch, horizon, act_dim, generator=generator, device=xi_device, dtype=dtype).to(self.device)
        states = np.empty((batch, horizon + 1, self.task.obs_dim))
        states[:, 0] = s0.detach().cpu().double().numpy()
        rewards = np.zeros((batch, horizon))
        terminated = np.zeros((batch, horizon), dtype=bool)
        actions = torch.empty(batch, horizon, act_dim, device=self.device, dtype=dtype)
        segments = self._segments(states[:, 0])
        alive = np.ones(batch, dtype=bool)
        for t in range(horizon):
            state_t = self._tensor(states[:, t], dtype)
            mean, std = policy_moments(actor, rearrange(state_t, "b s -> b 1 s"))
            actions[:, t] = mean[:, 0] if std is None else mean[:, 0] + std[:, 0] * xi[:, t]
            executed = actions[:, t].clamp(self.task.action_low, self.task.action_high).cpu().double().numpy()
            states[:, t + 1] = states[:, t]  # held where the segment has terminated
            for b in np.flatnonzero(alive):
                states[b, t + 1], rewards[b, t], terminated[b, t] = self._step(segments[b], executed[b])
            alive &= ~terminated[:, t]
        terminations = self._tensor(np.logical_or.accumulate(terminated, axis=1), torch.bool)
        states_t, rewards_t = self._tensor(states, dtype), self._tensor(rewards, dtype)
        adv = None if critic is None else advantages(states_t, rewards_t, critic, terminations, gamma)
        return SegmentBatch(
            states=states_t, actions=actions, rewards=rewards_t, terminations=terminations, advantages=adv
        )

    # ------------------------------------------------------------------ checkpoints (no weights)
    def state_dict(self) -> dict[str, Any]:
        """Nothing to save beyond the config: an empty dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No-op (an oracle has no weights)."""

    def save(self, directory: str | Path) -> Path:
        """Write ``oracle.json`` (task and config) into ``directory`` (created); return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "oracle", "task": self.task.name, "config": asdict(self.config)}
        (directory / ORACLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, task: str | Task | None = None, device: str | torch.device = "cpu"
    ) -> "OracleWorldModel":
        """Read what ``save`` wrote; with ``task`` given, the file must be for that task."""
        path = Path(directory) / ORACLE_FILE
        meta = json.loads(path.read_text())
        if task is not None and get_task(task).name != meta["task"]:
            raise ValueError(f"{path}: an oracle for {meta['task']!r}, not {get_task(task).name!r}")
        return cls(meta["task"], OracleConfig(**meta["config"]), device=device)
