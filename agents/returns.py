"""Returns and advantages of time-major rollouts: GAE(λ), the alive mask after a termination, explained variance.

Pure tensor functions, shared by the A2C losses (agents/a2c.py) and the diagnostics that compare dreams with
the simulator (benchmarks/oracle_gap.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    episode_end: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE(λ) advantages and λ-returns, time-major: every argument is ``T x ...`` (e.g. ``T x N``).

    ``values[t] = V(s_t)``, ``next_values[t] = V(s_{t+1})`` of the true next state (the final
    observation when an episode ends at t). ``terminated[t]``: s_{t+1} is terminal, so no bootstrap;
    ``episode_end[t]``: terminated or truncated after step t, so the recursion is cut (a truncation
    still bootstraps from ``next_values[t]``). Step T-1 is always treated as a truncation.

        δ_t = r_t + γ(1 - terminated_t) V(s_{t+1}) - V(s_t),   A_t = δ_t + γλ(1 - end_t) A_{t+1}

    Returns (advantages, returns = advantages + values), both ``T x ...``.
    """
    keep = 1.0 - terminated.to(values.dtype)
    carry = 1.0 - (episode_end | terminated).to(values.dtype)
    deltas = rewards + gamma * keep * next_values - values
    advantages = discounted_suffix_sums(deltas, gamma * lam * carry)
    return advantages, advantages + values


def discounted_suffix_sums(x: Tensor, decay: Tensor) -> Tensor:
    """``y_t = x_t + decay_t * y_{t+1}`` along dim 0 (``y_T = 0``), both ``T x ...``, in ceil(log2 T) vector steps.

    A parallel (Hillis-Steele) scan: after the round with offset k, ``y_t`` sums the 2k terms from t on and ``d_t``
    is their decay product, so a window past the end keeps its sum and needs no product (0). It is the same sum as
    the step-by-step recursion regrouped: T = 5000 real transitions take ~1 ms instead of the loop's ~70.
    """
    y, d, offset = x, decay, 1
    while offset < x.shape[0]:
        y = torch.cat([y[:-offset] + d[:-offset] * y[offset:], y[-offset:]])
        d = torch.cat([d[:-offset] * d[offset:], torch.zeros_like(d[-offset:])])
        offset *= 2
    return y


def alive_mask(terminations: Tensor) -> Tensor:
    """``B x H`` bool d_t -> ``B x H`` bool w_t = Π_{j<t} (1 - d_j): the terminating step is kept."""
    dead_before = torch.cumsum(terminations.long(), dim=-1) - terminations.long()
    return dead_before == 0


def explained_variance(prediction: Tensor, target: Tensor) -> float:
    """1 - Var(target - prediction) / Var(target) over ``N`` values (nan when the target is constant)."""
    var = target.var(unbiased=False)
    return float("nan") if var == 0 else float(1.0 - (target - prediction).var(unbiased=False) / var)
