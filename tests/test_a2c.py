"""A2C agent: GAE and masks against hand-written references, the actor/critic protocols, learning on a
known linear system, and checkpoint round trips. Pure torch, no MuJoCo."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from agd_envs.batch import SegmentBatch
from agents.a2c import A2CAgent, A2CConfig, clip_to_robust_range
from agents.returns import alive_mask, gae


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_segments(batch: int, horizon: int, obs_dim: int, act_dim: int, seed: int) -> SegmentBatch:
    g = torch.Generator().manual_seed(seed)
    return SegmentBatch(
        states=torch.randn(batch, horizon + 1, obs_dim, generator=g) * 3 + 1,
        actions=torch.randn(batch, horizon, act_dim, generator=g),
        rewards=torch.randn(batch, horizon, generator=g),
        terminations=torch.rand(batch, horizon, generator=g) < 0.1,
    )


def numpy_gae(r, v, nv, term, trunc, gamma, lam):
    """Loop-by-loop GAE of one time-major ``T x N`` batch (last row = end of data)."""
    T, N = r.shape
    adv = np.zeros((T, N))
    for n in range(N):
        next_adv = 0.0
        for t in reversed(range(T)):
            if t == T - 1 or term[t, n] or trunc[t, n]:
                next_adv = 0.0
            bootstrap = 0.0 if term[t, n] else nv[t, n]
            delta = r[t, n] + gamma * bootstrap - v[t, n]
            next_adv = delta + gamma * lam * next_adv
            adv[t, n] = next_adv
    return adv


def test_gae_matches_numpy_reference_with_terminations_and_truncations() -> None:
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 15, 6, 0.97, 0.9
    r, v, nv = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=(T, N))
    term, trunc = rng.random((T, N)) < 0.12, rng.random((T, N)) < 0.12
    term[4, 0], trunc[4, 0], trunc[7, 1], term[7, 1] = True, False, True, False  # one of each, mid-rollout
    t_ = lambda x: torch.as_tensor(x)  # noqa: E731
    adv, ret = gae(t_(r), t_(v), t_(nv), t_(term), t_(term | trunc), gamma, lam)
    expected = numpy_gae(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), expected + v, atol=1e-12)
    # termination: no bootstrap; truncation: bootstrap from V(next_obs); both cut the recursion
    assert adv[4, 0].item() == pytest.approx(r[4, 0] - v[4, 0], abs=1e-12)
    assert adv[7, 1].item() == pytest.approx(r[7, 1] + gamma * nv[7, 1] - v[7, 1], abs=1e-12)


def test_alive_mask_keeps_the_terminating_step_and_drops_what_follows() -> None:
    d = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    expected = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert alive_mask(d).int().tolist() == expected


def test_value_targets_bootstrap_from_true_next_obs_at_truncation() -> None:
    torch.manual_seed(0)
    agent = A2CAgent(3, 2, A2CConfig(target_ema=None, hidden_sizes=(16,)))
    T, N, gamma = 4, 2, agent.config.gamma
    obs, next_obs, rewards = torch.randn(T, N, 3), torch.randn(T, N, 3), torch.randn(T, N)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    truncated = torch.zeros(T, N, dtype=torch.bool)
    terminated[1, 0], truncated[1, 1] = True, True  # obs[2] is a reset state, next_obs[1] the final one
    adv, _ = agent.value_targets(obs, rewards, next_obs, terminated, terminated | truncated)
    with torch.no_grad():
        v, nv = agent.critic(obs), agent.critic(next_obs)
    assert adv[1, 0].item() == pytest.approx((rewards[1, 0] - v[1, 0]).item(), abs=1e-6)
    assert adv[1, 1].item() == pytest.approx((rewards[1, 1] + gamma * nv[1, 1] - v[1, 1]).item(), abs=1e-6)


def test_gae_over_a_long_real_stream_matches_the_step_by_step_reference() -> None:
    rng = np.random.default_rng(3)
    T, N, gamma, lam = 3001, 2, 0.999, 0.99  # odd T: the scan's last window is partial
    r, v, nv = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=(T, N))
    term, trunc = rng.random((T, N)) < 0.002, rng.random((T, N)) < 0.002
    adv, _ = gae(*(torch.as_tensor(x) for x in (r, v, nv, term, term | trunc)), gamma, lam)
    expected = numpy_gae(r, v, nv, term, trunc, gamma, lam)
    assert np.abs(expected).max() > 10  # long windows: hundreds of terms per advantage
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-9)


def test_value_targets_reuse_obs_values_for_next_obs_and_evaluate_only_episode_ends() -> None:
    torch.manual_seed(0)
    agent = A2CAgent(3, 2, A2CConfig(target_ema=None, hidden_sizes=(16,)))
    T, N = 40, 3
    stream = torch.randn(T + 1, N, 3)
    obs, next_obs = stream[:-1].clone(), stream[1:].clone()
    truncated = torch.zeros(T, N, dtype=torch.bool)
    truncated[[9, 25], 0] = True  # episode ends: the next row starts a new episode, next_obs is the final state
    obs[[10, 26], 0] = torch.randn(2, 3)
    rewards, terminated = torch.randn(T, N), torch.zeros(T, N, dtype=torch.bool)
    seen: list[int] = []
    critic = agent.critic
    agent.critic = lambda x: (seen.append(x[..., 0].numel()), critic(x))[1]  # type: ignore[assignment]
    adv, ret = agent.value_targets(obs, rewards, next_obs, terminated, truncated)
    with torch.no_grad():
        expected = gae(rewards, critic(obs), critic(next_obs), terminated, truncated, agent.config.gamma, agent.config.gae_lambda)
    torch.testing.assert_close(adv, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, expected[1], rtol=1e-5, atol=1e-5)
    assert seen == [T * N, N + 2]  # every obs once; next_obs only at the last row and the two episode ends


def _params(agent: A2CAgent) -> torch.Tensor:
    nets = [agent.actor, agent.critic, agent.target_critic]
    return torch.cat([p.detach().flatten() for net in nets for p in net.state_dict().values()])


def test_update_ignores_everything_imagined_after_a_termination() -> None:
    seg = random_segments(8, 6, 4, 2, seed=1)
    seg.terminations[:] = False
    seg.terminations[0, 2] = True  # segment 0 ends with transition 2 (s_3 terminal)
    garbage = copy.deepcopy(seg)
    garbage.states[0, 4:] = 1e3
    garbage.actions[0, 3:] = -7.0
    garbage.rewards[0, 3:] = 1e3
    garbage.terminations[0, 4] = True
    changed_terminal_step = copy.deepcopy(seg)
    changed_terminal_step.rewards[0, 2] += 5.0
    results = []
    for s in (seg, garbage, changed_terminal_step):
        torch.manual_seed(0)
        agent = A2CAgent(4, 2, A2CConfig(hidden_sizes=(32, 32)))
        agent.update(s)
        results.append(_params(agent))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-6)
    assert (results[0] - results[2]).abs().max() > 1e-4  # the terminating transition is learned from


def test_robust_clip_cuts_a_gaussian_at_its_analytic_tail_and_ignores_runaway_entries() -> None:
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    clipped = clip_to_robust_range(x, 3.0)
    # median 0 and 1.4826 MAD = sigma for a Gaussian: P(|z| > 3) = 0.0027
    assert abs(float((clipped != x).double().mean()) - 0.0027) < 0.0005
    assert abs(float(clipped.abs().max()) - 3.0) < 0.05
    x[:200] = 1e4  # mean + 3 std would move to ~1400; the median and MAD do not move
    assert float(clip_to_robust_range(x, 3.0).max()) < 3.05
    mostly_equal = torch.zeros(10)
    mostly_equal[0] = 5.0
    assert torch.equal(clip_to_robust_range(mostly_equal, 3.0), mostly_equal)  # MAD 0: left as it is
    with pytest.raises(ValueError, match="advantage_clip must be > 0"):
        A2CConfig(advantage_clip=0.0)


@pytest.mark.parametrize("advantage_clip", [None, 3.0])
def test_with_advantage_clip_a_runaway_segments_size_no_longer_moves_the_actor(advantage_clip: float | None) -> None:
    actors = []
    for outlier in (1e3, 1e5):
        seg = random_segments(32, 6, 4, 2, seed=3)
        seg.terminations[:] = False
        seg.rewards[0, 2] = outlier  # one runaway dreamed step
        torch.manual_seed(0)
        agent = A2CAgent(4, 2, A2CConfig(hidden_sizes=(32, 32), advantage_clip=advantage_clip))
        agent.update(seg)
        actors.append(torch.cat([p.detach().flatten() for p in agent.actor.state_dict().values()]))
    change = float((actors[0] - actors[1]).abs().max())
    assert (change < 1e-6) if advantage_clip else (change > 1e-4), change


def test_update_and_update_from_transitions_share_one_loss() -> None:
    seg = random_segments(8, 5, 3, 2, seed=2)
    seg.terminations[:] = False
    seg.terminations[1, 3] = True
    seg.terminations[1, 4] = True  # after the first termination: ignored by update()
    torch.manual_seed(0)
    a = A2CAgent(3, 2, A2CConfig(hidden_sizes=(32,)))
    torch.manual_seed(0)
    b = A2CAgent(3, 2, A2CConfig(hidden_sizes=(32,)))
    metrics_a = a.update(seg)
    tm = lambda x: x.transpose(0, 1)  # noqa: E731
    truncated = torch.zeros_like(seg.terminations)
    truncated[:, -1] = True
    metrics_b = b.update_from_transitions(
        tm(seg.states[:, :-1]),
        tm(seg.actions),
        tm(seg.rewards),
        tm(seg.states[:, 1:]),
        tm(seg.terminations),
        tm(truncated),
        valid=tm(alive_mask(seg.terminations)),
    )
    torch.testing.assert_close(_params(a), _params(b), rtol=0, atol=1e-6)
    assert metrics_a == pytest.approx(metrics_b, rel=1e-5, abs=1e-7)


def test_critic_protocol() -> None:
    torch.manual_seed(0)
    agent = A2CAgent(5, 2)
    agent.update(random_segments(16, 4, 5, 2, seed=3))  # non-trivial normalizer and PopArt statistics
    critic = agent.critic
    assert isinstance(critic, torch.nn.Module)
    obs = torch.randn(7, 5, requires_grad=True)
    values = critic(obs)
    assert values.shape == (7,)
    (grad,) = torch.autograd.grad(values.sum(), obs)
    assert grad.shape == (7, 5) and grad.abs().sum() > 0
    # finite differences in real units agree with autograd (the guides rely on this gradient)
    eps = 1e-2
    x = obs.detach()[:1].double()
    c64 = copy.deepcopy(critic).to(torch.float64)
    (g64,) = torch.autograd.grad(c64(x.requires_grad_()).sum(), x)
    fd = torch.stack([(c64(x + eps * e) - c64(x - eps * e)) / (2 * eps) for e in torch.eye(5, dtype=torch.float64)])
    torch.testing.assert_close(g64[0], fd[:, 0], atol=1e-5, rtol=1e-4)
    # .to moves buffers (normalizer, PopArt statistics) with the weights; float64 numpy-born inputs work
    assert c64(obs.detach().double()).dtype == torch.float64
    torch.testing.assert_close(c64(obs.detach().double()).float(), values.detach(), atol=1e-5, rtol=1e-5)
    if torch.cuda.is_available():
        assert critic.to("cuda")(obs.cuda()).device.type == "cuda"
        critic.to("cpu")


def test_popart_rescale_keeps_real_unit_values() -> None:
    torch.manual_seed(0)
    critic = A2CAgent(4, 1).critic
    obs = torch.randn(10, 4)
    before = critic(obs).detach()
    critic.set_value_statistics(torch.tensor(250.0), torch.tensor(40.0))
    torch.testing.assert_close(critic(obs).detach(), before, atol=1e-4, rtol=1e-5)
    assert critic.value_std.item() == 40.0


def test_actor_distribution_and_act() -> None:
    torch.manual_seed(0)
    low, high = np.array([-2.0, -1.0, 0.0]), np.array([2.0, 1.0, 1.0])
    config = A2CConfig(min_std=0.1, hidden_sizes=(32, 32))
    agent = A2CAgent(4, 3, config, action_low=low, action_high=high)
    with torch.no_grad():  # push the log-std far down and the mean against the bounds
        agent.actor.log_std.fill_(-20.0)
        agent.actor.mean_net[-1].bias.copy_(torch.tensor([5.0, -5.0, 0.0]))
    obs = np.random.default_rng(0).normal(size=(9, 4))
    dist = agent.actor(torch.as_tensor(obs, dtype=torch.float32))
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.mean.shape == dist.stddev.shape == dist.rsample().shape == (9, 3)
    assert dist.log_prob(dist.mean).shape == (9,)
    half_width = torch.as_tensor((high - low) / 2, dtype=torch.float32)
    assert bool((dist.stddev >= config.min_std * half_width - 1e-7).all())
    low_t, high_t = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    assert bool(((dist.mean >= low_t) & (dist.mean <= high_t)).all())
    deterministic = agent.act(obs, deterministic=True)
    assert deterministic.dtype == np.float32 and deterministic.shape == (9, 3)
    np.testing.assert_array_equal(deterministic, torch.clamp(dist.mean, low_t, high_t).detach().numpy())
    assert agent.act(obs[0], deterministic=True).shape == (3,)
    with torch.no_grad():
        agent.actor.log_std.fill_(1.0)  # wide samples still come back inside the box
    stochastic = agent.act(obs)
    assert stochastic.min() >= -2.0 and stochastic.max() <= 2.0 and (stochastic[:, 2] >= 0).all()
    assert len(np.unique(stochastic)) > 5


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="min_std < init_std"):
        A2CConfig(init_std=0.1, min_std=0.1)
    with pytest.raises(ValueError, match="obs_norm"):
        A2CConfig(obs_norm="batch")
    with pytest.raises(ValueError, match="finite"):
        A2CAgent(3, 2, action_low=-np.inf, action_high=np.inf)
    seg = random_segments(4, 5, 3, 2, seed=0)
    seg.states = seg.states[:, :-1]  # s_0..s_{H-1}: the final state is missing
    with pytest.raises(ValueError, match="s_0..s_H"):
        A2CAgent(3, 2, A2CConfig(hidden_sizes=(8,))).update(seg)


# --- learning on a known linear system: s' = s + 0.1·clip(a), r = -|s'|², s_0 ~ U[-1, 1]^2 ---------------

STEP = 0.1


@torch.no_grad()
def linear_system_rollout(agent: A2CAgent, s0: torch.Tensor, horizon: int, g: torch.Generator) -> SegmentBatch:
    """Roll the current policy (sampled, no reparameterization) through the linear system."""
    states, actions, rewards = [s0], [], []
    for _ in range(horizon):
        dist = agent.actor(states[-1])
        a = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=g)
        states.append(states[-1] + STEP * a.clamp(-1.0, 1.0))
        actions.append(a)
        rewards.append(-states[-1].square().sum(-1))
    terminations = torch.zeros(s0.shape[0], horizon, dtype=torch.bool)
    return SegmentBatch(torch.stack(states, 1), torch.stack(actions, 1), torch.stack(rewards, 1), terminations)


def expected_return(agent: A2CAgent, gamma: float, steps: int = 100) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Discounted return of the stochastic policy from 256 fixed starts (8 rollouts each): mean, starts, per-start."""
    g = torch.Generator().manual_seed(123)
    s0 = torch.rand(256, 2, generator=g) * 2 - 1
    seg = linear_system_rollout(agent, s0.repeat(8, 1), steps, g)
    returns = (seg.rewards * gamma ** torch.arange(steps)).sum(1).reshape(8, 256).mean(0)
    return float(returns.mean()), s0, returns


