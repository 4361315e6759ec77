"""A one-step dynamics prior that the denoiser corrects (``WorldModelConfig.dynamics_prior``).

Why: on a CPU budget the joint-segment denoiser learns how a segment looks but barely how each action
moves the next state. Measured on a HalfCheetah run (benchmarks/oracle_gap.py, its 60k transitions and
final policy): the `cpu` diffusion model's per-step advantages correlate 0.07 with the simulator's
(sign agreement 51%), while a one-step MLP trained for 40 s on the same data reaches 0.85 (82%).

How: ``DynamicsPrior`` is that MLP, [s_t, a_t] -> (s_{t+1} - s_t, r_t) in normalized units, trained on
the batch's real transitions beside the denoiser (teacher forced, as MBPO-style models are).
``PriorResidualDenoiser`` rolls it out over the segment from s_0 with the actions the denoiser is
given, feeds that rollout to the denoiser as extra input, and adds it to the denoiser's output: the
x0 estimate is prior + learned correction. Everything else (inpainting, policy-guided
actions, the guides' gradient on the states of the x0 estimate) is unchanged; the prior's rollout is
a constant of the noisy input (it depends on known entries only), so it takes no gradient.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from agd_envs.denoiser import SegmentDenoiser
from agd_envs.segments import SegmentLayout


LOSS_FRACTION_INV = 4
"""The prior's loss uses one segment in this many of each training batch (``DynamicsPrior.loss``)."""

BOUND_MARGIN = 0.5
"""Rollout states are kept within the data's normalized range widened by this fraction of it on each side."""


