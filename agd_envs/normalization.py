"""Per-dimension Gaussian normalization of states, actions and rewards (a torch module).

Segments of states (``... x (H+1) x S``) are encoded one of two ways (``delta_states``):

- absolute (default): every row z-scored with the states' statistics;
- delta: s_0 z-scored, then each step's change s_t - s_{t-1} z-scored with the changes' own
  statistics (``delta_mean``/``delta_std``, fit by ``fit_deltas``); decoding sums the changes back up.
  A diffusion model's loss is then spread evenly over the per-step changes, which are what the
  advantage of an action depends on, instead of being dominated by whichever state dimensions vary most
  across the data.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn


class HasStatistics(Protocol):
    """Anything with per-dimension means and standard deviations (e.g. DatasetStatistics)."""

    obs_mean: np.ndarray
    obs_std: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray
    rew_mean: np.ndarray | float
    rew_std: np.ndarray | float


class Normalizer(nn.Module):
    """z-scores states, actions and rewards; statistics live in buffers so they save with weights."""

    def __init__(self, obs_dim: int, act_dim: int, min_std: float = 1e-6, delta_states: bool = False) -> None:
        super().__init__()
        self.min_std = min_std
        self.delta_states = delta_states
        if delta_states:  # only then: checkpoints of absolute-encoding models keep their exact tensors
            self.register_buffer("delta_mean", torch.zeros(obs_dim))
            self.register_buffer("delta_std", torch.ones(obs_dim))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("act_mean", torch.zeros(act_dim))
        self.register_buffer("act_std", torch.ones(act_dim))
        self.register_buffer("rew_mean", torch.zeros(()))
        self.register_buffer("rew_std", torch.ones(()))

    @torch.no_grad()
    def fit(self, stats: HasStatistics) -> "Normalizer":
        """Copy statistics in (float64 numpy or floats) and floor the stds at ``min_std``."""
        for name in ("obs_mean", "obs_std", "act_mean", "act_std", "rew_mean", "rew_std"):
            value = torch.as_tensor(np.asarray(getattr(stats, name), dtype=np.float64))
            buffer = getattr(self, name)
            if value.shape != buffer.shape:
                raise ValueError(f"statistics {name} has shape {tuple(value.shape)}, expected {tuple(buffer.shape)}")
            if name.endswith("std"):
                value = value.clamp_min(self.min_std)
            buffer.copy_(value.to(buffer.dtype))
        return self

    def normalize_states(self, s: torch.Tensor) -> torch.Tensor:
        """Real-unit states ``... x S`` -> z-scores."""
        return (s - self.obs_mean) / self.obs_std

    def unnormalize_states(self, z: torch.Tensor) -> torch.Tensor:
        """z-scored states ``... x S`` -> real units."""
        return z * self.obs_std + self.obs_mean

    @torch.no_grad()
    def fit_deltas(self, deltas: torch.Tensor) -> "Normalizer":
        """Set the per-step change statistics from changes ``N x S`` (s_{t+1} - s_t); needs ``delta_states``."""
        if not self.delta_states:
            raise ValueError("fit_deltas needs a Normalizer(..., delta_states=True)")
        deltas = deltas.double()
        self.delta_mean.copy_(deltas.mean(0))
        self.delta_std.copy_(deltas.std(0).clamp_min(self.min_std))
        return self

    def encode_states(self, states: torch.Tensor) -> torch.Tensor:
        """Real-unit segment states ``... x (H+1) x S`` -> the encoding a world model denoises (module docstring)."""
        z = self.normalize_states(states)
        if not self.delta_states:
            return z
        deltas = (states[..., 1:, :] - states[..., :-1, :] - self.delta_mean) / self.delta_std
        return torch.cat([z[..., :1, :], deltas], dim=-2)

    def decode_states(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode_states``: encoded ``... x (H+1) x S`` -> real-unit states."""
        if not self.delta_states:
            return self.unnormalize_states(z)
        s0 = self.unnormalize_states(z[..., :1, :])
        return torch.cat([s0, s0 + (z[..., 1:, :] * self.delta_std + self.delta_mean).cumsum(-2)], dim=-2)

    def normalize_actions(self, a: torch.Tensor) -> torch.Tensor:
        """Real-unit actions ``... x A`` -> z-scores."""
        return (a - self.act_mean) / self.act_std

    def unnormalize_actions(self, z: torch.Tensor) -> torch.Tensor:
        """z-scored actions ``... x A`` -> real units."""
        return z * self.act_std + self.act_mean

    def normalize_rewards(self, r: torch.Tensor) -> torch.Tensor:
        """Real-unit rewards (any shape) -> z-scores."""
        return (r - self.rew_mean) / self.rew_std

    def unnormalize_rewards(self, z: torch.Tensor) -> torch.Tensor:
        """z-scored rewards (any shape) -> real units."""
        return z * self.rew_std + self.rew_mean