def critic_error(agent: A2CAgent) -> float:
    """Mean squared error of V(s_0) against the current policy's Monte-Carlo value (300 steps)."""
    _, s0, returns = expected_return(agent, agent.config.gamma, steps=300)
    with torch.no_grad():
        return float((agent.critic(s0) - returns).square().mean())


def test_a2c_learns_a_linear_system() -> None:
    torch.manual_seed(0)
    agent = A2CAgent(2, 2, A2CConfig(hidden_sizes=(64, 64)))
    g = torch.Generator().manual_seed(1)
    return_before, error_before = expected_return(agent, 0.99)[0], critic_error(agent)
    for _ in range(120):
        s0 = torch.rand(128, 2, generator=g) * 2 - 1
        agent.update(linear_system_rollout(agent, s0, 10, g))
    return_after, error_after = expected_return(agent, 0.99)[0], critic_error(agent)
    # Discounted 100-step returns from the fixed starts: standing still -42, the initial std-1 random
    # walk about -68, the bang-bang controller a = clip(-s/0.1) -1.3. Seeds 0-4 end at -3.1 to -3.6
    # with critic errors ~2e4 -> 1.7-3.0.
    assert return_before < -60.0
    assert return_after > -6.0, (return_before, return_after)
    assert error_after < 1e-3 * error_before, (error_before, error_after)


