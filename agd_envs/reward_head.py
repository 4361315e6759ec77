"""Per-transition reward head: r_t = f(s_t, a_t, s_{t+1}) in normalized units, trained beside the denoiser.

Why it exists (``WorldModelConfig.reward_head``): the jointly denoised reward entries are 10 of the
segment's ~190 entries and the control cost ``c |a|^2`` varies little in the data, so the denoised
reward barely depends on the action. On HalfCheetah the real price of saturating the actions (reward
with ``|a| = 1`` minus reward with ``a = 0``) is -0.58 per step and the denoised rewards show only
-0.11 (benchmarks/reward_fidelity.py), so an actor learns to saturate in imagination. A small MLP on
the transition, as MBPO-style models predict rewards, sees the action directly.

With a head, the sampler's rewards are functions of the (denoised) states, so every guide's gradient
reaches the states through it: the ``reward`` guide moves states along grad sum_t r(s_t, a_t, s_{t+1})
instead of moving free reward entries, and eag/sag include the reward's state gradient in grad A_t.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


class RewardHead(nn.Module):
    """MLP ``[s_t, a_t, s_{t+1}] -> r_t`` over normalized inputs and output."""

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = 2 * obs_dim + act_dim
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        """Normalized states ``B x (H+1) x S`` and actions ``B x H x A`` -> normalized rewards ``B x H``."""
        inputs = torch.cat([states[:, :-1], actions, states[:, 1:]], dim=-1)
        out = self.net(rearrange(inputs, "b h d -> (b h) d"))
        return rearrange(out, "(b h) 1 -> b h", b=states.shape[0])


def reward_head_loss(head: RewardHead, states: Tensor, actions: Tensor, rewards: Tensor) -> Tensor:
    """Mean squared error of the head on real transitions, all normalized (scalar)."""
    return (head(states, actions) - rewards).square().mean()
