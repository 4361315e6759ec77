"""Where a dream loses the learner's signal: imagined segments against the real simulator's, same s_0 and actions.

For a trained run (``agd train --out RUN``), from ``--starts`` start states drawn from the run's own
dataset, the run's world model imagines joint segments with the run's policy and guide; the oracle
(agd_envs/oracle.py, the real MuJoCo simulator) then replays exactly the imagined actions from the same
s_0. Reported, per step t and over the H-step segment:

- state error: RMSE of imagined vs real s_t in z-units of the dataset's statistics;
- reward error: mean |r_imagined - r_real| and the real reward's std (what an error is small against);
- return: mean H-step return imagined vs real, and their correlation across segments (does the dream
  rank segments as reality does?);
- terminations: the fraction of segments that end in a termination within H, in the dream and in the
  real replay. The replay runs the dream's actions open loop, so it falls more often than the policy does in
  reality (Hopper at 100k: 0.2-5% against 0-0.05% in closed loop, docs/results.md); with ``--margins`` the
  closed-loop rate (an independent real batch under the policy) is reported beside it;
- advantages: correlation of A_t from the imagined segment with A_t from the real one (the run's critic
  on both), how often their signs agree, and their spread in each (what a value error is large against);
- GAE(λ) advantages as the agent's update computes them (from its target critic): their correlation;
- the critic's value of each s_t, dream minus real, on segments that end in neither (where a guide's tilt
  lands: EAG's state gradient is gamma grad V(s_H) + (gamma - 1) sum_{0<t<H} grad V(s_t), agd_envs/guides.py);
- the policy gradient: cosine between the actor's A2C gradient (GAE advantages) on the imagined batch
  and on the real replay of it (1: the dream points the update where reality does; 0: no information), and
  beside it the same cosine between the real replay and an independent real batch (the policy in the simulator
  from other start states): what one batch's gradient agrees with when the model is perfect; each also with the
  advantages clipped to their median ± 3 robust standard deviations first (``*_clip3``, ``A2CConfig.advantage_clip``),
  with the GAE advantages' rank correlation and top-1% share of their sum of squares, and the state error at H of
  the segments that hold that top 1% against the rest's;
- the first action's advantage (``--first-action``): A_0 of each dreamed segment against A_0 of the simulator from
  the same s_0 and a_0 with the policy acting closed loop after it (the advantage the learner estimates), from the
  first k steps of each (k = 1, 3, 5, H); beside it, the correlation between two such closed-loop rollouts with
  different policy noise, the most any estimate from one rollout can reach; each also as a rank (Spearman)
  correlation, and each A_0's share of its sum of squares in its top 1% (0.09 for a Gaussian): is the signal lost in
  a few runaway segments;
- falls (``--margins``): the GAE advantages' spread on the real replay with and without the segments that fall
  and on the independent closed-loop batch, and for each margin the fraction of dreamed segments that
  ``Task.terminated(s, margin)`` ends and how many of the replay's falls are among them.

Run (repo root):
    python3 benchmarks/oracle_gap.py RUN [RUN ...] --name oracle_gap_halfcheetah
    python3 benchmarks/oracle_gap.py RUN --fit-updates 2000 8000 20000 --name oracle_gap_refit   # training length
    python3 benchmarks/oracle_gap.py RUN --fit-updates 8000 --set delta_states=true anchor_states=false   # a variant
    python3 benchmarks/oracle_gap.py RUN --fit-updates 12500 --recent-fractions 0 0.5 --run-starts --first-action   # recent model batches
    python3 benchmarks/oracle_gap.py RUN --mlp-updates 7000   # beside it, a one-step MLP fit on the run's data
    python3 benchmarks/oracle_gap.py RUN --alphas 0 0.1 0.3 1 --name oracle_gap_alpha   # the run's dream under each EAG scale
    python3 benchmarks/oracle_gap.py RUN --alphas 0 0.1 --guides eag sag reward   # ... and under each guide
    python3 benchmarks/oracle_gap.py RUN --alphas 0.1 --min-guide-noise 0.01 0.1 0.5   # guide at fewer denoising steps
    python3 benchmarks/oracle_gap.py RUN --alphas 0.1 --max-shift 3 0.3 0.1   # the guide's shift clipped tighter
    python3 benchmarks/oracle_gap.py RUN --run-starts --margins 0 0.1 0.15 0.2   # starts as the run's trainer draws them; near-falls
    python3 benchmarks/oracle_gap.py RUN --run-starts --first-action   # the advantage the learner estimates, dream against closed loop
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from agd_envs.batch import SegmentBatch
from agd_envs.cli import parse_field_value
from agd_envs.datasets import EpisodeDataset
from agd_envs.dynamics_prior import DynamicsPrior
from agd_envs.guides import advantages, call_critic
from agd_envs.normalization import Normalizer
from agd_envs.oracle import OracleWorldModel
from agd_envs.sampling import DEFAULT_MAX_SHIFT, DEFAULT_MIN_GUIDE_NOISE, imagine
from agd_envs.tasks import Task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig
from agents.a2c import A2CAgent, clip_to_robust_range
from agents.returns import alive_mask
from agents.recent import RecentMix, recent_rows
from agents.trainer import agent_from_run

try:
    from benchmarks._common import write_result
    from benchmarks.prior_capacity import new_prior, train_prior
except ImportError:  # run as a script from the repo root
    from _common import write_result
    from prior_capacity import new_prior, train_prior


def replay(oracle: OracleWorldModel, s0: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The real simulator from ``s0`` ``B x S`` under fixed actions ``B x H x A`` -> states, rewards, terminations."""
    states, rewards, done = [s0], [], []
    for t in range(actions.shape[1]):
        next_obs, reward, terminated = oracle.step(states[-1], actions[:, t])
        states.append(next_obs)
        rewards.append(reward)
        done.append(terminated)
    terminations = torch.cumsum(torch.stack(done, 1).long(), 1) > 0
    return torch.stack(states, 1), torch.stack(rewards, 1), terminations


