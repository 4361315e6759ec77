"""The guided sampler against closed forms: paper Props V.1/V.2 and the Figure 1 MDP (section IV).

The denoisers are exact posterior means of Gaussians / Gaussian mixtures (tests/analytic.py), so any
gap between samples and the target distribution comes from the guide approximation, the sampler's
discretisation, or Monte-Carlo error. Tolerances are set from those, with the measured numbers quoted.

Rewards are made nearly deterministic (variance 1e-4 in z-units) and independent of the states: the
advantage guides move only states (paper: guide the state components), so the state-only tilt
exp(sum_t A_t) with the r_t treated as constants is the target, and tilting the rewards themselves
would move them by at most 1e-4 * rew_std, far below the tolerances. Segments are H = 2, S = 2 with
s_0 inpainted; 10k samples give a Monte-Carlo standard error of ~0.01 on means and ~1.4% on variances.
"""

from __future__ import annotations

import functools

import pytest
import torch
from analytic import LinearCritic, MixtureDenoiser, gaussian_denoiser, make_normalizer, toy_task

from agd_envs.diffusion import cosine_schedule
from agd_envs.guides import advantages
from agd_envs.normalization import Normalizer
from agd_envs.batch import SegmentBatch
from agd_envs.sampling import Conditioning, sample
from agd_envs.segments import SegmentLayout, decode_segment, encode_segment

