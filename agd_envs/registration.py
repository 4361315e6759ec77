"""Gymnasium registration of the dream environments ``AGD-Dream-<Task>``.

Each id gets a string entry point (``gym.make``: :class:`agd_envs.dream_env.DreamEnv`) and a string
vector entry point (``gym.make_vec``: :class:`agd_envs.dream_env.DreamVectorEnv`, one batched dream
on one device); the spec's kwargs carry only the task name, everything else is a keyword of ``make``.

``max_episode_steps`` is left unset on purpose: a dream ends (``truncated``) after ``horizon`` steps
inside the env, so ``gym.make`` adds no TimeLimit and ``gym.make_vec`` passes no limit. A caller's
``gym.make(..., max_episode_steps=k)`` still adds Gymnasium's TimeLimit, which can only end episodes
earlier than the internal horizon.
"""

from __future__ import annotations

import gymnasium as gym

from agd_envs.tasks import TASKS

ENTRY_POINT = "agd_envs.dream_env:DreamEnv"
VECTOR_ENTRY_POINT = "agd_envs.dream_env:DreamVectorEnv"


def register_envs() -> list[str]:
    """Register ``AGD-Dream-<Task>`` for every task; calling it again is a no-op. Returns the ids."""
    ids = []
    for task in TASKS.values():
        ids.append(task.dream_id)
        spec = gym.registry.get(task.dream_id)
        if spec is not None and spec.entry_point == ENTRY_POINT and spec.kwargs.get("task") == task.name:
            continue  # already ours (re-import, importlib.reload): Gymnasium would warn on overriding
        gym.register(
            id=task.dream_id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            max_episode_steps=None,
            kwargs={"task": task.name},
        )
    return ids
