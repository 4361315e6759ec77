"""The newest part of a run's dataset: imagination's start states, the critic's real episodes, the model's recent batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange

from agd_envs.batch import SegmentBatch
from agd_envs.datasets import EpisodeDataset
from agd_envs.normalization import HasStatistics


def recent_start_rows(dataset: EpisodeDataset, horizon: int, window: int) -> tuple[int, int]:
    """``(first, total)``: rows ``first..total-1`` of ``dataset.segment_starts(horizon)`` start in the episodes holding
    the last ``window`` transitions (episodes are stored in the order they were collected)."""
    starts = dataset.segment_starts(horizon)
    if len(starts) == 0:
        raise ValueError(f"no episode of the run's dataset has {horizon} transitions to start a segment from")
    steps_to_end = np.cumsum(dataset.episode_lengths[::-1])[::-1]  # transitions from episode e to the end
    recent = np.flatnonzero(steps_to_end <= window)
    first_episode = int(recent[0]) if len(recent) else dataset.num_episodes - 1
    return min(int(np.searchsorted(starts[:, 0], first_episode)), len(starts) - 1), len(starts)


def recent_rows(dataset: EpisodeDataset, horizon: int, window: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` rows of ``dataset.segment_starts(horizon)`` drawn uniformly from the episodes holding the last
    ``window`` transitions (:func:`recent_start_rows`)."""
    first, total = recent_start_rows(dataset, horizon, window)
    return first + torch.randint(total - first, (count,), generator=generator)


def recent_transitions(dataset: EpisodeDataset, window: int) -> dict[str, np.ndarray]:
    """The newest whole episodes holding at least ``window`` transitions (or all), end to end in collection order,
    as ``T x 1`` time-major arrays for ``A2CAgent.update_from_transitions`` (``obs``, ``actions``, ``rewards``,
    ``next_obs``, ``terminated``, ``truncated``; :func:`critic_rows` for the critic's update)."""
    if dataset.num_episodes == 0:
        raise ValueError("the run's dataset holds no finished episode to train the critic on")
    steps_to_end = np.cumsum(dataset.episode_lengths[::-1])[::-1]
    first = int(np.flatnonzero(steps_to_end >= window)[-1]) if steps_to_end[0] >= window else 0
    episodes = [dataset.episode(i) for i in range(first, dataset.num_episodes)]
    arrays = {
        "obs": np.concatenate([e.observations[:-1] for e in episodes]),
        "next_obs": np.concatenate([e.observations[1:] for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "terminated": np.concatenate([e.terminations for e in episodes]),
        "truncated": np.concatenate([e.truncations for e in episodes]),
    }
    return {k: rearrange(v, "t ... -> t 1 ...") for k, v in arrays.items()}


def critic_rows(transitions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`recent_transitions`' arrays without the actions, as ``A2CAgent.update_critic_from_transitions`` takes them."""
    return {k: v for k, v in transitions.items() if k != "actions"}


class RecentMix:
    """A dataset whose segment batches draw ``fraction`` of their rows from the newest ``window`` transitions
    (:func:`recent_rows`) and the rest uniformly from all of it: a world-model training source that weights
    where the current policy goes (and imagination starts) above the older policies' data."""

    def __init__(self, dataset: EpisodeDataset, window: int, fraction: float) -> None:
        if window < 1:
            raise ValueError(f"window must be a positive number of transitions, got {window}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1] (the share of each batch from the newest {window} transitions), got {fraction}")
        self.dataset, self.window, self.fraction = dataset, window, fraction
        self._rows: dict[tuple[int, int], tuple[int, int]] = {}  # (horizon, episodes) -> recent_start_rows, once per fit

    def statistics(self) -> HasStatistics:
        """The whole dataset's statistics (the normalizer still spans all data)."""
        return self.dataset.statistics()

    def sample_segments(self, batch_size: int, horizon: int, *, generator: torch.Generator | None = None, device: Any = None) -> SegmentBatch:
        """``batch_size`` segments, ``round(fraction * batch_size)`` of them from the newest ``window`` transitions."""
        key = (horizon, self.dataset.num_episodes)
        if key not in self._rows:
            self._rows[key] = recent_start_rows(self.dataset, horizon, self.window)
        first, total = self._rows[key]
        recent = round(self.fraction * batch_size)
        everywhere = torch.randint(total, (batch_size - recent,), generator=generator)
        rows = torch.cat([first + torch.randint(total - first, (recent,), generator=generator), everywhere])
        return self.dataset.sample_segments(batch_size, horizon, generator=generator, device=device, indices=rows)
