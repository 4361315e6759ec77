"""Per-dimension Gaussian normalization of states, actions and rewards (a torch module)."""

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

    def __init__(self, obs_dim: int, act_dim: int, min_std: float = 1e-6) -> None:
        super().__init__()
        self.min_std = min_std
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
