"""The sampler (agd_envs/sampling.py): determinism, inpainting, policy actions, DDPM step, advantages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from analytic import LinearCritic, LinearDynamicsDenoiser, ToyDenoiser, toy_task
from conftest import tiny_model_config
from torch import nn
from torch.distributions import Independent, Normal

from agd_envs.guides import advantages
from agd_envs.batch import SegmentBatch
from agd_envs.diffusion import sampling_steps
from agd_envs.sampling import Conditioning, imagine, sample
from agd_envs.segments import SegmentLayout, encode_segment

LAYOUT = SegmentLayout(obs_dim=3, act_dim=2, horizon=4)
B = 8
F64 = torch.float64


class Recorder:
    """Wraps a denoiser and records every call's inputs."""

    def __init__(self, model, config=None) -> None:
        self.model, self.calls = model, []
        self.layout, self.normalizer, self.schedule = model.layout, model.normalizer, model.schedule
        self.task = model.task
        if config is not None:
            self.config = config

    def denoise(self, x_t, t, actions, action_mask, known, known_mask):
        x0 = self.model.denoise(x_t, t, actions, action_mask, known, known_mask)
        self.calls.append(dict(x_t=x_t.clone(), t=t.clone(), actions=actions.clone(), action_mask=action_mask.clone(),
                               x0=x0.clone()))  # fmt: skip
        return x0


class GaussianActor(nn.Module):
    """Normal(tanh(s W), 0.1 + softplus(s U)) over real-unit actions."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn(3, 2, generator=g, dtype=F64))
        self.u = nn.Parameter(torch.randn(3, 2, generator=g, dtype=F64))

    def mean_std(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(s @ self.w), 0.1 + nn.functional.softplus(s @ self.u)

    def forward(self, s: torch.Tensor) -> Independent:
        return Independent(Normal(*self.mean_std(s)), 1)


def _s0(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, LAYOUT.obs_dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _closed_loop_cond(seed: int = 1) -> Conditioning:
    """Per-row prefixes: k known states (1..H+1), j known actions (0..H), rewards r_0..r_{k-2}."""
    g = torch.Generator().manual_seed(seed)
    h = LAYOUT.horizon
    states = torch.randn(B, h + 1, LAYOUT.obs_dim, generator=g, dtype=F64)
    k = torch.tensor([1, 2, 3, 5, 1, 4, 2, 5])
    states[torch.arange(h + 1)[None, :] >= k[:, None]] = float("nan")  # ignored rows may hold anything
    return Conditioning(
        states=states,
        num_known_states=k,
        actions=torch.randn(B, h, LAYOUT.act_dim, generator=g, dtype=F64),
        num_known_actions=torch.tensor([0, 2, 3, 4, 4, 1, 0, 2]),
        rewards=torch.randn(B, h, generator=g, dtype=F64),
    )


def _run(model, cond, seed: int = 0, **kwargs) -> SegmentBatch:
    return sample(model, cond, generator=torch.Generator().manual_seed(seed), **kwargs)


def _equal(a: SegmentBatch, b: SegmentBatch) -> bool:
    return all(torch.equal(x, y) for x, y in [(a.states, b.states), (a.rewards, b.rewards),
                                              (a.actions.nan_to_num(7.0), b.actions.nan_to_num(7.0))])  # fmt: skip


@pytest.mark.parametrize("mode", ["x0", "dps"])
def test_same_seed_gives_bit_identical_samples(mode: str) -> None:
    model = ToyDenoiser(LAYOUT)
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    critic = LinearCritic(torch.ones(3))
    kwargs = dict(steps=6, eta=0.7, actor=GaussianActor(), guide="sag", critic=critic, guide_mode=mode)
    first, second, other = (_run(model, cond, seed, **kwargs) for seed in (3, 3, 4))
    assert _equal(first, second) and torch.equal(first.advantages, second.advantages)
    assert not torch.equal(first.states, other.states)


@pytest.mark.parametrize("with_actor", [False, True])
def test_known_entries_are_returned_exactly(with_actor: bool) -> None:
    model, cond = ToyDenoiser(LAYOUT), _closed_loop_cond()
    out = _run(model, cond, steps=5, eta=1.0, actor=GaussianActor() if with_actor else None)
    rows = torch.arange(LAYOUT.horizon + 1)
    k, j = cond.num_known_states, cond.num_known_actions
    known_states = rows[None, :] < k[:, None]
    known_rewards = rows[None, :-1] < (k[:, None] - 1)
    known_actions = rows[None, :-1] < j[:, None]
    assert torch.equal(out.states[known_states], cond.states[known_states])
    assert torch.equal(out.rewards[known_rewards], cond.rewards[known_rewards])
    assert torch.equal(out.actions[known_actions], cond.actions[known_actions])
    assert torch.isfinite(out.states).all() and torch.isfinite(out.rewards).all()
    # Unknown actions: NaN without an actor (the model marginalised over them), policy samples with one.
    assert bool(out.actions[~known_actions].isnan().all()) is not with_actor


def test_policy_actions_are_a_reparameterised_sample_at_the_final_states() -> None:
    """a_t = mean(s_t) + std(s_t) xi_t with xi drawn once (right after x_T) from the generator."""
    model, actor = ToyDenoiser(LAYOUT), GaussianActor()
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    cond.actions = torch.randn(B, LAYOUT.horizon, LAYOUT.act_dim, dtype=F64)
    cond.num_known_actions = torch.tensor([0, 1, 2, 0, 4, 3, 0, 1])
    out = _run(model, cond, seed=5, steps=4, eta=1.0, actor=actor)
    g = torch.Generator().manual_seed(5)
    torch.randn(B, LAYOUT.x_dim, generator=g, dtype=F64)  # x_T
    xi = torch.randn(B, LAYOUT.horizon, LAYOUT.act_dim, generator=g, dtype=F64)
    mean, std = actor.mean_std(out.states[:, :-1])
    known = (torch.arange(LAYOUT.horizon)[None, :] < cond.num_known_actions[:, None])[..., None]
    expected = torch.where(known, cond.actions, mean + std * xi)
    torch.testing.assert_close(out.actions, expected, rtol=0, atol=1e-12)

    # A deterministic actor (returns a tensor): the actions are that function of the final states.
    policy = lambda s: torch.sin(s[:, :2]) - s[:, 2:] ** 2  # noqa: E731
    out = _run(model, Conditioning.from_start(_s0(), horizon=LAYOUT.horizon), steps=4, actor=policy)
    torch.testing.assert_close(out.actions, torch.sin(out.states[:, :-1, :2]) - out.states[:, :-1, 2:] ** 2)


def test_actor_inputs_across_steps() -> None:
    """First call: only actions at known states are drawn (rest masked); later calls: all actions given."""
    model = Recorder(ToyDenoiser(LAYOUT))
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    _run(model, cond, steps=3, actor=GaussianActor())
    assert len(model.calls) == 3
    first = model.calls[0]["action_mask"]
    assert first[:, 0].all() and not first[:, 1:].any()
    assert all(call["action_mask"].all() for call in model.calls[1:])


def _wide_actor(s: torch.Tensor) -> Independent:
    """Normal(0, 4^2) actions: most draws leave the toy task's [-1, 1] box."""
    shape = s.shape[:-1] + (LAYOUT.act_dim,)
    return Independent(Normal(torch.zeros(shape, dtype=F64), torch.full(shape, 4.0, dtype=F64)), 1)


