"""Guides (agd_envs/guides.py): formulas, real-unit chain rule, finite differences, errors, stability."""

from __future__ import annotations

import pytest
import torch
from analytic import LinearCritic, ToyDenoiser, gaussian_denoiser, make_normalizer, toy_task
from torch import nn

from agd_envs.diffusion import cosine_schedule
from agd_envs.guides import GUIDES, advantages, get_guide, guide_gradient, segment_log_f
from agd_envs.sampling import Conditioning, sample
from agd_envs.segments import SegmentLayout

LAYOUT = SegmentLayout(obs_dim=3, act_dim=2, horizon=4)
GAMMA = 0.9


def _raising_critic(obs: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the critic must not be called")


def _mlp_critic(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(LAYOUT.obs_dim, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def _terminates(obs: torch.Tensor) -> torch.Tensor:
    return obs[..., 0] > 0.8


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    norm = make_normalizer(LAYOUT, g)
    x = torch.randn(6, LAYOUT.x_dim, generator=g, dtype=torch.float64)
    return norm, x


def test_registry_names_and_suggestions() -> None:
    assert list(GUIDES) == ["none", "reward", "eag", "sag"]
    assert get_guide("EAG") is GUIDES["eag"] and get_guide(GUIDES["sag"]) is GUIDES["sag"]
    with pytest.raises(ValueError, match=r"Did you mean 'eag'\?.*Valid guides: none, reward, eag, sag"):
        get_guide("eagg")
    with pytest.raises(ValueError, match="Valid guides"):
        get_guide("advantage-weighted")


def test_none_never_calls_the_critic() -> None:
    norm, x = _setup()
    states, rewards = LAYOUT.unpack(x)
    assert torch.equal(GUIDES["none"](states, rewards, critic=_raising_critic), torch.zeros(6, dtype=x.dtype))
    kwargs = dict(layout=LAYOUT, normalizer=norm, task=None, critic=_raising_critic, gamma=GAMMA)
    grad = guide_gradient(GUIDES["none"], x, **kwargs)
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", ["eag", "sag"])
def test_advantage_guides_need_a_critic(name: str) -> None:
    norm, x = _setup()
    states, rewards = LAYOUT.unpack(x)
    with pytest.raises(ValueError, match=r"needs the agent's state-value critic: pass critic="):
        GUIDES[name](states, rewards)
    with pytest.raises(ValueError, match="pass critic="):
        guide_gradient(GUIDES[name], x, layout=LAYOUT, normalizer=norm, task=None, critic=None, gamma=GAMMA)
    model = ToyDenoiser(LAYOUT)
    cond = Conditioning.from_start(torch.zeros(2, LAYOUT.obs_dim, dtype=torch.float64), horizon=LAYOUT.horizon)
    with pytest.raises(ValueError, match="pass critic="):
        sample(model, cond, guide=name)


def test_advantages_formula_with_terminations() -> None:
    states = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.5, 0, 0]]], dtype=torch.float64)  # H = 2
    rewards = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    done = torch.tensor([[True, False]])
    critic = LinearCritic(torch.tensor([3.0, 0.0, 0.0]), b=1.0)  # V = 3 s[0] + 1
    adv = advantages(states, rewards, critic, done, gamma=0.5)
    # A_0 = 1 + 0 (terminated) - V(s_0)=1 ; A_1 = -2 + 0.5 * V(s_2)=2.5 - V(s_1)=4
    assert torch.allclose(adv, torch.tensor([[0.0, -2.0 + 1.25 - 4.0]], dtype=torch.float64))


