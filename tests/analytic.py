"""Denoisers with known answers for the sampler and guide tests (no training, no MuJoCo).

``MixtureDenoiser`` returns the exact posterior mean E[x0 | x_t, known entries] of a Gaussian mixture
over normalized segments, so a sampler driven by it samples (up to discretisation) the mixture
itself, and a guided sampler can be compared with closed forms. ``ToyDenoiser`` is a small random
network that uses every input (actions, masks, step), for plumbing tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agd_envs.diffusion import NoiseSchedule, cosine_schedule
from agd_envs.normalization import Normalizer
from agd_envs.segments import SegmentLayout
from agd_envs.tasks import Task


def toy_task(obs_dim: int, act_dim: int, termination_fn=None) -> Task:
    """A Task for ``obs_dim``/``act_dim`` toy segments (never terminates unless told)."""
    kwargs = {} if termination_fn is None else {"termination_fn": termination_fn}
    return Task("Toy", "Toy-v0", obs_dim, act_dim, -1.0, 1.0, 100, **kwargs)


def make_normalizer(layout: SegmentLayout, generator: torch.Generator, trivial: bool = False) -> Normalizer:
    """A float64 Normalizer with non-trivial per-dimension means and stds (or the identity)."""
    norm = Normalizer(layout.obs_dim, layout.act_dim).double()
    if not trivial:
        with torch.no_grad():
            norm.obs_mean.copy_(torch.randn(layout.obs_dim, generator=generator, dtype=torch.float64))
            norm.obs_std.copy_(0.5 + 2.0 * torch.rand(layout.obs_dim, generator=generator, dtype=torch.float64))
            norm.act_mean.copy_(0.3 * torch.randn(layout.act_dim, generator=generator, dtype=torch.float64))
            norm.act_std.copy_(0.5 + torch.rand(layout.act_dim, generator=generator, dtype=torch.float64))
            norm.rew_mean.fill_(0.7)
            norm.rew_std.fill_(1.9)
    return norm


class LinearCritic(nn.Module):
    """V(s) = w . s + b in real units (float64)."""

    def __init__(self, w: Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.double().clone(), requires_grad=False)
        self.b = b

    def forward(self, obs: Tensor) -> Tensor:
        return obs @ self.w + self.b


def _gauss_logpdf(y: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(y; mean, cov) for rows ``B x d`` (mean ``B x d`` or ``d``), cov ``d x d``."""
    d = y.shape[-1]
    if d == 0:
        return y.new_zeros(y.shape[0])
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, (y - mean).T, upper=False)
    return -0.5 * (z.square().sum(0) + 2.0 * chol.diagonal().log().sum() + d * math.log(2 * math.pi))


