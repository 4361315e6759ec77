"""What is known about segments to be sampled: ``Conditioning`` (real units) and ``Known``, its
resolution into the normalized known entries, masks and exact real values the sampler keeps.

The known pattern is a prefix (the one the world model is trained on, agd_envs/training.py):
s_0..s_{k-1}, r_0..r_{k-2} and a_0..a_{j-1}. ``Conditioning.from_start`` is the joint pattern of
``imagine`` (s_0 only); a ``DreamVectorEnv`` step knows s_0..s_t, r_0..r_{t-1} and a_0..a_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from agd_envs.normalization import Normalizer
from agd_envs.segments import SegmentLayout, decode_segment, encode_segment

ControlFn = Callable[[Tensor], Tensor]
"""``control(actions: B x H x A real) -> B x H``: the known part of each reward the model leaves out."""


@dataclass
class Conditioning:
    """What is known about each segment, in real units. ``B`` segments of horizon H.

    The known pattern is a prefix: s_0..s_{k-1} and r_0..r_{k-2} (k = ``num_known_states``), and
    a_0..a_{j-1} (j = ``num_known_actions``). Entries outside the prefix are ignored (may be NaN).
    """

    states: Tensor
    """``B x (H+1) x S``; rows >= num_known_states are ignored."""
    num_known_states: Tensor
    """``B`` long in 1..H+1 (1 = only s_0: joint sampling)."""
    actions: Tensor | None = None
    """``B x H x A`` or None; entries >= num_known_actions are ignored."""
    num_known_actions: Tensor | None = None
    """``B`` long in 0..H; None means H when ``actions`` is given, else 0."""
    rewards: Tensor | None = None
    """``B x H`` or None; r_0..r_{k-2} are used (required when some k > 1)."""

    @classmethod
    def from_start(cls, s0: Tensor, actions: Tensor | None = None, horizon: int | None = None) -> "Conditioning":
        """Joint sampling from s_0 ``B x S``: all H actions ``B x H x A`` given, or none (actor / masked)."""
        if horizon is None:
            if actions is None:
                raise ValueError("Conditioning.from_start needs actions or horizon= (e.g. model.layout.horizon)")
            horizon = int(actions.shape[1])
        if actions is not None and actions.shape[1] != horizon:
            raise ValueError(f"actions have {actions.shape[1]} steps but horizon={horizon}")
        batch = s0.shape[0]
        states = s0.new_zeros(batch, horizon + 1, s0.shape[-1])
        states[:, 0] = s0
        ones = torch.ones(batch, dtype=torch.long, device=s0.device)
        num_actions = ones * (horizon if actions is not None else 0)
        return cls(states=states, num_known_states=ones, actions=actions, num_known_actions=num_actions)

    def resolve(
        self, layout: SegmentLayout, norm: Normalizer, device: Any, dtype: torch.dtype, control: ControlFn | None = None
    ) -> Known:
        """Check this conditioning against ``layout`` and resolve it on ``device``/``dtype`` (``control``: the
        control term a ``known_action_cost`` model leaves out of its rewards, subtracted from the known ones)."""
        horizon, obs_dim, act_dim = layout.horizon, layout.obs_dim, layout.act_dim
        states = self.states.to(device=device, dtype=dtype)
        if states.dim() != 3 or tuple(states.shape[1:]) != (horizon + 1, obs_dim):
            raise ValueError(
                f"Conditioning.states must be B x (H+1) x S = B x {horizon + 1} x {obs_dim} for this model, got "
                f"{tuple(states.shape)}; for joint sampling use Conditioning.from_start(s0, horizon={horizon})"
            )
        batch = states.shape[0]

        def counts(value: Tensor | None, name: str, low: int, high: int, default: int) -> Tensor:
            if value is None:
                return torch.full((batch,), default, dtype=torch.long, device=device)
            value = torch.as_tensor(value, device=device).long().reshape(-1)
            if value.shape != (batch,) or bool(((value < low) | (value > high)).any()):
                raise ValueError(f"Conditioning.{name} must be {batch} integers in {low}..{high}, got {value.tolist()}")
            return value

        k = counts(self.num_known_states, "num_known_states", 1, horizon + 1, 1)
        j = counts(self.num_known_actions, "num_known_actions", 0, horizon, horizon if self.actions is not None else 0)
        if self.actions is None:
            if bool((j > 0).any()):
                raise ValueError("Conditioning.num_known_actions > 0 but actions is None; pass the actions")
            actions = torch.zeros(batch, horizon, act_dim, device=device, dtype=dtype)
        else:
            actions = self.actions.to(device=device, dtype=dtype)
            if tuple(actions.shape) != (batch, horizon, act_dim):
                raise ValueError(
                    f"Conditioning.actions must be {batch} x {horizon} x {act_dim}, got {tuple(actions.shape)}"
                )
        if self.rewards is None:
            if bool((k > 1).any()):
                raise ValueError("Conditioning.rewards is required when num_known_states > 1 (r_0..r_{k-2} are known)")
            rewards = torch.zeros(batch, horizon, device=device, dtype=dtype)
        else:
            rewards = self.rewards.to(device=device, dtype=dtype)
            if tuple(rewards.shape) != (batch, horizon):
                raise ValueError(f"Conditioning.rewards must be {batch} x {horizon}, got {tuple(rewards.shape)}")

        mask = layout.known_mask(k)
        state_rows = torch.arange(horizon + 1, device=device)[None, :] < k[:, None]
        reward_known = torch.arange(horizon, device=device)[None, :] < (k[:, None] - 1)
        action_known = layout.action_mask(j)
        # torch.where, not multiplication: ignored entries may hold NaN.
        states = torch.where(state_rows[..., None], states, torch.zeros_like(states))
        rewards = torch.where(reward_known, rewards, torch.zeros_like(rewards))
        modelled = rewards
        if control is not None:  # the network sees r_t minus the control term of a_t
            if bool((reward_known & ~action_known).any()):
                raise ValueError(
                    "Conditioning: this model (known_action_cost) needs the action a_t of every known reward r_t; "
                    "pass num_known_actions >= num_known_states - 1"
                )
            modelled = rewards - torch.where(reward_known, control(actions), torch.zeros_like(rewards))
        x = torch.where(mask, encode_segment(layout, norm, states, modelled), 0.0)
        actions = torch.where(action_known[..., None], actions, torch.full_like(actions, float("nan")))
        return Known(x, mask, states, state_rows, rewards, reward_known, actions, action_known)


@dataclass
class Known:
    """The conditioning resolved on the model's device and dtype."""

    x: Tensor  # B x Dx normalized known values (0 elsewhere)
    mask: Tensor  # B x Dx
    states: Tensor  # B x (H+1) x S real, exact where state_rows
    state_rows: Tensor  # B x (H+1)
    rewards: Tensor  # B x H real
    reward_known: Tensor  # B x H
    actions: Tensor  # B x H x A real, exact where action_known (NaN elsewhere)
    action_known: Tensor  # B x H

    def inpaint(self, x: Tensor) -> Tensor:
        """``x`` ``B x Dx`` with the known entries overwritten by their clean normalized values."""
        return torch.where(self.mask, self.x, x)

    def decode(self, x: Tensor, normalizer: Normalizer, layout: SegmentLayout) -> tuple[Tensor, Tensor]:
        """Real-unit states ``B x (H+1) x S`` (known rows exactly as given) and modelled rewards ``B x H``
        of a normalized segment ``B x Dx``."""
        states, rewards = decode_segment(layout, normalizer, x)
        return torch.where(self.state_rows[..., None], self.states, states), rewards
