"""The four MuJoCo v5 tasks: dimensions, bounds, defaults and a batched termination function."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

TerminationFn = Callable[..., torch.Tensor]
"""``fn(obs)`` -> terminated; called as ``fn(obs, margin)`` only when a margin is asked for (``Task.terminated``)."""


def _never(obs: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """HalfCheetah and Reacher never terminate: ``B x S`` -> ``B`` of False (whatever the margin)."""
    return torch.zeros(obs.shape[:-1], dtype=torch.bool, device=obs.device)


def _inside(x: torch.Tensor, low: float, high: float, margin: float = 0.0) -> torch.Tensor:
    """``low < x < high`` (the v5 envs test health with strict inequalities), each finite bound first moved
    inwards by ``margin`` times its magnitude (0.7 -> 0.77 and 0.2 -> 0.18 at margin 0.1)."""
    return (x > low + _inset(low, margin)) & (x < high - _inset(high, margin))


def _inset(bound: float, margin: float) -> float:
    """How far ``margin`` moves ``bound`` inwards (outwards if negative): ``margin * |bound|``, 0 for an infinite
    bound (0 * inf is nan)."""
    return 0.0 if math.isinf(bound) else margin * abs(bound)


def hopper_terminated(obs: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Hopper-v5 default health rule on observations ``... x 11`` -> ``...`` bool (``margin``: see ``Task.terminated``).

    The env checks qpos[2:] and the *unclipped* qvel against (-100, 100); the observation holds
    qvel clipped to [-10, 10], so a velocity beyond +-100 (never seen in our 20k-step checks) is the
    one case this function cannot see. Everything else is read exactly from the observation.
    """
    z, angle = obs[..., 0], obs[..., 1]
    healthy_state = _inside(obs[..., 1:], -100.0, 100.0, margin).all(dim=-1)
    healthy = healthy_state & _inside(z, 0.7, float("inf"), margin) & _inside(angle, -0.2, 0.2, margin)
    return ~healthy


def walker2d_terminated(obs: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Walker2d-v5 default health rule on observations ``... x 17`` -> ``...`` bool (exact at ``margin`` 0)."""
    z, angle = obs[..., 0], obs[..., 1]
    return ~(_inside(z, 0.8, 2.0, margin) & _inside(angle, -1.0, 1.0, margin))


@dataclass(frozen=True)
class Task:
    """A real MuJoCo v5 task as the world model sees it.

    Attributes are plain numbers so a task can be written to JSON metadata and compared.
    """

    name: str
    """Short name used on the command line and in registered ids (``AGD-Dream-<name>``)."""
    env_id: str
    """The real Gymnasium id, e.g. ``Hopper-v5``."""
    obs_dim: int
    act_dim: int
    action_low: float
    action_high: float
    max_episode_steps: int
    termination_fn: TerminationFn = field(compare=False, repr=False, default=_never)
    """Batched ``obs[..., S] -> terminated[...]`` rule of the real env with default arguments."""
    guide_scale: float = 1.0
    """Default guide scale alpha for EAG/SAG in our parametrisation (see guides.py)."""
    ctrl_cost_weight: float = 0.0
    """Weight c of the v5 env's control cost: its reward is ``(terms of the state) - c * sum(a**2)``, with
    ``a`` the executed action (``ctrl_cost_weight``; Reacher's ``reward_control_weight``)."""

    @property
    def dream_id(self) -> str:
        """The Gymnasium id of this task's dream environment."""
        return f"AGD-Dream-{self.name}"

    def control_reward(self, actions: torch.Tensor) -> torch.Tensor:
        """The reward's known control term ``-c * sum(clip(a)**2)`` of actions ``... x A`` -> ``...``."""
        executed = actions.clamp(self.action_low, self.action_high)
        return -self.ctrl_cost_weight * executed.square().sum(dim=-1)

    def terminated(self, obs: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """Apply the termination rule to a batch of observations ``... x S``.

        ``margin`` in [0, 1) makes the rule stricter: each finite bound of a healthy interval moves inwards by
        that fraction of its magnitude (Hopper at 0.15: height above 0.805 instead of 0.7, |angle| below 0.17
        instead of 0.2), so a state near a fall counts as one. 0 is the real env's rule. A margin in [-1, 0) moves
        the bounds outwards (Hopper at -1: height above 0, |angle| below 0.4), so most falls go unseen: a diagnostic.
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"{self.name}: observations have last dimension {obs.shape[-1]}, expected {self.obs_dim}"
            )
        if not -1.0 <= margin < 1.0:
            raise ValueError(f"{self.name}: termination margin must be in [-1, 1) (a fraction of each health bound), got {margin}")
        return self.termination_fn(obs) if margin == 0.0 else self.termination_fn(obs, margin)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        # alpha 0.1: with the cpu preset's dynamics prior, EAG at alpha 1 stalled near 1000 from 30k real steps on
        # (1057 at 100k; unguided 3651), and at 35k real steps (fair protocol, seed 0) alpha 1 / 0.3 / 0.1 evaluated
        # 884 / 1454 / 2113 against the unguided 1599 (docs/results.md, "EAG's guide scale").
        Task("HalfCheetah", "HalfCheetah-v5", 17, 6, -1.0, 1.0, 1000, guide_scale=0.1, ctrl_cost_weight=0.1),
        # alpha 0.1: every Hopper EAG run that beat PPO used it; from the same start states and checkpoint the dream's
        # step-H state error (z, against the real simulator replaying its actions) is 0.29 unguided, 0.63 at 0.1 and
        # 0.83 at 1 (docs/results.md, "What the guide does to the Hopper dream"; imagination_cost_hopper_bf16.json).
        Task("Hopper", "Hopper-v5", 11, 3, -1.0, 1.0, 1000, hopper_terminated, guide_scale=0.1, ctrl_cost_weight=1e-3),
        Task("Walker2d", "Walker2d-v5", 17, 6, -1.0, 1.0, 1000, walker2d_terminated, ctrl_cost_weight=1e-3),
        # alpha 0.1: with alpha 1, EAG/SAG on Reacher (CPU defaults, seed 0) pushed the mean imagined
        # advantage from -0.3 to +0.44 per step within 3k real steps and the real return fell from -7.8
        # to -11.4; with 0.1 it kept improving (-12.2 -> -7.3), as unguided.
        Task("Reacher", "Reacher-v5", 10, 2, -1.0, 1.0, 50, guide_scale=0.1, ctrl_cost_weight=1.0),
    )
}


def get_task(name: str | Task) -> Task:
    """Look a task up by short name (``Hopper``), env id (``Hopper-v5``) or dream id."""
    if isinstance(name, Task):
        return name
    for task in TASKS.values():
        if name in (task.name, task.env_id, task.dream_id) or name.lower() == task.name.lower():
            return task
    known = list(TASKS) + [t.env_id for t in TASKS.values()]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown task {name!r}.{hint} Known tasks: {', '.join(TASKS)}.")