def test_state_dict_round_trip_reproduces_actions_and_the_next_update() -> None:
    torch.manual_seed(0)
    config = A2CConfig(hidden_sizes=(32, 32))
    agent = A2CAgent(4, 2, config)
    for seed in range(3):
        agent.update(random_segments(16, 5, 4, 2, seed=seed))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(99)  # a different initialization, overwritten by the checkpoint
    restored = A2CAgent(4, 2, config)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    obs = np.random.default_rng(0).normal(size=(6, 4))
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), restored.act(obs, deterministic=True))
    torch.manual_seed(5)
    sampled = agent.act(obs)
    torch.manual_seed(5)
    np.testing.assert_array_equal(sampled, restored.act(obs))
    nxt = random_segments(16, 5, 4, 2, seed=10)
    assert agent.update(nxt) == restored.update(nxt)
    torch.testing.assert_close(_params(agent), _params(restored), rtol=0, atol=0)
    assert restored.num_updates == 4


def test_averaged_actor_is_the_ema_of_the_online_actor_and_evaluation_acts_with_it() -> None:
    decay = 0.8
    torch.manual_seed(0)
    agent = A2CAgent(4, 2, A2CConfig(hidden_sizes=(16, 16), actor_average=decay))
    torch.manual_seed(0)
    plain = A2CAgent(4, 2, A2CConfig(hidden_sizes=(16, 16)))
    expected: dict[str, torch.Tensor] = {}
    for seed in range(5):
        batch = random_segments(16, 5, 4, 2, seed=seed)
        torch.manual_seed(seed)
        agent.update(batch)
        torch.manual_seed(seed)
        plain.update(batch)
        online = {k: v.detach().clone() for k, v in agent.actor.state_dict().items()}
        # The first update copies the online actor, each later one moves decay -> 1 - decay towards it.
        expected = online if not expected else {k: decay * expected[k] + (1 - decay) * online[k] for k in online}
    averaged = agent.averaged_actor.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=0, atol=1e-6, msg=key)
    torch.testing.assert_close(_params(agent), _params(plain), rtol=0, atol=0)  # the average leaves the updates alone

    obs = np.random.default_rng(0).normal(size=(6, 4))
    with torch.no_grad():
        averaged_mean = agent.averaged_actor.module(torch.as_tensor(obs, dtype=torch.float32)).mean.clamp(-1, 1).numpy()
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), averaged_mean)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True, averaged=False), plain.act(obs, deterministic=True))
    assert np.abs(averaged_mean - plain.act(obs, deterministic=True)).max() > 1e-4
    torch.manual_seed(3)
    explored = agent.act(obs)
    torch.manual_seed(3)
    np.testing.assert_array_equal(explored, plain.act(obs))  # collection explores with the online actor

    restored = A2CAgent(4, 2, A2CConfig(hidden_sizes=(16, 16), actor_average=decay))
    restored.load_state_dict(agent.state_dict())
    np.testing.assert_array_equal(restored.act(obs, deterministic=True), averaged_mean)
    with pytest.raises(ValueError, match="no averaged actor"):
        restored.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="actor_average=0.995"):
        plain.act(obs, deterministic=True, averaged=True)
    with pytest.raises(ValueError, match="actor_average must be an EMA decay"):
        A2CConfig(actor_average=1.0)