ADVANTAGE_CLIP = 3.0
"""Robust standard deviations of the clipped measures (``*_clip3``): ``A2CConfig.advantage_clip`` at 3."""


def policy_gradient(agent: A2CAgent, states: Tensor, actions: Tensor, adv: Tensor, valid: Tensor,
                    clip: float | None = None) -> Tensor:
    """The actor's flattened gradient of mean(log pi(a|s) * normalized A) over valid transitions (A first clipped to
    its median ± ``clip`` robust standard deviations, as ``A2CConfig.advantage_clip`` does)."""
    a = adv[valid] if clip is None else clip_to_robust_range(adv[valid], clip)
    a = (a - a.mean()) / (a.std() + 1e-8)
    agent.actor.zero_grad(set_to_none=True)
    loss = -(agent.actor(states[:, :-1][valid]).log_prob(actions[valid]) * a).mean()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in agent.actor.parameters() if p.grad is not None])


def gae_advantages(agent: A2CAgent, states: Tensor, rewards: Tensor, terminations: Tensor) -> Tensor:
    """``B x H`` GAE(λ) advantages exactly as the agent's update computes them (segments end in a truncation)."""
    tm = lambda x: rearrange(x, "b h ... -> h b ...")  # noqa: E731
    adv, _ = agent.value_targets(tm(states[:, :-1]), tm(rewards), tm(states[:, 1:]), tm(terminations), tm(terminations))
    return rearrange(adv, "h b -> b h")


