"""The single dream environment: :class:`DreamEnv`, one member of a :class:`DreamVectorEnv` without autoreset.

The closed-loop semantics (reset, step, info, autoreset) are documented in agd_envs/dream_vector_env.py;
the checks of what a caller passes in agd_envs/dream_inputs.py. Both env classes are importable from here
(the registered entry points name this module).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from agd_envs.dream_inputs import CRITIC_SIGNATURE, action_space, check_critic, observation_space
from agd_envs.dream_vector_env import CLOSED_LOOP_STEPS, DreamVectorEnv, step_guide
from agd_envs.guides import Critic
from agd_envs.tasks import Task

__all__ = [
    "CLOSED_LOOP_STEPS", "CRITIC_SIGNATURE", "DreamEnv", "DreamVectorEnv", "action_space", "check_critic",
    "observation_space", "step_guide",
]  # fmt: skip


class DreamEnv(gym.Env):
    """A single dream: a :class:`DreamVectorEnv` with one member and autoreset disabled.

    Same keywords as DreamVectorEnv (minus ``num_envs``/``autoreset_mode``). Returns python floats and
    bools, unbatched infos; stepping a finished episode raises until ``reset()``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, task: str | Task, **kwargs: Any) -> None:
        for key in ("num_envs", "autoreset_mode"):
            if key in kwargs:
                raise TypeError(f"DreamEnv has one member and no autoreset; {key!r} is a DreamVectorEnv argument")
        self.vector_env = DreamVectorEnv(task, 1, autoreset_mode=AutoresetMode.DISABLED, **kwargs)
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space

    # The vector env owns the random generator; check_env reads env.unwrapped._np_random.
    @property
    def _np_random(self) -> np.random.Generator | None:  # type: ignore[override]
        return self.vector_env._np_random

    @_np_random.setter
    def _np_random(self, value: np.random.Generator | None) -> None:
        self.vector_env._np_random = value

    @property
    def _np_random_seed(self) -> int | None:  # type: ignore[override]
        return self.vector_env._np_random_seed

    @_np_random_seed.setter
    def _np_random_seed(self, value: int | None) -> None:
        self.vector_env._np_random_seed = value

    @property
    def task(self) -> Task:
        """The task this env dreams."""
        return self.vector_env.task

    @property
    def model(self) -> Any:
        """The world model (the caller's object when one was passed)."""
        return self.vector_env.model

    @property
    def critic(self) -> Critic | None:
        """The caller's critic; assigning a new one validates it."""
        return self.vector_env.critic

    @critic.setter
    def critic(self, critic: Critic | None) -> None:
        self.vector_env.critic = critic

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a dream from a dataset state (or ``options["initial_state"]``, shape ``S``)."""
        obs, _ = self.vector_env.reset(seed=seed, options=options)
        return obs[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Imagine one transition under ``action`` (shape ``A``, clipped to the bounds)."""
        vec = self.vector_env
        if vec._started and bool(vec._ended[0]):
            raise RuntimeError(f"{self.task.dream_id}: the episode has ended (terminated or truncated); call reset()")
        act = vec.validate_actions(action, (self.task.act_dim,))
        obs, reward, terminated, truncated, info = vec.step(act[None])
        single = {key: _item(info[key][0]) for key in info if not key.startswith("_") and info[f"_{key}"][0]}
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), single

    def close(self) -> None:
        """Close the underlying vector env."""
        self.vector_env.close()


def _item(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