class DynamicsPrior(nn.Module):
    """MLP ``[s_t, a_t * known_t, known_t]`` (normalized) -> next state and reward (normalized).

    The state output is the change ``s_{t+1} - s_t`` in z-units, itself z-scored with ``change_mean`` /
    ``change_std`` (buffers, set by ``fit_moments``), so every dimension's change is learned at unit scale.

    ``rollout`` clamps each predicted state to ``[state_low, state_high]`` (buffers; unbounded until
    ``fit_moments`` is given the data's states): the prior is trained one step at a time, and nothing in
    that loss stops H of its steps in a row from growing without bound once a state leaves the data. One
    HalfCheetah run's training loss jumped from 0.095 to 8.8e7 for one refit and its policy never recovered
    (benchmarks/results/runs_v2/halfcheetah-none-s2, 50k real steps); a rollout far outside every state
    ever seen is the suspected cause (the checkpoint was not kept, so it is not confirmed).
    """

    def __init__(self, layout: SegmentLayout, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.layout = layout
        obs_dim, act_dim = layout.obs_dim, layout.act_dim
        layers: list[nn.Module] = []
        size = obs_dim + act_dim + 1
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, obs_dim + 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("change_mean", torch.zeros(obs_dim))
        self.register_buffer("change_std", torch.ones(obs_dim))
        self.register_buffer("state_low", torch.full((obs_dim,), -torch.inf))
        self.register_buffer("state_high", torch.full((obs_dim,), torch.inf))

    @torch.no_grad()
    def fit_moments(self, changes: Tensor, min_std: float = 1e-6, states: Tensor | None = None) -> None:
        """Set the change statistics from ``N x S`` one-step changes of normalized states, and the rollout's
        bounds from ``... x S`` normalized ``states`` when given (their range widened by ``BOUND_MARGIN``)."""
        self.change_mean.copy_(changes.mean(0))
        self.change_std.copy_(changes.std(0).clamp_min(min_std))
        if states is not None:
            flat = states.reshape(-1, states.shape[-1])
            low, high = flat.min(0).values, flat.max(0).values
            margin = BOUND_MARGIN * (high - low).clamp_min(min_std)
            self.state_low.copy_(low - margin)
            self.state_high.copy_(high + margin)

    def forward(self, states: Tensor, actions: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
        """``... x S`` states, ``... x A`` actions with ``...`` bool mask -> (``... x S`` next states, ``...`` rewards)."""
        mask = known.to(states.dtype)[..., None]
        out = self.net(torch.cat([states, actions * mask, mask], dim=-1))
        change = out[..., :-1] * self.change_std + self.change_mean
        return states + change, out[..., -1]

    def rollout(self, s0: Tensor, actions: Tensor, action_known: Tensor) -> tuple[Tensor, Tensor]:
        """From ``s0`` ``B x S``, each state predicted from the previous one under actions ``B x H x A`` (mask
        ``B x H``) -> (states ``B x (H+1) x S`` with s0 first, rewards ``B x H``); all normalized, predicted
        states clamped to ``[state_low, state_high]`` (class docstring)."""
        rows, rewards = [s0], []
        for t in range(actions.shape[1]):
            predicted, reward = self(rows[-1], actions[:, t], action_known[:, t])
            rows.append(torch.clamp(predicted, self.state_low, self.state_high))
            rewards.append(reward)
        return torch.stack(rows, dim=1), torch.stack(rewards, dim=1)

    def loss(self, states: Tensor, actions: Tensor, rewards: Tensor, rollout_weight: float = 0.0,
             segments: int | None = None) -> Tensor:
        """Teacher-forced one-step MSE on real normalized segments ``B x (H+1) x S``, ``B x H x A``, ``B x H`` (scalar),
        plus ``rollout_weight`` x the MSE of the prior's own ``rollout`` from each s_0 under the real actions.

        Only the first ``segments`` segments are used, by default ``ceil(B / LOSS_FRACTION_INV)``: the prior is ~3x
        the cpu denoiser's cost per transition, and a quarter of the batch's transitions is already 10x the data
        per update on which a one-step MLP alone reached the figures in the module docstring. The rollout term
        trains what the denoiser is given, H predictions in a row: teacher forcing alone leaves their compounding
        unchecked (held-out Walker2d error 0.12 z at one step, 0.36 at ten; benchmarks/results/prior_capacity_walker2d.json).
        Both terms divide state errors by ``change_std``, so each dimension counts at the scale of its one-step change.
        """
        n = segments if segments is not None else -(-states.shape[0] // LOSS_FRACTION_INV)
        states, actions, rewards = states[:n], actions[:n], rewards[:n]
        flat = lambda x: rearrange(x, "b h ... -> (b h) ...")  # noqa: E731
        s, a = flat(states[:, :-1]), flat(actions)
        predicted, reward = self(s, a, torch.ones(s.shape[0], dtype=torch.bool, device=s.device))
        loss = self._error(predicted, flat(states[:, 1:]), reward, flat(rewards))
        if rollout_weight > 0:
            known = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
            rolled, rolled_reward = self.rollout(states[:, 0], actions, known)
            loss = loss + rollout_weight * self._error(rolled[:, 1:], states[:, 1:], rolled_reward, rewards)
        return loss

    def _error(self, predicted: Tensor, states: Tensor, reward: Tensor, rewards: Tensor) -> Tensor:
        """Mean squared state error in units of ``change_std`` plus mean squared reward error (scalar)."""
        return ((predicted - states) / self.change_std).square().mean() + (reward - rewards).square().mean()


class PriorResidualDenoiser(nn.Module):
    """``SegmentDenoiser`` whose output is added to the prior's rollout, which it also sees as input (module docstring)."""

    def __init__(self, layout: SegmentLayout, denoiser: SegmentDenoiser, prior: DynamicsPrior) -> None:
        super().__init__()
        self.layout = layout
        self.denoiser = denoiser
        self.prior = prior

    def prior_segment(self, x: Tensor, actions: Tensor, action_mask: Tensor, known_mask: Tensor) -> Tensor:
        """``B x Dx``: the prior's rollout from s_0 of ``x`` (known, clean) under the actions.

        From s_0 only, even where later rows are known: in a closed loop those rows are the dream's own
        earlier states, and a prior restarted from each of them compounds its errors step after step
        (tests/test_fidelity.py: closed-loop / joint state error 2.6x at t = 10 when restarted, 1.05x
        from s_0), as offsets from the latest known state did (WorldModelConfig.anchor_states).
        """
        layout = self.layout
        with torch.no_grad():
            states, rewards = self.prior.rollout(layout.unpack(x)[0][:, 0], actions, action_mask)
        return layout.pack(states, rewards)

    def forward(self, x_t: Tensor, t: Tensor, actions: Tensor, action_mask: Tensor, known_mask: Tensor) -> Tensor:
        """As ``SegmentDenoiser.forward``; ``x_t`` must hold the clean known entries (WorldModel.predict_x0 does so)."""
        prior = self.prior_segment(x_t, actions, action_mask, known_mask)
        return prior + self.denoiser(x_t, t, actions, action_mask, known_mask, context=prior)