# --- closed-loop transitions from a real Gymnasium vector env (MuJoCo; slow) ---------------------------


@pytest.mark.slow
def test_a2c_learns_halfcheetah_from_vector_env_transitions() -> None:
    """update_from_transitions on same-step-autoreset rollouts: 300 updates of 16 envs x 32 steps."""
    gym = pytest.importorskip("gymnasium")
    num_envs, steps, updates = 16, 32, 300
    envs = gym.make_vec(
        "HalfCheetah-v5",
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    space = envs.single_action_space
    torch.manual_seed(0)
    obs_dim, act_dim = envs.single_observation_space.shape[0], space.shape[0]
    agent = A2CAgent(obs_dim, act_dim, action_low=space.low, action_high=space.high)
    obs, _ = envs.reset(seed=0)
    episode_return, finished = np.zeros(num_envs), []
    for _ in range(updates):
        rollout: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
        for _ in range(steps):
            with torch.no_grad():
                action = agent.actor(torch.as_tensor(obs, dtype=torch.float32)).sample().numpy()
            next_obs, reward, terminated, truncated, info = envs.step(np.clip(action, space.low, space.high))
            true_next = next_obs.copy()  # same-step autoreset: the episode's last obs is in final_obs
            for i in np.flatnonzero(info.get("_final_obs", np.zeros(num_envs, bool))):
                true_next[i] = info["final_obs"][i]
            for key, value in zip(rollout, (obs, action, reward, true_next, terminated, truncated)):
                rollout[key].append(value)
            episode_return += reward
            for i in np.flatnonzero(terminated | truncated):
                finished.append(episode_return[i])
                episode_return[i] = 0.0
            obs = next_obs
        agent.update_from_transitions(*(np.stack(v) for v in rollout.values()))
    envs.close()
    # Measured (seed 0, 19 s): the first 16 episodes (std-1 policy) return -336, the last 16 +161.
    first, last = float(np.mean(finished[:num_envs])), float(np.mean(finished[-num_envs:]))
    assert last > 0.0 and last > first + 250.0, (first, last)


def test_clipped_surrogate_equals_a2c_on_the_first_step() -> None:
    # At the batch's first step the ratio is 1, so d min(r A, clip(r) A) = A d log pi: the same step as A2C.
    seg = random_segments(16, 5, 4, 2, seed=3)
    after = []
    for clip in (None, 0.2):
        torch.manual_seed(0)
        agent = A2CAgent(4, 2, A2CConfig(hidden_sizes=(32,), clip_ratio=clip))
        agent.update(seg)
        after.append(_params(agent))
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=1e-6)


