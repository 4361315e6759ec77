"""The one batch type of H-step segments in real units, from the dataset through the model to the agent.

``EpisodeDataset.sample_segments`` returns it (real windows), ``sampling.sample``/``imagine`` and
``OracleWorldModel.rollout`` return it (imagined segments, ``sampling.Imagined`` is this class), and
``WorldModelTrainer`` trains on it. The agent (agents/a2c.py) reads the same fields through its own
Protocol, so that it imports nothing from the library.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class SegmentBatch:
    """``B`` segments of H transitions s_t -a_t-> s_{t+1}, in real units."""

    states: Tensor
    """``B x (H+1) x S``: s_0..s_H (an imagined batch keeps its known rows exactly as given)."""
    actions: Tensor
    """``B x H x A``: a_t taken in s_t. Imagined: given, policy-sampled (unclipped), or NaN where the model
    marginalised over them."""
    rewards: Tensor
    """``B x H``: r_t of the transition s_t -> s_{t+1}."""
    terminations: Tensor
    """``B x H`` bool: d_t = "s_{t+1} is terminal". A dataset window: only an episode's last step can be
    True; the sampler: ``task.terminated(s_{t+1})``, not made sticky (mask after the first True); the
    oracle: the env's flag, sticky."""
    advantages: Tensor | None = None
    """``B x H``: A_t = r_t + gamma (1 - d_t) V(s_{t+1}) - V(s_t) from a critic, when one was given."""