F64 = torch.float64
LAYOUT = SegmentLayout(obs_dim=2, act_dim=1, horizon=2)
NUM_STEPS = 100
N_SAMPLES = 10_000
W = torch.tensor([0.8, -0.5], dtype=F64)  # linear critic V(s) = W . s in real units
GAMMA = 0.5
REWARD_VAR = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run these many small-tensor steps single-threaded, then restore the setting.

    Measured on the 2-core dev machine under load: 7 s with one thread, 29-70 s with two (OpenMP
    workers on 10k x 8 tensors fight other processes for the cores).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _setup(correlated: bool) -> tuple[MixtureDenoiser, Conditioning, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, conditioning, free-entry mask, conditional mean and covariance of the free entries)."""
    g = torch.Generator().manual_seed(0)
    norm = make_normalizer(LAYOUT, g)
    mean = torch.randn(LAYOUT.x_dim, generator=g, dtype=F64)
    n_s = LAYOUT.num_state_entries
    cov = torch.zeros(LAYOUT.x_dim, LAYOUT.x_dim, dtype=F64)
    if correlated:
        root = 0.5 * torch.randn(n_s, n_s, generator=g, dtype=F64)
        c = root @ root.T + 0.3 * torch.eye(n_s, dtype=F64)
        d = c.diagonal().sqrt()
        cov[:n_s, :n_s] = 0.8 * c / d[:, None] / d[None, :]  # correlations up to 0.44, also with s_0
    else:
        cov[:n_s, :n_s] = torch.eye(n_s, dtype=F64)
    cov[n_s:, n_s:] = REWARD_VAR * torch.eye(LAYOUT.horizon, dtype=F64)
    model = gaussian_denoiser(LAYOUT, norm, cosine_schedule(NUM_STEPS), toy_task(2, 1), mean, cov)
    s0 = norm.unnormalize_states(mean[:2]) + 0.3
    cond = Conditioning.from_start(s0.expand(N_SAMPLES, 2).clone(), actions=torch.zeros(N_SAMPLES, 2, 1, dtype=F64))
    known = torch.zeros(1, LAYOUT.x_dim, dtype=F64)
    known[0, :2] = norm.normalize_states(s0)
    known_mask = LAYOUT.known_mask(torch.ones(1, dtype=torch.long))
    ((cond_mean, cond_cov, _),) = model.conditional(known, known_mask)
    return model, cond, ~known_mask[0], cond_mean[0], cond_cov


def _eag_gradient(norm: Normalizer, w: torch.Tensor, gamma: float) -> torch.Tensor:
    """grad of sum_t A_t w.r.t. the normalized entries, by hand.

    (gamma - 1) w std on s_1..s_{H-1}, gamma w std on s_H (s_0 is known, rewards are not moved).
    """
    grad = torch.zeros(LAYOUT.x_dim, dtype=F64)
    for t in range(1, LAYOUT.horizon + 1):
        grad[2 * t : 2 * t + 2] = (gamma - 1.0 if t < LAYOUT.horizon else gamma) * w * norm.obs_std
    return grad


def _z(model: MixtureDenoiser, out: SegmentBatch, free: torch.Tensor) -> torch.Tensor:
    """Normalized free entries ``n x F`` of the samples."""
    x = encode_segment(LAYOUT, model.normalizer, out.states, out.rewards)
    return x[:, free]


@functools.lru_cache(maxsize=None)
def _run(correlated: bool, guide: str, eta: float, steps: int, alpha: float = 1.0, mode: str = "x0",
         w_scale: float = 1.0, gamma: float = GAMMA) -> torch.Tensor:  # fmt: skip
    model, cond, free, _, _ = _setup(correlated)
    out = sample(model, cond, steps=steps, eta=eta, guide=guide, critic=LinearCritic(W * w_scale), alpha=alpha,
                 gamma=gamma, guide_mode=mode, generator=torch.Generator().manual_seed(1))  # fmt: skip
    return _z(model, out, free)


# DDPM (eta = 1, all 100 steps) and DDIM (eta = 0, 100 steps) at two guide scales: alpha f is the
# target exp(alpha sum A), whose mean is m + alpha C grad (C = I here), covariance unchanged.
@pytest.mark.parametrize(("eta", "alpha"), [(1.0, 1.0), (0.0, 2.0)], ids=["ddpm-alpha1", "ddim-alpha2"])
def test_eag_samples_the_tilted_isotropic_gaussian(eta: float, alpha: float) -> None:
    model, _, free, mean, cov = _setup(correlated=False)
    guided, plain = _run(False, "eag", eta, NUM_STEPS, alpha), _run(False, "none", eta, NUM_STEPS)
    target = mean + alpha * cov @ _eag_gradient(model.normalizer, W, GAMMA)[free]
    assert (target - mean).abs().max() > 0.5  # the tilt is large compared with the tolerance
    # Measured: mean error 0.021 (DDPM) / 0.010 (DDIM) for tilts of 0.59 / 1.17 -- Monte-Carlo level.
    assert (guided.mean(0) - target).abs().max() < 0.05
    # Measured: state variances 4.6% / 3.9% low -- the sampler's own discretisation bias (identical without the
    # guide: with a Gaussian denoiser and linear log f the guided sampler is the plain one plus a constant).
    assert ((guided.var(0) / cov.diagonal())[:4] - 1).abs().max() < 0.10
    assert (guided - plain).std(0).max() < 1e-8


def test_dps_samples_the_tilted_correlated_gaussian() -> None:
    """Correlated C: the Tweedie covariance (guide_mode="dps") is exact; the (1 - ab) I guess is not."""
    model, _, free, mean, cov = _setup(correlated=True)
    grad = _eag_gradient(model.normalizer, W, GAMMA)[free]
    target = mean + cov @ grad
    guided = _run(True, "eag", 1.0, NUM_STEPS, mode="dps")
    # Measured: mean error 0.016, variances within 4.1%, covariances within 0.03.
    assert (guided.mean(0) - target).abs().max() < 0.05
    assert ((guided.var(0) / cov.diagonal())[:4] - 1).abs().max() < 0.10
    assert (torch.cov(guided.T) - cov)[:4, :4].abs().max() < 0.05
    # For the record, the x0-mode guide on this correlated C misses the mean by 0.145 (measured).


def test_sag_matches_importance_weighted_exact_samples() -> None:
    """SAG (nonlinear log f): compare with exact draws from p weighted by prod_t sigmoid(A_t)."""
    model, _, free, mean, _ = _setup(correlated=False)
    w_scale = 0.5  # A_0 ~ 2.6 +- 0.4, A_1 ~ -1.8 +- 0.9: sigmoid(-A) spans 0.05..0.97, clearly nonlinear
    norm = model.normalizer
    known = torch.zeros(LAYOUT.x_dim, dtype=F64)
    known[:2] = norm.normalize_states(norm.unnormalize_states(model.means[0, :2]) + 0.3)
    exact = model.exact_samples(known, ~free, 200_000, torch.Generator().manual_seed(5))
    states, rewards = decode_segment(LAYOUT, norm, exact)
    adv = advantages(states, rewards, LinearCritic(W * w_scale), torch.zeros_like(rewards, dtype=torch.bool), GAMMA)
    weights = torch.sigmoid(adv).prod(-1)
    weights = weights / weights.sum()
    target_mean = (weights[:, None] * exact[:, free]).sum(0)
    target_var = (weights[:, None] * (exact[:, free] - target_mean).square()).sum(0)

    guided = _run(False, "sag", 1.0, NUM_STEPS, w_scale=w_scale)
    shift = (target_mean - mean).abs().max()
    error = (guided.mean(0) - target_mean).abs().max()
    # Measured: shift 0.41, error 0.047 (the x0-space guide evaluates the gradient at the posterior mean,
    # an approximation once log f is nonlinear), variances within 4.8% (mostly the sampler's bias, as above).
    assert shift > 0.3 and error < 0.1 and error < shift / 4
    assert ((guided.var(0) / target_var)[:4] - 1).abs().max() < 0.15


def test_eag_tilts_further_than_sag() -> None:
    """Same alpha: EAG raises E[sum_t A_t] more than SAG, which raises it above the unguided sampler.

    For one transition this is exact: exp(A) / sigmoid(A) = 1 + e^A increases in A, so the EAG law is
    the SAG law further tilted towards high A. With gamma = 0 the transitions share no free state, so it
    holds for the sum. (With shared states it need not: at gamma = 0.5, W/2 the exact tilts give
    E_SAG[sum A] = 1.18 > E_EAG[sum A] = 1.16 -- SAG stops rewarding transitions already above ~0 and
    pushes the negative ones harder.)
    """
    model, _, free, _, _ = _setup(correlated=False)
    norm, critic = model.normalizer, LinearCritic(W)

    def mean_sum_adv(z: torch.Tensor) -> float:
        x = torch.zeros(z.shape[0], LAYOUT.x_dim, dtype=F64)
        x[:, free] = z
        x[:, :2] = norm.normalize_states(norm.unnormalize_states(model.means[0, :2]) + 0.3)  # the known s_0
        states, rewards = decode_segment(LAYOUT, norm, x)
        adv = advantages(states, rewards, critic, torch.zeros_like(rewards, dtype=torch.bool), 0.0)
        return float(adv.sum(-1).mean())

    plain, sag, eag = (mean_sum_adv(_run(False, g, 0.0, 20, gamma=0.0)) for g in ("none", "sag", "eag"))
    # Measured (DDIM, 20 steps): -2.25, 0.18, 0.41; exact tilts: -2.26, -0.20, 0.39. Standard errors 0.015.
    assert sag - plain > 1.0 and eag - sag > 0.2


# --------------------------------------------------------------------------------------------------
# Figure 1 (paper section IV): reward guidance is myopic, advantage guidance is not.

R, R_BAR, R_STAR = 1.0, 3.0, 10.0
# state -> {action: (next state, reward)}. tau1 = s1 -a1-> s2 -a1-> s3 -a1-> s4 (rewards r, r_bar, r);
# tau2 = s1 -a2-> s6 -a1-> s7 -a1-> s8 (r, r, r); after the window s4 -> s5 pays r, s8 -> s9 pays r* = 10;
# s5 and s9 are absorbing. Every state but s1 has one action (pi(a1|s) = 1), so A = 0 there.
MDP: dict[int, dict[str, tuple[int, float]]] = {
    1: {"a1": (2, R), "a2": (6, R)},
    2: {"a1": (3, R_BAR)},
    3: {"a1": (4, R)},
    4: {"a1": (5, R)},
    5: {"a1": (5, 0.0)},
    6: {"a1": (7, R)},
    7: {"a1": (8, R)},
    8: {"a1": (9, R_STAR)},
    9: {"a1": (9, 0.0)},
}
TAU1, TAU2 = [1, 2, 3, 4], [1, 6, 7, 8]


def _value_iteration(iterations: int = 4, gamma: float = 1.0) -> tuple[dict[int, float], dict[tuple[int, str], float]]:
    """(V_k, A_k(s, a) = Q_k(s, a) - V_k(s)) after k Bellman-optimality backups from V_0 = 0."""
    values = {s: 0.0 for s in MDP}
    for _ in range(iterations):
        q = {(s, a): r + gamma * values[s2] for s, acts in MDP.items() for a, (s2, r) in acts.items()}
        new = {s: max(q[(s, a)] for a in MDP[s]) for s in MDP}
        adv = {(s, a): q[(s, a)] - new[s] for (s, a) in q}
        values = new
    return values, adv


def test_figure1_mdp_advantages() -> None:
    values, adv = _value_iteration()
    assert adv[(1, "a1")] == -7.0
    assert all(a == 0.0 for key, a in adv.items() if key != (1, "a1"))
    # The myopic window sum prefers tau1 (5 > 3); the advantage along tau2 is higher (0 > -7).
    assert R + R_BAR + R > 3 * R
    for tau, expected in ((TAU1, -7.0), (TAU2, 0.0)):
        rewards = [MDP[s][a][1] for s, a in zip(tau, ["a1" if tau is TAU1 else "a2", "a1", "a1"])]
        one_step = [r + values[s2] - values[s] for r, s, s2 in zip(rewards, tau[:-1], tau[1:])]
        assert sum(one_step) == expected
    # (Policy evaluation of pi instead of optimality backups gives A(s1, a1) = -3.5 = -A(s1, a2): same ranking.)


@functools.lru_cache(maxsize=None)
def _figure1_choices(guide: str, mode: str) -> float:
    """Fraction of 4000 sampled segments nearest to tau2 (one-hot states, two-component mixture)."""
    s, h = 9, 3
    layout = SegmentLayout(obs_dim=s, act_dim=1, horizon=h)
    norm = Normalizer(s, 1).double()
    with torch.no_grad():
        norm.obs_mean.fill_(0.2), norm.obs_std.fill_(0.4), norm.rew_mean.fill_(2.0), norm.rew_std.fill_(1.0)
    eye = torch.eye(s, dtype=F64)

    def segment(tau: list[int], first_action: str) -> torch.Tensor:
        rewards = [MDP[st][a][1] for st, a in zip(tau, [first_action, "a1", "a1"])]
        states = torch.stack([eye[i - 1] for i in tau])[None]
        return encode_segment(layout, norm, states, torch.tensor([rewards], dtype=F64))[0]

    means = torch.stack([segment(TAU1, "a1"), segment(TAU2, "a2")])
    covs = (0.1**2 * torch.eye(layout.x_dim, dtype=F64)).expand(2, -1, -1)  # small: two near-point masses
    weights = torch.tensor([0.5, 0.5], dtype=F64)  # pi(a1 | s1) = pi(a2 | s1) = 0.5
    model = MixtureDenoiser(layout, norm, cosine_schedule(NUM_STEPS), toy_task(s, 1), means, covs, weights)
    values, _ = _value_iteration()
    critic = LinearCritic(torch.tensor([values[i] for i in range(1, s + 1)], dtype=F64))  # V(onehot(s)) = V_4(s)
    n = 4000
    cond = Conditioning.from_start(eye[0].expand(n, s).clone(), actions=torch.zeros(n, h, 1, dtype=F64))
    out = sample(model, cond, steps=20, guide=guide, critic=critic, gamma=1.0, alpha=1.0, guide_mode=mode,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    x = encode_segment(layout, norm, out.states, out.rewards)
    dist = torch.cdist(x, means)
    assert dist.min(1).values.max() < 2.0  # every sample is near one of the two trajectories
    return float((dist[:, 1] < dist[:, 0]).double().mean())


def test_figure1_reward_guide_is_myopic_advantage_guides_are_not() -> None:
    """x0 guide (default), DDIM 20 steps, 4000 samples (binomial s.e. 0.008 at p = 0.5).

    Measured P(tau2): none 0.505, reward 0.454, eag 0.674, sag 0.692. The direction is the point; the
    size is smaller than the Bayes tilt because (1 - ab) I under-estimates the between-trajectory
    covariance of a two-point mixture (see the dps test below, which reaches the Bayes numbers).
    """
    plain, reward, eag, sag = (_figure1_choices(g, "x0") for g in ("none", "reward", "eag", "sag"))
    assert abs(plain - 0.5) < 0.04
    assert (1 - reward) - (1 - plain) > 0.03  # reward guidance picks tau1 (window sum 5 > 3) more often
    assert eag - plain > 0.1 and sag - plain > 0.1  # advantage guidance picks tau2 (sum A 0 > -7) more often


def test_figure1_dps_reaches_the_bayes_tilt() -> None:
    """With the Tweedie covariance the choice frequencies match p(tau) f(tau) for the two point masses:
    reward 1/(1 + e^2) = 0.119, eag 1/(1 + e^-7) = 0.9991, sag 1/(1 + sigmoid(-7)/sigmoid(0)) = 0.9982
    (measured 0.128, 0.999, 0.998; binomial s.e. <= 0.005)."""
    sig = torch.sigmoid
    bayes = {
        "none": 0.5,
        "reward": 1 / (1 + torch.exp(torch.tensor(2.0))).item(),
        "eag": 1 / (1 + torch.exp(torch.tensor(-7.0))).item(),
        "sag": 1 / (1 + (sig(torch.tensor(-7.0)) / sig(torch.tensor(0.0))).item()),
    }
    for guide, p in bayes.items():
        assert abs(_figure1_choices(guide, "dps") - p) < 0.03, guide