def corr(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two flat tensors."""
    return float(np.corrcoef(x.double().numpy(), y.double().numpy())[0, 1])


def rank_corr(x: Tensor, y: Tensor) -> float:
    """Spearman correlation of two flat tensors: Pearson of their ranks, blind to how far outliers lie."""
    rank = lambda v: v.double().argsort().argsort().double()  # noqa: E731
    return corr(rank(x), rank(y))


def tail_share(x: Tensor, fraction: float = 0.01) -> float:
    """Share of the centred sum of squares that the largest ``fraction`` of |x - mean| carry (0.01 for Gaussian: 0.09)."""
    sq = (x.double() - x.double().mean()).square().sort(descending=True).values
    return float(sq[: max(1, int(round(fraction * len(sq))))].sum() / sq.sum())


def outlier_drift(adv: Tensor, valid: Tensor, drift: Tensor, fraction: float = 0.01) -> dict[str, float]:
    """Mean ``drift`` (``B``, e.g. the state error at H) of the segments holding the top ``fraction`` of |adv - mean|
    (``B x H``, over ``valid``) against the other segments."""
    deviation = torch.where(valid, (adv - adv[valid].mean()).abs(), -1.0)
    top = deviation.flatten().topk(max(1, int(round(fraction * int(valid.sum()))))).indices // adv.shape[1]
    chosen = torch.zeros(len(drift), dtype=torch.bool)
    chosen[top] = True
    return {"top1pct": float(drift[chosen].mean()), "rest": float(drift[~chosen].mean()), "segments": int(chosen.sum())}


def closed_loop(agent: A2CAgent, other: SegmentBatch, reference: Tensor, reference_clipped: Tensor) -> dict[str, float]:
    """The real closed-loop batch ``other``: its fall rate, its GAE advantages' spread, and the cosine of its policy
    gradient with ``reference`` (another real batch's; and clipped, ``ADVANTAGE_CLIP``, with ``reference_clipped``)."""
    valid = alive_mask(other.terminations)
    with torch.no_grad():
        gae = gae_advantages(agent, other.states, other.rewards, other.terminations)
    grad = policy_gradient(agent, other.states, other.actions, gae, valid)
    clipped = policy_gradient(agent, other.states, other.actions, gae, valid, clip=ADVANTAGE_CLIP)
    return {"policy_gradient_cosine_independent_real": float(torch.nn.functional.cosine_similarity(grad, reference, dim=0)),
            "policy_gradient_cosine_independent_real_clip3": float(torch.nn.functional.cosine_similarity(clipped, reference_clipped, dim=0)),
            "terminated_fraction_closed_loop_real": float(other.terminations[:, -1].double().mean()),
            "gae_advantage_std_closed_loop_real": float(gae[valid].std())}


def after_first_action(oracle: OracleWorldModel, s0: Tensor, a0: Tensor, actor: object, horizon: int,
                       generator: torch.Generator) -> SegmentBatch:
    """The simulator from ``s0`` under the fixed first actions ``a0``, then ``actor`` closed loop for ``horizon`` - 1 steps."""
    s1, r0, d0 = oracle.step(s0, a0)
    rest = oracle.rollout(s1, actor, horizon - 1, generator)
    return SegmentBatch(states=torch.cat([s0[:, None], rest.states], 1), actions=torch.cat([a0[:, None], rest.actions], 1),
                        rewards=torch.cat([r0[:, None], torch.where(d0[:, None], 0.0, rest.rewards)], 1),
                        terminations=torch.cat([d0[:, None], rest.terminations | d0[:, None]], 1))


def first_action_advantages(agent: A2CAgent, oracle: OracleWorldModel, dream: SegmentBatch, seed: int) -> dict[str, dict[str, float]]:
    """Correlation of the dream's A_0 with the simulator's (same s_0 and a_0, then the policy closed loop), and of two
    closed-loop rollouts' with each other, from the first k steps of each segment."""
    horizon = dream.actions.shape[1]
    reals = [after_first_action(oracle, dream.states[:, 0], dream.actions[:, 0], agent.actor, horizon,
                                torch.Generator().manual_seed(seed + 1000 * i)) for i in (1, 2)]
    out = {}
    for k in sorted({1, 3, 5, horizon} & set(range(1, horizon + 1))):
        with torch.no_grad():
            a0 = [gae_advantages(agent, x.states[:, :k + 1], x.rewards[:, :k], x.terminations[:, :k])[:, 0] for x in (dream, *reals)]
        clip = [clip_to_robust_range(a, ADVANTAGE_CLIP) for a in a0]
        out[str(k)] = {"dream_vs_real": corr(a0[0], a0[1]), "real_vs_real": corr(a0[1], a0[2]),
                       "dream_vs_real_clip3": corr(clip[0], clip[1]), "real_vs_real_clip3": corr(clip[1], clip[2]),
                       "dream_vs_real_rank": rank_corr(a0[0], a0[1]), "real_vs_real_rank": rank_corr(a0[1], a0[2]),
                       "dream_top1pct_share": tail_share(a0[0]), "real_top1pct_share": tail_share(a0[1])}
    return out


def near_falls(task: Task, dream: SegmentBatch, real: SegmentBatch, margins: list[float]) -> list[dict[str, float]]:
    """For each margin: the fraction of dreamed segments ``task.terminated(s, margin)`` ends, and of the real
    replay's falls how many are among them."""
    fell = real.terminations[:, -1]
    rows = []
    for margin in margins:
        flagged = task.terminated(dream.states[:, 1:], margin).any(1)
        rows.append({"margin": margin, "dream_fraction": float(flagged.double().mean()), "real_falls": int(fell.sum()),
                     "real_falls_flagged": int((flagged & fell).sum())})
    return rows


def gap(agent: A2CAgent, guess: SegmentBatch, real: SegmentBatch, scale: Tensor, other: SegmentBatch | None = None) -> dict[str, object]:
    """The module docstring's measures of ``guess`` against the ``real`` replay of its actions (with ``other``, an
    independent real batch, also the cosine of its policy gradient with the replay's)."""
    actions = guess.actions
    valid = alive_mask(real.terminations) & alive_mask(guess.terminations)
    state_rmse = ((guess.states - real.states) / scale).square().mean(-1).sqrt()  # B x (H+1)
    with torch.no_grad():
        adv = [advantages(x.states, x.rewards, agent.critic, x.terminations, agent.config.gamma) for x in (guess, real)]
        gaes = [gae_advantages(agent, x.states, x.rewards, x.terminations) for x in (guess, real)]
    grads = [policy_gradient(agent, x.states, actions, g, valid) for x, g in zip((guess, real), gaes)]
    clipped = [policy_gradient(agent, x.states, actions, g, valid, clip=ADVANTAGE_CLIP) for x, g in zip((guess, real), gaes)]
    returns = [torch.where(valid, x.rewards, 0.0).sum(1) for x in (guess, real)]
    whole = ~(guess.terminations[:, -1] | real.terminations[:, -1])
    with torch.no_grad():
        values = [call_critic(agent.critic, x.states)[whole] for x in (guess, real)]
    return {
        "state_rmse_z_per_step": [round(float(v), 4) for v in state_rmse.mean(0)[1:]],
        "reward_mae_per_step": [round(float(v), 4) for v in (guess.rewards - real.rewards).abs().mean(0)],
        "reward_std_real": float(real.rewards[valid].std()),
        "return_mean": {"dream": float(returns[0].mean()), "real": float(returns[1].mean())},
        "return_corr": corr(*returns),
        "terminated_fraction": {"dream": float(guess.terminations[:, -1].double().mean()), "real": float(real.terminations[:, -1].double().mean())},
        "advantage_mean": {"dream": float(adv[0][valid].mean()), "real": float(adv[1][valid].mean())},
        "advantage_std": {"dream": float(adv[0][valid].std()), "real": float(adv[1][valid].std())},
        "advantage_corr": corr(adv[0][valid], adv[1][valid]),
        "advantage_sign_agreement": float(((adv[0] > 0) == (adv[1] > 0))[valid].double().mean()),
        "gae_advantage_corr": corr(gaes[0][valid], gaes[1][valid]),
        "gae_advantage_corr_clip3": corr(*(clip_to_robust_range(g[valid], ADVANTAGE_CLIP) for g in gaes)),
        "gae_advantage_rank_corr": rank_corr(gaes[0][valid], gaes[1][valid]),
        "gae_advantage_top1pct_share": {"dream": tail_share(gaes[0][valid]), "real": tail_share(gaes[1][valid])},
        "state_rmse_z_at_h_outlier_segments": outlier_drift(gaes[0], valid, state_rmse[:, -1]),
        "policy_gradient_cosine": float(torch.nn.functional.cosine_similarity(*grads, dim=0)),
        "policy_gradient_cosine_clip3": float(torch.nn.functional.cosine_similarity(*clipped, dim=0)),
        **({} if other is None else closed_loop(agent, other, grads[1], clipped[1])),
        "gae_advantage_std": {"dream": float(gaes[0][valid].std()), "real": float(gaes[1][valid].std()),
                              "real_without_falls": float(gaes[1][valid & ~real.terminations[:, -1:]].std())},
        "value_bias_per_step": [round(float(v), 3) for v in (values[0] - values[1]).mean(0)],
        "value_real_per_step": [round(float(v), 3) for v in values[1].mean(0)],
    }


def fit_one_step_mlp(data: EpisodeDataset, task: Task, horizon: int, updates: int, seed: int) -> tuple[DynamicsPrior, Normalizer]:
    """The reference one-step model: a ``DynamicsPrior`` alone, ``updates`` Adam steps on the dataset
    (benchmarks/prior_capacity.py's ``new_prior`` and ``train_prior``, 64 segments per step)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    prior, norm = new_prior(data, task, horizon, generator=gen)
    train_prior(prior, norm, data, task, torch.optim.Adam(prior.parameters(), lr=1e-3), updates, gen)
    return prior, norm


@torch.no_grad()
def mlp_segments(prior: DynamicsPrior, norm: Normalizer, task: Task, s0: Tensor, actions: Tensor) -> SegmentBatch:
    """The one-step model rolled out from ``s0`` under (clipped) ``actions``, rewards with their control term."""
    executed = actions.clamp(task.action_low, task.action_high)
    z, r = prior.rollout(norm.normalize_states(s0), norm.normalize_actions(executed), torch.ones(actions.shape[:2], dtype=torch.bool))
    states = norm.unnormalize_states(z)
    rewards = norm.unnormalize_rewards(r) + task.control_reward(executed)
    done = torch.cumsum(task.terminated(states[:, 1:]).long(), 1) > 0
    return SegmentBatch(states=states, actions=actions, rewards=rewards, terminations=done)


def measure(run: Path, starts: int, seed: int, model: WorldModel | None = None, mlp_updates: int = 0,
            alpha: float | None = None, min_guide_noise: float = DEFAULT_MIN_GUIDE_NOISE,
            max_shift: float = DEFAULT_MAX_SHIFT, guide: str = "eag", guide_on: str = "states", run_starts: bool = False,
            margins: list[float] | None = None, first_action: bool = False) -> dict[str, object]:
    """The gap between the run's dream (or ``model``'s) and the real simulator (see the module docstring);
    with ``mlp_updates``, also a one-step MLP's (``fit_one_step_mlp``) under the same actions, as ``"one_step_mlp"``;
    with ``alpha``, the dream is guided by ``guide`` at that scale (0: unguided) instead of the run's guide; the guide acts
    only at denoising steps with 1 - alpha_bar_t >= ``min_guide_noise``, its shift clipped to +-``max_shift`` z, and moves
    ``guide_on`` (``states``, or ``actions``: the policy's sampling noise); ``run_starts``: start states from the run's
    ``start_window`` as its trainer draws them (else the whole dataset); ``margins``: the near-fall measures
    (``near_falls``) and an independent real batch for the policy gradient's noise floor; ``first_action``: the first
    action's advantage in the dream against the simulator's (``first_action_advantages``)."""
    config, agent = agent_from_run(run)
    if alpha is not None:
        config.guide, config.alpha = (guide, alpha) if alpha > 0 else ("none", None)
    model = model if model is not None else WorldModel.load(run / "checkpoint" / "model")
    data = EpisodeDataset.open(run / "data", task=config.task)
    gen = torch.Generator().manual_seed(seed)
    window = config.start_window if run_starts else None
    pool = 2 * starts if margins is not None else starts
    rows = None if window is None else recent_rows(data, model.config.horizon, window, pool, gen)
    s0_all = data.sample_segments(pool, model.config.horizon, generator=gen, indices=rows).states[:, 0]
    s0 = s0_all[:starts]
    critic = agent.critic if config.guide in ("eag", "sag") else None
    dream: SegmentBatch = imagine(model, s0, agent.actor, critic, guide=config.guide, alpha=config.alpha, generator=gen,
                                  min_guide_noise=min_guide_noise, max_shift=max_shift, guide_on=guide_on)
    oracle = OracleWorldModel(config.task)
    states, rewards, done = replay(oracle, s0, dream.actions)
    real = SegmentBatch(states=states, actions=dream.actions, rewards=rewards, terminations=done)
    other = None if margins is None else imagine(oracle, s0_all[starts:], agent.actor, None, guide="none", generator=gen)
    first = first_action_advantages(agent, oracle, dream, seed) if first_action else None
    oracle.close()
    scale = torch.as_tensor(np.asarray(data.statistics().obs_std), dtype=torch.float32)
    row: dict[str, object] = {"run": str(run), "task": config.task, "guide": config.guide, "alpha": config.alpha,
                              "guide_on": guide_on, "start_window": window, "min_guide_noise": min_guide_noise, "max_shift": max_shift, "dataset_steps": int(data.num_steps),
                              "world_model": {k: v for k, v in model.config.to_dict().items() if k in ("dynamics_prior", "delta_states", "anchor_states")}}  # fmt: skip
    row |= gap(agent, dream, real, scale, other)
    if margins is not None:
        row["near_falls"] = near_falls(model.task, dream, real, margins)
    if first:
        row["first_action_advantage_corr"] = first
    row["action_saturation"] = float((dream.actions.abs() >= 1.0).double().mean())
    if mlp_updates:
        start = time.perf_counter()
        prior, norm = fit_one_step_mlp(data, model.task, model.config.horizon, mlp_updates, seed)
        seconds = time.perf_counter() - start
        guess = mlp_segments(prior, norm, model.task, s0, dream.actions)
        row["one_step_mlp"] = {"updates": mlp_updates, "fit_seconds": seconds} | gap(agent, guess, real, scale)
    return row


def refits(run: Path, updates: list[int], overrides: dict[str, int], starts: int, seed: int, recent: float = 0.0,
           **options: Any) -> list[dict[str, object]]:
    """A fresh ``cpu``-preset model (with ``overrides``) fit on the run's data, ``recent`` of each batch from the run's
    start window (agents.recent.RecentMix), measured (``measure``'s ``options``) after each count of ``updates``."""
    config, _ = agent_from_run(run)
    data = EpisodeDataset.open(run / "data", task=config.task)
    if recent and config.start_window is None:
        raise ValueError(f"{run}: --recent-fractions needs the run's start_window (it has none)")
    source = RecentMix(data, config.start_window, recent) if recent else data
    torch.manual_seed(seed)
    model = WorldModel(WorldModelConfig.preset("cpu", config.task, **{**config.model, **overrides}))
    trainer, gen, rows, done = WorldModelTrainer(model), torch.Generator().manual_seed(seed), [], 0
    for total in sorted(updates):
        start = time.perf_counter()
        trainer.fit(source, total - done, generator=gen, progress=False)
        done, seconds = total, time.perf_counter() - start
        rows.append({"fit_updates": total, "fit_seconds": seconds, "recent_fraction": recent, **overrides,
                     **measure(run, starts, seed, model, **options)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="agd train run directories (with a checkpoint)")
    parser.add_argument("--starts", type=int, default=256, help="segments (start states from the run's data)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="draws of the start states and the dream's noise; several: one row each (the measures' spread)")
    parser.add_argument("--name", default="oracle_gap", help="result file benchmarks/results/<name>.json")
    parser.add_argument("--fit-updates", type=int, nargs="*", default=[],
                        help="instead of the run's model: a fresh cpu-preset model fit on the run's data, measured at these update counts")
    parser.add_argument("--mlp-updates", type=int, default=0,
                        help="also measure a one-step MLP (agd_envs/dynamics_prior.py alone) fit for this many updates on the run's data")
    parser.add_argument("--alphas", type=float, nargs="*", default=[],
                        help="measure the run's dream guided by --guides at each of these scales (0: unguided) instead of the run's guide")
    parser.add_argument("--guides", nargs="*", default=["eag"], choices=["eag", "sag", "reward"],
                        help="with --alphas: the guides to measure at each scale")
    parser.add_argument("--guide-on", nargs="*", default=["states"], choices=["states", "actions"],
                        help="with --alphas: what the guide moves (actions: the policy's sampling noise); several values: one row each")
    parser.add_argument("--min-guide-noise", type=float, nargs="*", default=[DEFAULT_MIN_GUIDE_NOISE],
                        help="guide only at denoising steps with 1 - alpha_bar_t >= this; several values: one row each")
    parser.add_argument("--max-shift", type=float, nargs="*", default=[DEFAULT_MAX_SHIFT],
                        help="clip the guide's shift per entry to +- this many z units; several values: one row each")
    parser.add_argument("--run-starts", action="store_true",
                        help="draw start states as the run's trainer does (its start_window of newest transitions), not from the whole dataset")
    parser.add_argument("--margins", type=float, nargs="*", default=None,
                        help="near-fall measures at these termination margins (Task.terminated), and an independent real batch's policy-gradient cosine")
    parser.add_argument("--first-action", action="store_true",
                        help="the first action's advantage in the dream against the simulator's with the policy closed loop after it")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="with --fit-updates: WorldModelConfig overrides of the fresh model, e.g. width=512 delta_states=true")
    parser.add_argument("--recent-fractions", type=float, nargs="*", default=[0.0],
                        help="with --fit-updates: the share of each model batch from the run's start window (0: uniform); one refit each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.fit_updates:
        overrides = dict(parse_field_value(item, WorldModelConfig) for item in args.set)
        options = {"run_starts": args.run_starts, "margins": args.margins, "first_action": args.first_action}
        rows = [row | {"seed": seed} for run in args.runs for seed in args.seed for recent in args.recent_fractions
                for row in refits(run, args.fit_updates, overrides, args.starts, seed, recent, **options)]
    else:
        alphas = args.alphas or [None]
        rows = [measure(run, args.starts, seed, mlp_updates=args.mlp_updates, alpha=a, min_guide_noise=m, max_shift=c,
                        guide=g, guide_on=o, run_starts=args.run_starts, margins=args.margins,
                        first_action=args.first_action) | {"seed": seed}
                for run in args.runs for seed in args.seed for a in alphas for g in (args.guides if a else ["none"])
                for o in (args.guide_on if a else ["states"]) for m in args.min_guide_noise for c in args.max_shift]
    write_result(args.name, {"starts": args.starts, "runs": rows})


if __name__ == "__main__":
    main()