def test_epochs_and_minibatches_take_that_many_steps_and_the_clip_bounds_the_change() -> None:
    seg = random_segments(64, 5, 4, 2, seed=4)
    seg.terminations[:] = False
    changes = {}
    for clip in (None, 0.1):
        torch.manual_seed(0)
        agent = A2CAgent(4, 2, A2CConfig(hidden_sizes=(32,), epochs=8, minibatches=4, clip_ratio=clip, lr_actor=3e-3))
        stats = agent.update(seg)
        steps = {int(s["step"]) for s in agent.actor_optim.state_dict()["state"].values()}
        assert steps == {32}  # 8 epochs x 4 minibatches, one Adam step each
        changes[clip] = stats["policy_change"]
    # Without the clip, 32 steps on one batch move log pi several times further than the clip allows.
    assert changes[0.1] < 0.5 * changes[None], changes
    assert A2CConfig.named("paper") == A2CConfig()
    assert A2CConfig.named("ppo", lr_actor=1e-4).clip_ratio == 0.2
    with pytest.raises(ValueError, match="choose one of"):
        A2CConfig.named("trpo")


@pytest.mark.parametrize("terminal_first", [False, True])
def test_update_critic_converges_to_the_segments_value_and_leaves_the_actor(terminal_first: bool) -> None:
    # Reward 1 per step. Without terminations V = 1 / (1 - gamma) = 2 everywhere (bootstrapped through the
    # critic itself: only `update` moves a target critic); when every segment terminates on its first
    # transition, V(s_0) = 1 and nothing after counts.
    torch.manual_seed(0)
    agent = A2CAgent(3, 1, A2CConfig(hidden_sizes=(32, 32), gamma=0.5, lr_critic=3e-3, target_ema=None))
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    seg = random_segments(64, 5, 3, 1, seed=2)
    seg.rewards[:] = 1.0
    seg.terminations[:] = False
    seg.terminations[:, 0] = terminal_first
    for _ in range(400):
        metrics = agent.update_critic(seg)
    expected = 1.0 if terminal_first else 2.0
    values = agent.critic(seg.states[:, 0]).detach()
    assert abs(float(values.mean()) - expected) < 0.05, float(values.mean())
    assert metrics["real_value_mse"] < 0.01
    for before, after in zip(actor_before, agent.actor.parameters()):
        assert torch.equal(before, after)


