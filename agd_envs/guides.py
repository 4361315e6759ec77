"""Guides: a per-segment log-likelihood ``log f(tau)`` whose gradient steers reverse diffusion.

A guide is a small pure function of a segment in REAL units (states ``B x (H+1) x S``, rewards ``B x H``,
terminations ``B x H``) and, for the advantage guides, the caller's state-value critic:

=========  ==================================  =====================================================
name       log f(tau)                          entries it moves
=========  ==================================  =====================================================
``none``   0 (PolyGRAD; never calls a critic)  none
``reward`` sum_t r_t (online Diffuser)         rewards (states, through a model's reward head if it has one)
``eag``    sum_t A_t (paper §V, EAG)           states (paper: guide the state components)
``sag``    sum_t log sigmoid(A_t) (SAG)        states; gradient sum_t sigmoid(-A_t) grad A_t
=========  ==================================  =====================================================

with the one-step advantage A_t = r_t + gamma (1 - d_t) V(s_{t+1}) - V(s_t), t = 0..H-1, and
d_t = task termination of s_{t+1}, held constant (no gradient through the termination rule).

Choices, each against the reference implementation (AGD-MBRL's public code, polygrad/sampling/functions.py):

- the critic sees REAL-unit states, as it was trained; the gradient with respect to the normalized
  entries the sampler moves comes from autograd through ``Normalizer.unnormalize_*`` (chain rule:
  d/dz = std * d/ds). The reference fed z-scored states to a critic trained on raw ones.
- all H transitions are summed: our segments hold s_0..s_H, so A_{H-1} is complete. The reference
  segment holds s_0..s_{H-1} only and therefore drops the last transition.
- eag/sag move states only (the paper's choice: rewards are entries of A_t but are detached), so
  the tilt acts on the state marginal; the reward guide has nothing else to move.
- note what the EAG sum is: sum_t A_t = sum_t r_t + gamma V(s_H) - V(s_0) + (gamma - 1) sum_{0<t<H} V(s_t)
  (no terminations), so with gamma near 1 EAG mostly pulls the LAST state towards value and pushes
  the middle ones slightly away; SAG's sigmoid(-A_t) weights break the telescoping. (The reference,
  summing to H-2, does the same to s_{H-1}.)
- gradients that are not finite are replaced by 0 (a critic that overflows must not poison the
  sample); the sampler additionally clips the resulting shift (agd_envs.sampling).

How the gradient enters sampling and what the guide scale alpha means (alpha = 1: the Bayes tilt
p(tau) f(tau); relation to the reference's c sigma_t^4 step): see the agd_envs.sampling docstring.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agd_envs.normalization import Normalizer
from agd_envs.segments import SegmentLayout, decode_segment
from agd_envs.tasks import Task

Critic = Callable[[Tensor], Tensor]
"""``critic(obs: B x S real units) -> B or B x 1`` state values, differentiable (``dream_inputs.check_critic`` checks it)."""

RewardFn = Callable[[Tensor], Tensor]
"""``reward_fn(states: B x (H+1) x S real) -> B x H`` real rewards, differentiable (a world model's reward head)."""

LogF = Callable[[Tensor, Tensor, "Critic | None", Tensor, float], Tensor]


def call_net(fn: Callable[[Tensor], Any], x: Tensor) -> Any:
    """Call a caller's network on ``x`` moved to the network's device and dtype (when it has parameters).

    Works for ``nn.Module`` objects and bound methods of one (e.g. SB3's ``policy.predict_values``);
    anything else is called on ``x`` as is. The move is differentiable.
    """
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        for tensor in itertools.chain(owner.parameters(), owner.buffers()):
            if tensor.is_floating_point():
                return fn(x.to(device=tensor.device, dtype=tensor.dtype))
    return fn(x)


def call_critic(critic: Critic, obs: Tensor) -> Tensor:
    """State values of real-unit observations ``... x S`` -> ``...``, on ``obs``'s device and dtype."""
    flat = obs.reshape(-1, obs.shape[-1])
    values = call_net(critic, flat)
    if not isinstance(values, Tensor):
        raise TypeError(f"critic must return a torch.Tensor of shape (B,) or (B, 1), got {type(values).__name__}")
    if values.dim() == 2 and values.shape[-1] == 1:
        values = values[:, 0]
    if values.shape != (flat.shape[0],):
        raise ValueError(
            f"critic(obs[{flat.shape[0]}, {flat.shape[1]}]) returned shape {tuple(values.shape)}; "
            f"a state-value critic must return ({flat.shape[0]},) or ({flat.shape[0]}, 1)"
        )
    return values.to(device=obs.device, dtype=obs.dtype).reshape(obs.shape[:-1])


def advantages(states: Tensor, rewards: Tensor, critic: Critic, terminations: Tensor, gamma: float) -> Tensor:
    """One-step advantages A_t = r_t + gamma (1 - d_t) V(s_{t+1}) - V(s_t), t = 0..H-1.

    States ``B x (H+1) x S``, rewards and terminations ``B x H`` (real units) -> ``B x H``.
    """
    values = call_critic(critic, states)  # one critic call for all B x (H+1) states
    not_done = 1.0 - terminations.to(values.dtype)
    return rewards + gamma * not_done * values[:, 1:] - values[:, :-1]


def _log_f_none(states: Tensor, rewards: Tensor, critic: Critic | None, terminations: Tensor, gamma: float) -> Tensor:
    return rewards.new_zeros(rewards.shape[0])


def _log_f_reward(states: Tensor, rewards: Tensor, critic: Critic | None, terminations: Tensor, gamma: float) -> Tensor:
    return rewards.sum(dim=-1)


def _log_f_eag(states: Tensor, rewards: Tensor, critic: Critic | None, terminations: Tensor, gamma: float) -> Tensor:
    assert critic is not None
    return advantages(states, rewards, critic, terminations, gamma).sum(dim=-1)


def _log_f_sag(states: Tensor, rewards: Tensor, critic: Critic | None, terminations: Tensor, gamma: float) -> Tensor:
    assert critic is not None
    # logsigmoid is stable for |A| up to float max; its gradient is sigmoid(-A) grad A (paper §V).
    return F.logsigmoid(advantages(states, rewards, critic, terminations, gamma)).sum(dim=-1)


@dataclass(frozen=True)
class Guide:
    """A named ``log f`` over real-unit segments and the entries of ``x`` its gradient may move."""

    name: str
    log_f: LogF
    """``(states B x (H+1) x S, rewards B x H, critic, terminations B x H, gamma) -> B``."""
    moves: Literal["states", "rewards"] | None
    """Which denoised entries the sampler shifts along the gradient; None = the guide is inert."""
    needs_critic: bool

    def __call__(
        self,
        states: Tensor,
        rewards: Tensor,
        *,
        critic: Critic | None = None,
        terminations: Tensor | None = None,
        gamma: float = 0.99,
    ) -> Tensor:
        """log f of real-unit segments: states ``B x (H+1) x S``, rewards ``B x H`` -> ``B``."""
        self.check_critic(critic)
        if terminations is None:
            terminations = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
        return self.log_f(states, rewards, critic, terminations, gamma)

    def check_critic(self, critic: Critic | None) -> None:
        """Raise ValueError naming the fix when this guide needs a critic and none was given."""
        if self.needs_critic and critic is None:
            raise ValueError(
                f"guide {self.name!r} needs the agent's state-value critic: pass critic=... "
                f"(obs[B, S] in real units -> V[B] or V[B, 1], e.g. agent.critic or SB3's "
                f"model.policy.predict_values), or use guide='none' or guide='reward'"
            )

    def for_reward_model(self) -> "Guide":
        """This guide for a model whose rewards are functions of its states: a reward guide moves the states."""
        return dataclasses.replace(self, moves="states") if self.moves == "rewards" else self

    def entry_mask(self, layout: SegmentLayout, device: torch.device | str | None = None) -> Tensor:
        """``Dx`` bool: the entries of ``x`` this guide moves (all False for ``none``)."""
        states = layout.state_mask(device)
        if self.moves == "states":
            return states
        if self.moves == "rewards":
            return ~states
        return torch.zeros_like(states)


GUIDES: dict[str, Guide] = {
    g.name: g
    for g in (
        Guide("none", _log_f_none, None, False),  # the module docstring's table says what each one is
        Guide("reward", _log_f_reward, "rewards", False),
        Guide("eag", _log_f_eag, "states", True),
        Guide("sag", _log_f_sag, "states", True),
    )
}


def get_guide(name: str | Guide) -> Guide:
    """Look a guide up by name (case-insensitive); a Guide passes through."""
    if isinstance(name, Guide):
        return name
    if not isinstance(name, str):
        raise TypeError(f"guide must be a name or a Guide, got {type(name).__name__}")
    guide = GUIDES.get(name.lower())
    if guide is not None:
        return guide
    close = difflib.get_close_matches(name.lower(), list(GUIDES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown guide {name!r}.{hint} Valid guides: {', '.join(GUIDES)}.")


def segment_log_f(
    guide: Guide,
    x: Tensor,
    *,
    layout: SegmentLayout,
    normalizer: Normalizer,
    task: Task | None,
    critic: Critic | None,
    gamma: float,
    reward_fn: RewardFn | None = None,
    reward_offset: Tensor | None = None,
) -> Tensor:
    """log f of normalized segments ``B x Dx`` -> ``B``; differentiable only through ``guide.entry_mask`` entries.

    The segment is unnormalized first (the critic and rewards are in real units); entries the guide
    does not move are detached, so autograd gives exactly the gradient the sampler may apply.
    With ``reward_fn`` (a world model's reward head) the rewards are ``reward_fn(states)`` instead of the
    reward entries, so they carry the states' gradient (pass ``guide.for_reward_model()``).
    ``reward_offset`` (``B x H``, constant) is added to the rewards: the known control term of a model
    with ``known_action_cost``, whose entries and head leave it out.
    """
    guide.check_critic(critic)
    x = torch.where(guide.entry_mask(layout, x.device), x, x.detach())
    states, rewards = decode_segment(layout, normalizer, x)
    if reward_fn is not None:
        rewards = reward_fn(states)
    if reward_offset is not None:
        rewards = rewards + reward_offset.detach()
    with torch.no_grad():
        if task is None:
            done = torch.zeros(rewards.shape, dtype=torch.bool, device=x.device)
        else:
            done = task.terminated(states[:, 1:].detach())
    return guide(states, rewards, critic=critic, terminations=done, gamma=gamma)


def guide_gradient(
    guide: Guide,
    x: Tensor,
    *,
    layout: SegmentLayout,
    normalizer: Normalizer,
    task: Task | None,
    critic: Critic | None,
    gamma: float,
    reward_fn: RewardFn | None = None,
    reward_offset: Tensor | None = None,
) -> Tensor:
    """grad of log f w.r.t. normalized segments ``B x Dx`` -> ``B x Dx``; zero off the guide's entries.

    Non-finite gradient entries are replaced by 0. The ``none`` guide returns zeros without calling anything.
    """
    if guide.moves is None:
        return torch.zeros_like(x)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        log_f = segment_log_f(guide, x, layout=layout, normalizer=normalizer, task=task, critic=critic, gamma=gamma,
                              reward_fn=reward_fn, reward_offset=reward_offset)  # fmt: skip
        if not log_f.requires_grad:  # e.g. a constant critic: log f does not depend on x
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(log_f.sum(), x, allow_unused=True)
    if grad is None:
        return torch.zeros_like(x)
    return finite_or_zero(grad)


def finite_or_zero(t: Tensor) -> Tensor:
    """Replace NaN and +-inf entries by 0."""
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))
