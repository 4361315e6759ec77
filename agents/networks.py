"""Actor and critic networks of the A2C agent; both take observations in real units.

Each network z-scores its own input (an :class:`ObsNormalizer` with buffers, so ``.to(device)`` moves
it and ``state_dict`` saves it) and the critic un-scales its output (PopArt), so ``critic(obs)`` is a
plain differentiable function of real observations returning real-unit values: the critic protocol
that the dream envs' advantage guides use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

LAYER_NORM_EPS = 1e-3
"""LayerNorm epsilon of the reference A2C (agent/common.py)."""


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, out_scale: float) -> nn.Sequential:
    """[Linear, LayerNorm, ELU] per hidden layer, then a Linear whose initial weights are scaled by ``out_scale``."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width, eps=LAYER_NORM_EPS), nn.ELU()]
        in_dim = width
    head = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        head.weight.mul_(out_scale)
        head.bias.zero_()
    return nn.Sequential(*layers, head)


class ObsNormalizer(nn.Module):
    """``... x S`` real observations -> z-scores clipped to ``±clip`` (identity until statistics are set)."""

    def __init__(self, obs_dim: int, clip: float | None) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    @torch.no_grad()
    def set(self, mean: Tensor, std: Tensor) -> None:
        """Copy per-dimension statistics (``S`` each) into the buffers."""
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, obs: Tensor) -> Tensor:
        z = (obs - self.mean) / self.std
        # Beyond ±clip the gradient is zero: an input far off the data (e.g. a guided dream state)
        # neither dominates a network's input nor receives an extreme guide gradient.
        return z if self.clip is None else z.clamp(-self.clip, self.clip)


class RunningMoments(nn.Module):
    """Running per-dimension mean and variance over every row ever seen (Chan et al. parallel update)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold in ``N x D`` rows."""
        if x.shape[0] == 0:
            return
        x = x.to(torch.float64)
        n, mean, var = float(x.shape[0]), x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta.square() * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def std(self, min_std: float) -> Tensor:
        """Per-dimension standard deviation floored at ``min_std`` (``D``)."""
        return self.var.sqrt().clamp_min(min_std)


class GaussianActor(nn.Module):
    """π(a|s) = Normal(c + h·tanh(f(s)), h·(exp(b) + min_std)), independent over action dimensions.

    ``c``/``h`` are the centre/half-width of the action box, so the mean always lies inside the bounds
    and the std is state-independent (learned ``b``, floored at ``min_std`` of the half-width), as in
    the reference. Not tanh-squashed: the PolyGRAD sampler reads ``.mean``/``.stddev`` and differentiates
    ``log π(a|s)`` with respect to actions that may sit on or beyond the bounds, where a squashed
    density (atanh of ±1) is infinite; the env clips the sampled action instead.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: tuple[int, ...],
        init_std: float,
        min_std: float,
        action_low: Tensor,
        action_high: Tensor,
        obs_clip: float | None,
    ) -> None:
        super().__init__()
        self.min_std = min_std
        self.obs_norm = ObsNormalizer(obs_dim, obs_clip)
        # A near-zero last layer starts every state at the box centre with std init_std.
        self.mean_net = mlp(obs_dim, hidden_sizes, act_dim, out_scale=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std - min_std)))
        self.register_buffer("action_center", (action_high + action_low) / 2)
        self.register_buffer("action_scale", (action_high - action_low) / 2)

    def forward(self, obs: Tensor) -> Distribution:
        """``B x S`` real observations -> Independent Normal over ``B x A`` real actions."""
        obs = obs.to(self.log_std.dtype)
        mean = self.action_center + self.action_scale * torch.tanh(self.mean_net(self.obs_norm(obs)))
        std = self.action_scale * (self.log_std.exp() + self.min_std)
        return Independent(Normal(mean, std.expand_as(mean)), 1)


class ValueCritic(nn.Module):
    """V(s) in real units: ``f(z(s)) · value_std + value_mean`` with PopArt-preserved output statistics.

    Returns in MuJoCo tasks reach hundreds; regressing them with a unit-scale head takes thousands of
    Adam steps. The head learns normalized values and :meth:`set_value_statistics` rescales the last
    layer whenever the statistics move, so the real-unit output never jumps (van Hasselt et al. 2016).
    """

    def __init__(self, obs_dim: int, *, hidden_sizes: tuple[int, ...], obs_clip: float | None) -> None:
        super().__init__()
        self.obs_norm = ObsNormalizer(obs_dim, obs_clip)
        self.net = mlp(obs_dim, hidden_sizes, 1, out_scale=1.0)
        self.register_buffer("value_mean", torch.zeros(()))
        self.register_buffer("value_std", torch.ones(()))

    def normalized(self, obs: Tensor) -> Tensor:
        """``B x S`` real observations -> ``B`` values in normalized units."""
        return self.net(self.obs_norm(obs.to(self.value_std.dtype))).squeeze(-1)

    def forward(self, obs: Tensor) -> Tensor:
        """``B x S`` real observations -> ``B`` real-unit values (differentiable in ``obs``)."""
        return self.normalized(obs) * self.value_std + self.value_mean

    @torch.no_grad()
    def set_value_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Move the output statistics to (``mean``, ``std``) keeping ``forward`` unchanged (PopArt)."""
        head: nn.Linear = self.net[-1]  # type: ignore[assignment]
        head.weight.mul_(self.value_std / std)
        head.bias.copy_((self.value_std * head.bias + self.value_mean - mean) / std)
        self.value_mean.copy_(mean)
        self.value_std.copy_(std)