def test_the_denoiser_sees_clipped_actions_and_the_agent_gets_its_samples() -> None:
    """The model is conditioned on what the env would execute; SegmentBatch.actions keeps the policy's draws."""
    model = Recorder(ToyDenoiser(LAYOUT))
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    out = _run(model, cond, seed=2, steps=3, actor=_wide_actor)
    assert out.actions.abs().max() > 3.0
    for call in model.calls:
        seen = model.normalizer.unnormalize_actions(call["actions"])[call["action_mask"]]
        assert seen.min() >= -1.0 - 1e-12 and seen.max() <= 1.0 + 1e-12
    # Deterministic actors at +1 and at +7 condition the model identically.
    at_edge, beyond = (_run(ToyDenoiser(LAYOUT), cond, seed=2, steps=3, actor=lambda s, c=c: c + 0 * s[..., :2])
                       for c in (1.0, 7.0))  # fmt: skip
    torch.testing.assert_close(at_edge.states, beyond.states, rtol=0, atol=0)
    assert torch.equal(beyond.actions, torch.full_like(beyond.actions, 7.0))


class ConstantActor(nn.Module):
    """Normal(mean, std) whatever the state."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = nn.Parameter(mean), nn.Parameter(std)

    def forward(self, s: torch.Tensor) -> Independent:
        return Independent(Normal(self.mean.expand(s.shape[0], -1), self.std.expand(s.shape[0], -1)), 1)


@pytest.mark.parametrize("guide", ["eag", "sag"])
def test_the_action_guide_draws_from_the_advantage_tilted_policy(guide: str) -> None:
    """With a linear model s' = s + a E, V(s) = w . s and a constant policy N(m, sd^2), EAG's log f = sum_t A_t is linear
    in the actions: d/da_k = c_k E w with c_k = gamma (H - k) - (H - k - 1). In the policy's noise xi the gradient is
    g = sd * d/da, and the tilted draw is xi + alpha g / rms|g| (the temperature that moves the batch by alpha in rms):
    the sampler must return exactly the untilted actions moved by sd * that, and states that follow from the returned
    actions (nothing else is shifted). SAG weighs each A_t by sigmoid(-A_t) instead."""
    effect = torch.tensor([[0.5, -1.0, 0.2], [0.3, 0.4, -0.6]], dtype=F64)  # A x S
    model, critic = LinearDynamicsDenoiser(LAYOUT, effect), LinearCritic(torch.tensor([1.0, 2.0, -0.5]))
    mean, std = torch.tensor([0.1, -0.2], dtype=F64), torch.tensor([0.05, 0.08], dtype=F64)
    actor, gamma, alpha = ConstantActor(mean, std), 0.9, 1.5
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    kwargs = dict(seed=3, steps=4, actor=actor, critic=critic, gamma=gamma, alpha=alpha, guide=guide)
    plain = _run(model, cond, **{**kwargs, "alpha": 0.0})
    tilted = _run(model, cond, guide_on="actions", **kwargs)
    e_w = effect @ critic.w  # d A_t / d a_k per unit of s_{t+1}'s dependence on a_k
    if guide == "eag":
        k = torch.arange(LAYOUT.horizon, dtype=F64)
        c = (gamma * (LAYOUT.horizon - k) - (LAYOUT.horizon - k - 1)).expand(B, -1)  # 0.6, 0.7, 0.8, 0.9
    else:  # sum_t log sigmoid(A_t): A_t's share is weighted by sigmoid(-A_t), taken at the returned segment
        weights = torch.sigmoid(-advantages(tilted.states, tilted.rewards, critic, tilted.terminations, gamma))
        c = torch.stack([gamma * weights[:, t:].sum(1) - weights[:, t + 1:].sum(1) for t in range(LAYOUT.horizon)], 1)
    g = c[..., None] * e_w * std  # B x H x A, d log f / d xi
    shift = alpha * g / g.flatten(1).square().sum(1).mean().sqrt()
    # SAG's weights come from the x0 estimate at the last guided step (its actions one tilt behind): 4e-4 off here
    torch.testing.assert_close(tilted.actions, plain.actions + std * shift, rtol=0, atol=1e-12 if guide == "eag" else 1e-3)
    moved = ((tilted.actions - plain.actions) / std).flatten(1).norm(dim=1)
    assert abs(float(moved.square().mean().sqrt()) - alpha) < (1e-9 if guide == "eag" else 0.02)  # alpha is the rms move
    torch.testing.assert_close(tilted.states[:, 1:] - tilted.states[:, :-1], tilted.actions @ effect, rtol=0, atol=1e-12)
    gain = lambda out: advantages(out.states, out.rewards, critic, out.terminations, gamma).sum(1)  # noqa: E731
    assert bool((gain(tilted) > gain(plain)).all())  # every segment's sum of advantages rose
    if guide == "eag":  # the critic's scale does not change EAG's move (the temperature follows it; SAG's weights do change)
        scaled = _run(model, cond, guide_on="actions", **{**kwargs, "critic": LinearCritic(1e4 * critic.w)})
        torch.testing.assert_close(scaled.actions, tilted.actions, rtol=0, atol=1e-9)


def test_the_action_guide_names_what_it_needs() -> None:
    model, critic = LinearDynamicsDenoiser(LAYOUT, torch.ones(2, 3, dtype=F64)), LinearCritic(torch.ones(3))
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    with pytest.raises(ValueError, match="needs an actor that returns a distribution"):
        _run(model, cond, actor=lambda s: s[:, :2], critic=critic, guide="eag", guide_on="actions")
    with pytest.raises(ValueError, match="guide_on must be 'states' or 'actions', got 'both'"):
        _run(model, cond, actor=GaussianActor(), critic=critic, guide="eag", guide_on="both")


def test_ddpm_step_is_the_ancestral_posterior_sample() -> None:
    """eta = 1, all N steps: x_{t-1} = mu~(x_t, x0_hat) + sqrt(beta~_t) z, the DDPM posterior (Ho et al. eq. 7)."""
    model = Recorder(ToyDenoiser(LAYOUT, num_steps=3))
    cond = Conditioning.from_start(_s0(), actions=torch.zeros(B, LAYOUT.horizon, LAYOUT.act_dim, dtype=F64))
    out = _run(model, cond, seed=11, steps=3, eta=1.0)
    assert [int(c["t"][0]) for c in model.calls] == [2, 1, 0]

    betas = model.schedule.betas
    alphas, ab = 1.0 - betas, model.schedule.alpha_bar
    g = torch.Generator().manual_seed(11)
    torch.randn(B, LAYOUT.x_dim, generator=g, dtype=F64)  # x_T
    known_mask = LAYOUT.known_mask(torch.ones(B, dtype=torch.long))
    for t in (2, 1):
        z = torch.randn(B, LAYOUT.x_dim, generator=g, dtype=F64)
        x_t, x0 = model.calls[2 - t]["x_t"], model.calls[2 - t]["x0"]
        mean = (ab[t - 1].sqrt() * betas[t] * x0 + alphas[t].sqrt() * (1 - ab[t - 1]) * x_t) / (1 - ab[t])
        var = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
        expected = torch.where(known_mask, x_t, mean + var.sqrt() * z)  # known entries stay clean
        torch.testing.assert_close(model.calls[3 - t]["x_t"], expected, rtol=0, atol=1e-12)
    # The result is the last x0 estimate.
    final = encode_segment(LAYOUT, model.normalizer, out.states, out.rewards)
    torch.testing.assert_close(final, model.calls[-1]["x0"], rtol=0, atol=1e-12)


def test_none_guide_gives_the_same_samples_with_or_without_a_critic() -> None:
    model = ToyDenoiser(LAYOUT)
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    critic = LinearCritic(torch.tensor([1.0, -2.0, 0.5]))
    without = _run(model, cond, steps=4, eta=1.0, actor=GaussianActor())
    with_critic = _run(model, cond, steps=4, eta=1.0, actor=GaussianActor(), critic=critic)
    assert _equal(without, with_critic)
    assert without.advantages is None and with_critic.advantages is not None
    # alpha = 0 switches any guide off: the same samples again.
    off = _run(model, cond, steps=4, eta=1.0, actor=GaussianActor(), critic=critic, guide="eag", alpha=0.0)
    assert _equal(without, off)


@pytest.mark.parametrize("mode", ["x0", "dps"])
def test_the_guide_runs_only_at_steps_with_enough_noise(mode: str) -> None:
    model = ToyDenoiser(LAYOUT)
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    calls: list[int] = []

    class CountingCritic(LinearCritic):
        def forward(self, s: torch.Tensor) -> torch.Tensor:
            calls.append(s.shape[0])
            return super().forward(s)

    critic = CountingCritic(torch.tensor([1.0, -2.0, 0.5]))
    times = sampling_steps(model.schedule.num_steps, 4)
    noise = [float(1.0 - model.schedule.at(torch.tensor([t]), torch.zeros(1, 1, dtype=F64))) for t in times]
    low = sum(sorted(noise)[:2]) / 2  # skips the last, least noisy step
    kwargs = dict(steps=4, eta=1.0, actor=GaussianActor(), critic=critic, guide="eag", alpha=5.0, guide_mode=mode)
    per_threshold = {}
    for threshold in (0.0, low, 2.0):
        calls.clear()
        per_threshold[threshold] = _run(model, cond, min_guide_noise=threshold, **kwargs)
        guided = sum(n >= threshold for n in noise)
        assert len(calls) == guided + 1, (threshold, noise, calls)  # one per guided step, one for the advantages
    unguided = _run(model, cond, **(kwargs | dict(guide="none")))
    assert _equal(per_threshold[2.0], unguided)  # above every step's noise: no guide at all
    assert not _equal(per_threshold[0.0], unguided)
    # Skipping the least noisy step's guide changes the samples (by how much on a trained run: benchmarks/imagination_cost.py).
    with pytest.raises(AssertionError):
        assert _equal(per_threshold[0.0], per_threshold[low])


def test_advantages_and_terminations_match_a_direct_recomputation() -> None:
    model = ToyDenoiser(LAYOUT)
    model.task = toy_task(3, 2, termination_fn=lambda obs: obs[..., 1] > 0.5)
    critic = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    gamma = 0.8
    out = _run(model, _closed_loop_cond(), steps=4, actor=GaussianActor(), critic=critic, guide="eag", gamma=gamma)
    done = out.states[:, 1:, 1] > 0.5
    assert torch.equal(out.terminations, done) and 0 < int(done.sum()) < done.numel()
    with torch.no_grad():
        v = critic(out.states).squeeze(-1)
    expected = out.rewards + gamma * (1.0 - done.to(F64)) * v[:, 1:] - v[:, :-1]
    torch.testing.assert_close(out.advantages, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.advantages, advantages(out.states, out.rewards, critic, done, gamma))


def test_critic_and_actor_on_another_dtype_are_called_in_theirs() -> None:
    """A float32 critic/actor with a float64 model: inputs are cast to the network's dtype and back."""
    model = ToyDenoiser(LAYOUT)
    critic = nn.Linear(3, 1)  # float32
    actor = nn.Linear(3, 2)  # float32, deterministic
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    out = _run(model, cond, steps=3, actor=actor, critic=critic, guide="eag")
    assert out.actions.dtype == F64 and out.advantages.dtype == F64 and torch.isfinite(out.advantages).all()