def test_update_critic_from_transitions_learns_the_return_to_each_episodes_real_end() -> None:
    # Two episodes laid end to end, reward 1 per step: one of 6 steps that terminates, one of 4 that is truncated.
    # With λ = 1 the targets are the Monte-Carlo returns to each episode's end (plus γ^k V(s_end) after the
    # truncation), so V(s_t) -> 1 + γ + ... over the steps left in the terminating episode; the actor is untouched.
    torch.manual_seed(0)
    gamma = 0.9
    agent = A2CAgent(2, 1, A2CConfig(hidden_sizes=(32, 32), gamma=gamma, gae_lambda=1.0, lr_critic=3e-3, target_ema=None, obs_norm="none"))
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    lengths, ends = (6, 4), ("terminated", "truncated")
    obs = torch.cat([torch.stack([torch.full((n + 1,), float(e)), torch.arange(n + 1.0)], -1) for e, n in enumerate(lengths)])
    keep = torch.ones(len(obs), dtype=torch.bool)
    keep[lengths[0]] = False  # s_6 of episode 0 is only a next observation
    rows = {"obs": obs[keep][:-1], "next_obs": torch.cat([obs[1:lengths[0] + 1], obs[lengths[0] + 2:]])}
    total = sum(lengths)
    terminated, truncated = torch.zeros(total, dtype=torch.bool), torch.zeros(total, dtype=torch.bool)
    terminated[lengths[0] - 1], truncated[-1] = True, True
    for _ in range(600):
        metrics = agent.update_critic_from_transitions(
            rows["obs"][:, None], torch.ones(total, 1), rows["next_obs"][:, None], terminated[:, None], truncated[:, None])
    values = agent.critic(rows["obs"][: lengths[0]])
    expected = torch.tensor([(1 - gamma ** (lengths[0] - t)) / (1 - gamma) for t in range(lengths[0])])
    assert torch.allclose(values, expected, atol=0.1), (values, expected)
    assert "real_value_mse" in metrics
    for before, after in zip(actor_before, agent.actor.parameters()):
        assert torch.equal(before, after)


