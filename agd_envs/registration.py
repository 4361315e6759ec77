"""Gymnasium registration of the dream environments.

For every task four versioned ids, one per guide, and the older unversioned one:

=================================  ======================  ==========================================
id                                 guide                   ``gym.make(id)`` with no keyword
=================================  ======================  ==========================================
``AGD-Dream-<Task>-Unguided-v0``   ``none`` (PolyGRAD)     works: id-only clients (CleanRL, Tianshou)
``AGD-Dream-<Task>-Reward-v0``     ``reward`` (Diffuser)   works
``AGD-Dream-<Task>-EAG-v0``        ``eag``                 needs ``critic=`` (the agent's V)
``AGD-Dream-<Task>-SAG-v0``        ``sag``                 needs ``critic=``
``AGD-Dream-<Task>``               ``guide=`` (eag)        kept for older code: ``-EAG-v0`` plus ``guide=``
=================================  ======================  ==========================================

Each id has a ``gym.make`` entry point (:func:`make_dream_env`: a
:class:`agd_envs.dream_env.DreamEnv`) and a ``gym.make_vec`` one (:func:`make_dream_vector_env`: a
:class:`agd_envs.dream_env.DreamVectorEnv`, one batched dream on one device); the spec's kwargs carry
the task and the guide, everything else is a keyword of ``make``. Both entry points check for a
missing critic before the world model is loaded (which may mean training the default model), and the
error names the ids that need none.

``max_episode_steps`` is left unset on purpose: a dream ends (``truncated``) after ``horizon`` steps
inside the env, so ``gym.make`` adds no TimeLimit and ``gym.make_vec`` passes no limit. A caller's
``gym.make(..., max_episode_steps=k)`` still adds Gymnasium's TimeLimit, which can only end episodes
earlier than the internal horizon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym

from agd_envs.tasks import TASKS, Task, get_task

if TYPE_CHECKING:
    from agd_envs.dream_env import DreamEnv, DreamVectorEnv

ENTRY_POINT = "agd_envs.registration:make_dream_env"
VECTOR_ENTRY_POINT = "agd_envs.registration:make_dream_vector_env"
VERSION = 0
"""Version of the guide-named ids; bump it when a change alters what an id's dream produces."""
GUIDE_IDS = {"none": "Unguided", "reward": "Reward", "eag": "EAG", "sag": "SAG"}
"""The id part naming each guide."""
CRITIC_FREE = ("none", "reward")
"""Guides whose ids construct from the id alone."""


def dream_id(task: str | Task, guide: str) -> str:
    """The versioned id of ``task``'s dream with ``guide``: ``AGD-Dream-Hopper-Unguided-v0``."""
    if guide not in GUIDE_IDS:
        raise ValueError(f"unknown guide {guide!r}; registered ids exist for {', '.join(GUIDE_IDS)}")
    return f"{get_task(task).dream_id}-{GUIDE_IDS[guide]}-v{VERSION}"


def _check_critic(task: str, guide: str, critic: Any) -> None:
    if critic is None and guide not in CRITIC_FREE:
        free = " or ".join(dream_id(task, g) for g in CRITIC_FREE)
        raise ValueError(
            f"guide {guide!r} steers the dream by the agent's advantage and needs its state-value critic: pass "
            f"critic=... (obs[B, S] in real units -> V[B] or V[B, 1], e.g. agent.critic or SB3's "
            f"model.policy.predict_values). To build a dream from the id alone (CleanRL, Tianshou), use {free}."
        )


def make_dream_env(task: str, guide: str = "eag", critic: Any = None, **kwargs: Any) -> DreamEnv:
    """``gym.make``'s entry point: a DreamEnv, refused early when its guide needs a critic and none is given."""
    from agd_envs.dream_env import DreamEnv

    _check_critic(task, guide, critic)
    return DreamEnv(task, guide=guide, critic=critic, **kwargs)


def make_dream_vector_env(task: str, num_envs: int = 1, guide: str = "eag", critic: Any = None,
                          **kwargs: Any) -> DreamVectorEnv:
    """``gym.make_vec``'s entry point: a DreamVectorEnv of ``num_envs`` dreams, checked as :func:`make_dream_env`."""
    from agd_envs.dream_env import DreamVectorEnv

    _check_critic(task, guide, critic)
    return DreamVectorEnv(task, num_envs, guide=guide, critic=critic, **kwargs)


def _register(env_id: str, kwargs: dict[str, str]) -> None:
    spec = gym.registry.get(env_id)
    if spec is not None and spec.entry_point == ENTRY_POINT and spec.kwargs == kwargs:
        return  # already ours (re-import, importlib.reload): Gymnasium would warn on overriding
    gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                 max_episode_steps=None, kwargs=kwargs)


def register_envs() -> list[str]:
    """Register every task's dream ids (table in the module docstring); calling it again is a no-op. Returns the ids."""
    ids = []
    for task in TASKS.values():
        _register(task.dream_id, {"task": task.name})
        ids.append(task.dream_id)
        for guide in GUIDE_IDS:
            _register(dream_id(task, guide), {"task": task.name, "guide": guide})
            ids.append(dream_id(task, guide))
    return ids