def test_grad_action_guidance_keeps_actions_near_the_policy() -> None:
    """PolyGRAD's variant: final actions are clamped to mean +- 3 std of the policy at the final states."""
    model, actor = ToyDenoiser(LAYOUT), GaussianActor()
    out = _run(model, Conditioning.from_start(_s0(), horizon=LAYOUT.horizon), steps=5, eta=1.0, actor=actor,
               action_guidance="grad")  # fmt: skip
    mean, std = actor.mean_std(out.states[:, :-1])
    assert ((out.actions - mean).abs() <= 3 * std + 1e-12).all()


def test_default_steps_come_from_the_model_config() -> None:
    cond = Conditioning.from_start(_s0(), horizon=LAYOUT.horizon)
    with_config = Recorder(ToyDenoiser(LAYOUT, num_steps=20), config=SimpleNamespace(sampling_steps=3))
    _run(with_config, cond)
    without = Recorder(ToyDenoiser(LAYOUT, num_steps=20))
    _run(without, cond)
    assert (len(with_config.calls), len(without.calls)) == (3, 20)


def test_invalid_conditioning_names_the_fix() -> None:
    model = ToyDenoiser(LAYOUT)
    with pytest.raises(ValueError, match=r"B x 5 x 3 .*Conditioning.from_start\(s0, horizon=4\)"):
        sample(model, Conditioning.from_start(_s0(), horizon=3))
    cond = _closed_loop_cond()
    cond.rewards = None
    with pytest.raises(ValueError, match="rewards is required"):
        sample(model, cond)
    cond = Conditioning.from_start(_s0(), horizon=4)
    cond.num_known_actions = torch.full((B,), 2)
    with pytest.raises(ValueError, match="actions is None"):
        sample(model, cond)
    with pytest.raises(ValueError, match="horizon="):
        Conditioning.from_start(_s0())
    with pytest.raises(ValueError, match="guide_mode"):
        sample(model, Conditioning.from_start(_s0(), horizon=4), guide_mode="tweedie")