def test_zoo_scheme_is_rl_zoos_hopper_ppo_and_the_cli_offers_every_scheme() -> None:
    from agd_envs.cli import build_parser
    from agents.a2c import A2C_PRESETS
    from agents.baselines import PPO_ZOO

    zoo, hyper = A2CConfig.named("zoo"), PPO_ZOO["Hopper"]
    assert (zoo.epochs, zoo.minibatches) == (hyper["n_epochs"], hyper["n_steps"] // hyper["batch_size"])
    assert (zoo.gamma, zoo.gae_lambda, zoo.clip_ratio) == (hyper["gamma"], hyper["gae_lambda"], hyper["clip_range"])
    assert zoo.lr_actor == zoo.lr_critic == pytest.approx(hyper["learning_rate"], rel=0.05)
    assert zoo.max_grad_norm_actor == zoo.max_grad_norm_critic == hyper["max_grad_norm"]
    assert zoo.entropy_weight == pytest.approx(hyper["ent_coef"], rel=0.01)
    assert zoo.target_ema is None and zoo.lr_log_std is None  # SB3: one online value net, one lr for every parameter
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions if a.dest == "agent")
    assert sorted(train.choices) == sorted(A2C_PRESETS)


def test_lr_scale_scales_every_learning_rate_and_zero_freezes_the_networks() -> None:
    seg = random_segments(32, 5, 4, 2, seed=5)
    agent = A2CAgent(4, 2, A2CConfig(hidden_sizes=(16,), lr_actor=1e-3, lr_log_std=4e-3, lr_critic=2e-3))
    agent.set_lr_scale(0.25)
    assert [g["lr"] for g in agent.actor_optim.param_groups] == pytest.approx([2.5e-4, 1e-3])
    assert [g["lr"] for g in agent.critic_optim.param_groups] == pytest.approx([5e-4])
    agent.set_lr_scale(0.0)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(seg)  # Adam with lr 0 takes zero-length steps (the critic's PopArt head still rescales)
    assert all(torch.equal(b, a) for b, a in zip(before, agent.actor.parameters()))
    agent.set_lr_scale(1.0)  # back to the configured values, not a product of the scales
    assert [g["lr"] for g in agent.actor_optim.param_groups] == pytest.approx([1e-3, 4e-3])
    with pytest.raises(ValueError, match=r"lr scale must be in \[0, 1\]"):
        agent.set_lr_scale(1.5)