@dataclass
class MixtureDenoiser:
    """Exact E[x0 | x_t, x0_K = known_K] for x0 ~ sum_c w_c N(means_c, covs_c) (normalized space, float64)."""

    layout: SegmentLayout
    normalizer: Normalizer
    schedule: NoiseSchedule
    task: Task
    means: Tensor  # C x Dx
    covs: Tensor  # C x Dx x Dx
    weights: Tensor  # C
    calls: int = 0

    def _condition(
        self, c: int, known_idx: Tensor, free_idx: Tensor, known_vals: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Component c given x_K: (conditional mean ``B x F``, conditional cov ``F x F``, log N(x_K) ``B``)."""
        mu, cov = self.means[c], self.covs[c]
        mu_f = mu[free_idx].expand(known_vals.shape[0], -1)
        if known_idx.numel() == 0:
            return mu_f, cov[free_idx][:, free_idx], known_vals.new_zeros(known_vals.shape[0])
        c_kk = cov[known_idx][:, known_idx]
        c_fk = cov[free_idx][:, known_idx]
        gain = torch.linalg.solve(c_kk, c_fk.T).T  # F x K
        mean = mu_f + (known_vals - mu[known_idx]) @ gain.T
        cond_cov = cov[free_idx][:, free_idx] - gain @ c_fk.T
        return mean, 0.5 * (cond_cov + cond_cov.T), _gauss_logpdf(known_vals, mu[known_idx], c_kk)

    def conditional(self, known: Tensor, known_mask: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per component: (mean ``B x F``, cov ``F x F``, log weight incl. evidence ``B``) given one known pattern."""
        pattern = known_mask[0]
        known_idx, free_idx = pattern.nonzero()[:, 0], (~pattern).nonzero()[:, 0]
        out = []
        for c in range(self.means.shape[0]):
            mean, cov, log_k = self._condition(c, known_idx, free_idx, known[:, known_idx])
            out.append((mean, cov, self.weights[c].log() + log_k))
        return out

    def denoise(self, x_t, t, actions, action_mask, known, known_mask) -> Tensor:
        self.calls += 1
        if not bool((known_mask == known_mask[0]).all()) or not bool((t == t[0]).all()):
            raise NotImplementedError("MixtureDenoiser handles one known pattern and one step per call")
        ab = self.schedule.at(t[:1], x_t)[0, 0]
        pattern = known_mask[0]
        free_idx = (~pattern).nonzero()[:, 0]
        y = x_t[:, free_idx]
        eye = torch.eye(free_idx.numel(), dtype=x_t.dtype)
        posts, logits = [], []
        for mean, cov, log_w in self.conditional(known, known_mask):
            marginal = ab * cov + (1.0 - ab) * eye  # Cov[x_t,F] under this component
            logits.append(log_w + _gauss_logpdf(y, ab.sqrt() * mean, marginal))
            gain = ab.sqrt() * torch.linalg.solve(marginal, cov).T  # sqrt(ab) C' (ab C' + (1-ab) I)^-1
            posts.append(mean + (y - ab.sqrt() * mean) @ gain.T)
        resp = torch.softmax(torch.stack(logits, dim=-1), dim=-1)  # B x C
        post = (torch.stack(posts, dim=-1) * resp[:, None, :]).sum(-1)
        x0 = known.clone()
        x0[:, free_idx] = post
        return torch.where(known_mask, known, x0)

    def exact_samples(self, known_row: Tensor, known_mask_row: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` exact draws ``n x Dx`` of x0 given the known entries of one row (normalized)."""
        known = known_row.expand(n, -1)
        mask = known_mask_row.expand(n, -1)
        comps = self.conditional(known[:1], mask[:1])
        log_w = torch.stack([c[2][0] for c in comps])
        which = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True, generator=generator)
        free_idx = (~known_mask_row).nonzero()[:, 0]
        x = known.clone()
        for c, (mean, cov, _) in enumerate(comps):
            rows = (which == c).nonzero()[:, 0]
            z = torch.randn(rows.numel(), free_idx.numel(), generator=generator, dtype=known.dtype)
            draws = mean[0] + z @ torch.linalg.cholesky(cov).T
            x[rows[:, None], free_idx[None, :]] = draws
        return x


def gaussian_denoiser(layout, normalizer, schedule, task, mean: Tensor, cov: Tensor) -> MixtureDenoiser:
    """The exact denoiser of one Gaussian N(mean, cov) over normalized segments."""
    return MixtureDenoiser(layout, normalizer, schedule, task, mean[None], cov[None], torch.ones(1, dtype=mean.dtype))


class ToyDenoiser(nn.Module):
    """A small random network over (x_t, t, actions * mask, masks): uses every input, float64."""

    def __init__(self, layout: SegmentLayout, num_steps: int = 20, seed: int = 0) -> None:
        super().__init__()
        self.layout = layout
        self.task = toy_task(layout.obs_dim, layout.act_dim)
        self.schedule = cosine_schedule(num_steps)
        self.normalizer = make_normalizer(layout, torch.Generator().manual_seed(seed))
        d_in = 2 * layout.x_dim + layout.horizon * (layout.act_dim + 1) + 1
        with torch.random.fork_rng():  # seeded weights without touching the global RNG
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(d_in, 64), nn.Tanh(), nn.Linear(64, layout.x_dim)).double()

    def denoise(self, x_t, t, actions, action_mask, known, known_mask) -> Tensor:
        x_in = torch.where(known_mask, known, x_t)
        acts = (actions * action_mask[..., None]).flatten(1)
        u = t.to(x_t.dtype)[:, None] / self.schedule.num_steps
        h = torch.cat([x_in, known_mask.to(x_t.dtype), acts, action_mask.to(x_t.dtype), u], dim=-1)
        return torch.where(known_mask, known, 2.0 * torch.tanh(self.net(h)))


class LinearDynamicsDenoiser:
    """A perfect deterministic model: s_{t+1} = s_t + a_t @ ``effect`` (real units, a_t as the denoiser is given them:
    clipped, normalized), reward 0; the x0 estimate ignores x_t. Float64, non-trivial normalizer."""

    def __init__(self, layout: SegmentLayout, effect: Tensor, num_steps: int = 20, seed: int = 0) -> None:
        self.layout, self.effect = layout, effect.double()
        self.task = toy_task(layout.obs_dim, layout.act_dim)
        self.schedule = cosine_schedule(num_steps)
        self.normalizer = make_normalizer(layout, torch.Generator().manual_seed(seed))

    def denoise(self, x_t, t, actions, action_mask, known, known_mask) -> Tensor:
        from agd_envs.segments import decode_segment, encode_segment

        s0 = decode_segment(self.layout, self.normalizer, known)[0][:, 0]
        steps = self.normalizer.unnormalize_actions(actions) * action_mask[..., None]
        states = torch.cat([s0[:, None], s0[:, None] + (steps @ self.effect).cumsum(dim=1)], dim=1)
        x0 = encode_segment(self.layout, self.normalizer, states, states.new_zeros(states.shape[0], self.layout.horizon))
        return torch.where(known_mask, known, x0)