@pytest.mark.parametrize("name", ["reward", "eag", "sag"])
def test_gradient_matches_finite_differences(name: str) -> None:
    """float64 central differences of log f w.r.t. every normalized entry the guide moves."""
    norm, x = _setup(seed=1)
    guide, critic, task = GUIDES[name], _mlp_critic(), toy_task(LAYOUT.obs_dim, LAYOUT.act_dim, _terminates)
    kwargs = dict(layout=LAYOUT, normalizer=norm, task=task, critic=critic, gamma=GAMMA)
    states = norm.unnormalize_states(LAYOUT.unpack(x)[0])
    done = task.terminated(states[:, 1:])
    assert 0 < int(done.sum()) < done.numel()  # the (1 - d_t) factor is exercised both ways
    assert float((states[..., 0] - 0.8).abs().min()) > 1e-3  # no termination flips within the FD step

    grad = guide_gradient(guide, x, **kwargs)
    moved = guide.entry_mask(LAYOUT)
    assert torch.equal(grad[:, ~moved], torch.zeros_like(grad[:, ~moved]))
    h = 1e-6
    fd = torch.zeros_like(x)
    for i in moved.nonzero()[:, 0].tolist():
        step = torch.zeros_like(x)
        step[:, i] = h
        fd[:, i] = (segment_log_f(guide, x + step, **kwargs) - segment_log_f(guide, x - step, **kwargs)) / (2 * h)
    assert fd[:, moved].abs().max() > 1e-2  # a non-trivial gradient
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_real_unit_chain_rule_for_a_linear_critic() -> None:
    """V(s) = w . s in REAL units: d log f / d z = d log f / d s * obs_std (z = normalized state)."""
    norm, x = _setup(seed=2)
    w = torch.tensor([0.7, -1.3, 0.4], dtype=torch.float64)
    critic = LinearCritic(w)
    kwargs = dict(layout=LAYOUT, normalizer=norm, task=None, critic=critic, gamma=GAMMA)
    grad_states = LAYOUT.unpack(guide_gradient(GUIDES["eag"], x, **kwargs))[0]  # B x (H+1) x S
    ws = w * norm.obs_std
    # sum_t A_t = sum_t r_t + gamma sum_{t>=1} V(s_t) - sum_{t<H} V(s_t)
    expected = torch.stack([-ws] + [(GAMMA - 1) * ws] * (LAYOUT.horizon - 1) + [GAMMA * ws])
    torch.testing.assert_close(grad_states, expected.expand_as(grad_states), rtol=1e-12, atol=1e-12)

    # SAG: the same with each transition weighted by sigmoid(-A_t); check the last state.
    states = norm.unnormalize_states(LAYOUT.unpack(x)[0])
    rewards = norm.unnormalize_rewards(LAYOUT.unpack(x)[1])
    adv = advantages(states, rewards, critic, torch.zeros_like(rewards, dtype=torch.bool), GAMMA)
    grad_sag = LAYOUT.unpack(guide_gradient(GUIDES["sag"], x, **kwargs))[0]
    torch.testing.assert_close(grad_sag[:, -1], torch.sigmoid(-adv[:, -1:]) * GAMMA * ws, rtol=1e-12, atol=1e-12)

    # Reward guide: d sum_t r_t / d z_r = rew_std on every reward entry, nothing on states.
    grad_r = guide_gradient(GUIDES["reward"], x, **kwargs)
    torch.testing.assert_close(LAYOUT.unpack(grad_r)[1], norm.rew_std.expand(6, LAYOUT.horizon))


def _gaussian_model(num_steps: int = 20):
    g = torch.Generator().manual_seed(3)
    norm = make_normalizer(LAYOUT, g)
    mean = torch.randn(LAYOUT.x_dim, generator=g, dtype=torch.float64)
    cov = torch.eye(LAYOUT.x_dim, dtype=torch.float64)
    return gaussian_denoiser(LAYOUT, norm, cosine_schedule(num_steps), toy_task(3, 2), mean, cov)


def test_shift_is_clipped_to_max_shift() -> None:
    """One DDIM step returns x0_hat + clip(alpha (1 - ab) g): at alpha = 1e3 every guided entry moves by exactly 3."""
    model = _gaussian_model()
    s0 = torch.zeros(4, LAYOUT.obs_dim, dtype=torch.float64)
    cond = Conditioning.from_start(s0, actions=torch.zeros(4, LAYOUT.horizon, LAYOUT.act_dim, dtype=torch.float64))
    critic = LinearCritic(torch.tensor([0.7, -1.3, 0.4]))

    def run(guide: str, alpha: float, max_shift: float | None = 3.0) -> torch.Tensor:
        out = sample(model, cond, steps=1, guide=guide, critic=critic, alpha=alpha, gamma=GAMMA,
                     generator=torch.Generator().manual_seed(0), max_shift=max_shift)  # fmt: skip
        return model.normalizer.normalize_states(out.states)

    base, big = run("none", 0.0), run("eag", 1e3)
    diff = (big - base)[:, 1:]  # s_0 is inpainted
    torch.testing.assert_close(diff.abs(), torch.full_like(diff, 3.0))
    assert (run("eag", 1e3, max_shift=None) - base)[:, 1:].abs().min() > 10.0  # unclipped: alpha * (1 - ab) * g


class _SpikyCritic(nn.Module):
    """Finite values up to 1e8, gradients up to 1e12, oscillating: an adversarial critic."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return 1e8 * torch.sin(1e4 * obs).sum(-1)


class _OverflowingCritic(nn.Module):
    """exp(500 s): infinite values and gradients for most states."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.exp(500.0 * obs.sum(-1))


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("guide", ["eag", "sag"])
@pytest.mark.parametrize("mode", ["x0", "dps"])
def test_any_alpha_and_adversarial_critics_give_finite_samples(alpha: float, guide: str, mode: str) -> None:
    model = ToyDenoiser(LAYOUT, num_steps=20)
    s0 = torch.randn(16, LAYOUT.obs_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cond = Conditioning.from_start(s0, horizon=LAYOUT.horizon)
    actor = lambda s: torch.tanh(s[:, :2])  # noqa: E731
    for critic in (_SpikyCritic(), _OverflowingCritic()):
        out = sample(model, cond, steps=5, eta=1.0, actor=actor, guide=guide, critic=critic, alpha=alpha,
                     guide_mode=mode, generator=torch.Generator().manual_seed(0))  # fmt: skip
        for value in (out.states, out.rewards, out.actions):
            assert torch.isfinite(value).all()
    assert torch.isfinite(out.advantages).sum() < out.advantages.numel()  # the overflowing critic really overflowed