def test_one_backward_pass_gives_actor_and_critic_exactly_their_own_gradients() -> None:
    # The minibatch step backpropagates actor loss + critic loss at once; with no shared parameter each network's
    # gradient must equal the gradient of its own loss alone (lr 0 and no clipping leave weights and gradients as computed).
    config = A2CConfig(hidden_sizes=(16,), clip_ratio=0.2, entropy_weight=0.01, max_grad_norm_actor=1e9, max_grad_norm_critic=1e9)
    agent = A2CAgent(4, 2, config)
    agent.update(random_segments(8, 5, 4, 2, seed=0))  # PopArt statistics and observation moments set
    agent.set_lr_scale(0.0)
    g = torch.Generator().manual_seed(1)
    obs, actions = torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)
    adv, returns = torch.randn(32, generator=g), torch.randn(32, generator=g) * 5
    with torch.no_grad():
        old_log_prob = agent.actor(obs).log_prob(actions) + 0.05 * torch.randn(32, generator=g)
    agent._minibatch_step(obs, actions, adv, old_log_prob, returns)
    critic_loss, _ = agent._critic_loss(obs, returns)
    critic_params = list(agent.critic.parameters())
    for got, want in zip(critic_params, torch.autograd.grad(critic_loss, critic_params)):
        torch.testing.assert_close(got.grad, want)
    dist = agent.actor(obs)
    ratio = torch.exp(dist.log_prob(actions) - old_log_prob)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    actor_loss = -surrogate.mean() - 0.01 * dist.entropy().mean()
    actor_params = list(agent.actor.parameters())
    for got, want in zip(actor_params, torch.autograd.grad(actor_loss, actor_params)):
        torch.testing.assert_close(got.grad, want)
