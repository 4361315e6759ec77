"""Per-dimension moments of a dataset's observations, actions and rewards (what a normalizer is fitted to)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STD_FLOOR = 1e-6
"""Smallest standard deviation reported, so that a constant dimension still normalizes to finite values."""


@dataclass(frozen=True)
class DatasetStatistics:
    """Per-dimension float64 means and standard deviations (population std, floored at 1e-6)."""

    obs_mean: np.ndarray
    """``S``, over every stored observation (n+1 per episode)."""
    obs_std: np.ndarray
    act_mean: np.ndarray
    """``A``, over every action."""
    act_std: np.ndarray
    rew_mean: np.ndarray
    """0-d, over every reward."""
    rew_std: np.ndarray


def statistics_of(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> DatasetStatistics:
    """Moments of stored rows: observations ``N x S``, actions ``M x A``, rewards ``M`` (any float dtype)."""
    obs, act, rew = (np.asarray(a, dtype=np.float64) for a in (observations, actions, rewards))
    floor = lambda std: np.asarray(np.maximum(std, STD_FLOOR))  # noqa: E731
    return DatasetStatistics(obs.mean(0), floor(obs.std(0)), act.mean(0), floor(act.std(0)), np.asarray(rew.mean()),
                             floor(rew.std()))