def test_imagine_is_algorithm_2() -> None:
    model, actor = ToyDenoiser(LAYOUT), GaussianActor()
    critic = LinearCritic(torch.tensor([1.0, 0.0, -1.0]))
    out = imagine(model, _s0(), actor, critic, alpha=0.5, steps=4, generator=torch.Generator().manual_seed(0))
    ref = sample(model, Conditioning.from_start(_s0(), horizon=LAYOUT.horizon), steps=4, actor=actor, guide="eag",
                 critic=critic, alpha=0.5, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert _equal(out, ref) and torch.isfinite(out.actions).all()
    assert out.states.shape == (B, 5, 3) and out.actions.shape == (B, 4, 2) and out.advantages.shape == (B, 4)
    with pytest.raises(ValueError, match="pass critic="):
        imagine(model, _s0(), actor)


def test_the_world_model_satisfies_the_denoiser_protocol() -> None:
    """A tiny untrained WorldModel samples through the same code (joint, closed loop, dps guide)."""
    world_model = pytest.importorskip("agd_envs.world_model")
    config = tiny_model_config("Hopper")
    model = world_model.WorldModel(config)
    s0 = torch.zeros(4, 11)
    critic = nn.Linear(11, 1)
    out = imagine(model, s0, nn.Linear(11, 3), critic, guide="sag", guide_mode="dps",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.states.shape == (4, config.horizon + 1, 11) and out.states.dtype == torch.float32
    assert torch.isfinite(out.states).all() and torch.equal(out.states[:, 0], s0)
    cond = Conditioning(states=torch.zeros(4, config.horizon + 1, 11), num_known_states=torch.tensor([1, 2, 3, 4]),
                        actions=torch.zeros(4, config.horizon, 3), num_known_actions=torch.tensor([1, 2, 3, 4]),
                        rewards=torch.zeros(4, config.horizon))  # fmt: skip
    assert torch.isfinite(sample(model, cond, generator=torch.Generator().manual_seed(0)).states).all()
