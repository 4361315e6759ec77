"""Flat layout of a trajectory segment as the diffusion model sees it.

A segment of horizon H holds states s_0..s_H (H+1 rows), actions a_0..a_{H-1} and rewards
r_0..r_{H-1}. The denoised vector is ``x = [s_0 | s_1 | ... | s_H | r_0 ... r_{H-1}]`` (states first,
then rewards) of size ``(H+1)*S + H``. Actions are conditioning, never denoised.

``encode_segment``/``decode_segment`` are the one conversion between a real-unit segment and that
normalized vector (states through ``Normalizer.encode_states``, rewards z-scored), used by training,
the sampler and the guides.

Closed-loop stepping needs "the first k states known" (s_0..s_{k-1}, rewards r_0..r_{k-2}) and "the
first j actions known"; both masks are built here so training and sampling use one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from agd_envs.normalization import Normalizer


@dataclass(frozen=True)
class SegmentLayout:
    """Where states and rewards of an H-step segment live in the flat vector ``x``."""

    obs_dim: int
    act_dim: int
    horizon: int

    @property
    def x_dim(self) -> int:
        """Size of the denoised vector: ``(H+1)*S + H``."""
        return (self.horizon + 1) * self.obs_dim + self.horizon

    @property
    def num_state_entries(self) -> int:
        """Number of leading entries of ``x`` that are states."""
        return (self.horizon + 1) * self.obs_dim

    def pack(self, states: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """``B x (H+1) x S`` states and ``B x H`` rewards -> ``B x Dx``."""
        return torch.cat([rearrange(states, "b h s -> b (h s)"), rewards], dim=-1)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x Dx`` -> (``B x (H+1) x S`` states, ``B x H`` rewards)."""
        n = self.num_state_entries
        states = rearrange(x[..., :n], "... (h s) -> ... h s", h=self.horizon + 1)
        return states, x[..., n:]

    def state_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``Dx`` bool, True on state entries (the only entries a guide moves)."""
        mask = torch.zeros(self.x_dim, dtype=torch.bool, device=device)
        mask[: self.num_state_entries] = True
        return mask

    def known_mask(self, num_known_states: torch.Tensor) -> torch.Tensor:
        """``B`` counts k in 1..H+1 -> ``B x Dx`` bool: s_0..s_{k-1} and r_0..r_{k-2} known."""
        k = num_known_states.long()
        rows = torch.arange(self.horizon + 1, device=k.device)
        states = rows[None, :] < k[:, None]  # B x (H+1)
        rewards = rows[None, : self.horizon] < (k[:, None] - 1)  # B x H
        states = states[:, :, None].expand(-1, -1, self.obs_dim)
        return self.pack(states, rewards)

    def action_mask(self, num_known_actions: torch.Tensor) -> torch.Tensor:
        """``B`` counts j in 0..H -> ``B x H`` bool: a_0..a_{j-1} known."""
        j = num_known_actions.long()
        return torch.arange(self.horizon, device=j.device)[None, :] < j[:, None]


def encode_segment(
    layout: SegmentLayout, normalizer: Normalizer, states: torch.Tensor, rewards: torch.Tensor
) -> torch.Tensor:
    """Real-unit states ``B x (H+1) x S`` and (modelled) rewards ``B x H`` -> the normalized ``B x Dx``."""
    return layout.pack(normalizer.encode_states(states), normalizer.normalize_rewards(rewards))


def decode_segment(
    layout: SegmentLayout, normalizer: Normalizer, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``encode_segment``: normalized ``B x Dx`` -> real states ``B x (H+1) x S``, rewards ``B x H``."""
    states, rewards = layout.unpack(x)
    return normalizer.decode_states(states), normalizer.unnormalize_rewards(rewards)
