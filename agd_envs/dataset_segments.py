"""H-step windows of a dataset's episodes: where they start, and the batch of them that training samples."""

from __future__ import annotations

import numpy as np
import torch

from agd_envs.batch import SegmentBatch

Segments = SegmentBatch
"""What ``EpisodeDataset.sample_segments`` returns: the one segment batch type (agd_envs/batch.py), float32
tensors except the bool flags; the name older code imports."""


def window_table(lengths: np.ndarray, obs_starts: np.ndarray, step_starts: np.ndarray,
                 horizon: int) -> tuple[np.ndarray, torch.Tensor]:
    """Every window of ``horizon`` transitions inside one episode, given each episode's length and first rows.

    :param lengths: ``E`` transitions per episode.
    :param obs_starts: ``E`` flat row of each episode's first observation; ``step_starts`` likewise for steps.
    :returns: ``M x 2`` int64 (episode, start) and ``M x 2`` flat (observation row, step row) of each window's start.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    counts = np.maximum(lengths - horizon + 1, 0)
    episode = np.repeat(np.arange(len(lengths)), counts)
    start = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    flat = np.stack([obs_starts[episode] + start, step_starts[episode] + start], 1)
    return np.stack([episode, start], 1).astype(np.int64), torch.as_tensor(flat)


def gather_segments(data: dict[str, torch.Tensor], first: torch.Tensor, horizon: int) -> Segments:
    """The windows whose first (observation row, step row) are ``first`` ``B x 2``, from flat tensors ``data``."""
    obs_rows = first[:, :1] + torch.arange(horizon + 1, device=first.device)
    step_rows = first[:, 1:] + torch.arange(horizon, device=first.device)
    return Segments(data["observations"][obs_rows], data["actions"][step_rows], data["rewards"][step_rows],
                    data["terminations"][step_rows])
