"""Scripted data-collection policies for the real tasks (batched, seeded, numpy)."""

from __future__ import annotations

import numpy as np

from agd_envs.tasks import Task


class UniformPolicy:
    """Uniform random actions within the task's bounds."""

    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """``B x S`` observations -> ``B x A`` actions."""
        shape = (obs.shape[0], self.task.act_dim)
        return self.rng.uniform(self.task.action_low, self.task.action_high, size=shape).astype(np.float32)


class PerturbedSinePolicy:
    """Open-loop sinusoid "gaits" with Gaussian perturbations, redrawn every ``period`` steps.

    Random actions make Hopper/Walker fall within ~20 steps; periodic motor patterns reach more
    varied, faster states, so a world model fitted on both sees a wider state distribution.
    """

    def __init__(self, task: Task, seed: int, noise: float = 0.3, period: int = 100) -> None:
        self.task = task
        self.rng = np.random.default_rng(seed)
        self.noise, self.period, self.t = noise, period, 0
        self._params: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _redraw(self, batch: int) -> None:
        shape = (batch, self.task.act_dim)
        amplitude = self.rng.uniform(0.2, 1.0, size=shape)
        frequency = self.rng.uniform(0.1, 0.6, size=(batch, 1))
        phase = self.rng.uniform(0.0, 2 * np.pi, size=shape)
        self._params = (amplitude, frequency, phase)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """``B x S`` observations -> ``B x A`` actions (the observation is not used)."""
        if self._params is None or self.t % self.period == 0 or self._params[0].shape[0] != obs.shape[0]:
            self._redraw(obs.shape[0])
        amplitude, frequency, phase = self._params
        action = amplitude * np.sin(frequency * self.t + phase)
        action = action + self.noise * self.rng.normal(size=action.shape)
        self.t += 1
        return np.clip(action, self.task.action_low, self.task.action_high).astype(np.float32)


SCRIPTED_POLICIES = {"random": UniformPolicy, "sine": PerturbedSinePolicy}
