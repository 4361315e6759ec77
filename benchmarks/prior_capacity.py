"""How much one-step accuracy the dynamics prior leaves on the table: its width, depth and training length.

The dynamics prior (agd_envs/dynamics_prior.py) is the part of the ``cpu`` world model that carries each
action's effect; the dream's state error one step after a real s_0 is close to a standalone one-step MLP's
(``oracle_gap.py --mlp-updates``). This fits standalone priors of several sizes, with or without their H-step rollout
error in the loss (``--rollout-weights``), on a dataset's training episodes and measures, on held-out episodes (an
episode-level split), at several update counts:

- ``one_step_rmse_z``: teacher-forced one-step state error (RMSE in z-units of the training split);
- ``rollout_rmse_z``: the prior rolled out over H steps from a real s_0 under the real actions, per step;
- ``reward_mae``: one-step reward error (the reward without its known control term, as the model learns it);
- ``constant_rmse_z``: "the state does not change" at t = 1, the scale an error is small against.

Run (repo root):
    python3 benchmarks/prior_capacity.py runs/walker2d-none-zoo-s0/data --task Walker2d --widths 256 512 \
        --updates 5000 15000 30000 --name prior_capacity_walker2d
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from einops import rearrange

from agd_envs.datasets import EpisodeDataset
from agd_envs.dynamics_prior import DynamicsPrior
from agd_envs.normalization import Normalizer
from agd_envs.segments import SegmentLayout
from agd_envs.tasks import Task, get_task
from agd_envs.training import MOMENT_SEGMENTS
from agd_envs.world_model import WorldModel

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def new_prior(data: EpisodeDataset, task: Task, horizon: int, width: int = 256, depth: int = 3,
              generator: torch.Generator | None = None) -> tuple[DynamicsPrior, Normalizer]:
    """An untrained ``DynamicsPrior`` and the normalizer it works in, both fit to ``data``'s moments (as the world model's)."""
    norm = Normalizer(task.obs_dim, task.act_dim).fit(data.statistics())
    prior = DynamicsPrior(SegmentLayout(task.obs_dim, task.act_dim, horizon), width=width, depth=depth)
    batch = data.sample_segments(MOMENT_SEGMENTS, horizon, generator=generator)
    z = norm.normalize_states(batch.states)
    residual = batch.rewards - task.control_reward(batch.actions)
    norm.rew_mean.copy_(residual.mean())
    norm.rew_std.copy_(residual.std())
    prior.fit_moments(rearrange(z[:, 1:] - z[:, :-1], "b h s -> (b h) s"), states=z)
    return prior, norm


def train_prior(prior: DynamicsPrior, norm: Normalizer, data: EpisodeDataset, task: Task, optimizer: torch.optim.Optimizer,
                updates: int, generator: torch.Generator, batch_size: int = 64, rollout_weight: float = 0.0) -> None:
    """``updates`` steps of the prior's own loss (``DynamicsPrior.loss``) on ``batch_size`` segments of ``data`` (the
    world model's prior sees a quarter of its 256-segment batch, ``LOSS_FRACTION_INV``)."""
    horizon = prior.layout.horizon
    for _ in range(updates):
        b = data.sample_segments(batch_size, horizon, generator=generator)
        rewards = norm.normalize_rewards(b.rewards - task.control_reward(b.actions))
        loss = prior.loss(norm.normalize_states(b.states), norm.normalize_actions(b.actions), rewards,
                          rollout_weight, segments=batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def held_out_errors(prior: DynamicsPrior, norm: Normalizer, test: EpisodeDataset, task: Task, segments: int, seed: int,
                    measure: Normalizer | None = None) -> dict[str, object]:
    """The module docstring's measures of ``prior`` (working in ``norm``'s units) on ``segments`` windows of the
    held-out ``test`` episodes; errors in ``measure``'s z-units (default ``norm``'s)."""
    measure = measure if measure is not None else norm
    b = test.sample_segments(segments, prior.layout.horizon, generator=torch.Generator().manual_seed(seed))
    z = norm.normalize_states(b.states)
    actions = norm.normalize_actions(b.actions)
    known = torch.ones(actions.shape[:2], dtype=torch.bool)
    one_step, reward = prior(z[:, :-1], actions, known)
    rollout, _ = prior.rollout(z[:, 0], actions, known)
    to_measure = lambda x: measure.normalize_states(norm.unnormalize_states(x))  # noqa: E731
    truth = measure.normalize_states(b.states)
    rmse = lambda x: x.square().mean(-1).sqrt().mean(0)  # noqa: E731  (B x H x S -> H)
    true_reward = norm.normalize_rewards(b.rewards - task.control_reward(b.actions))
    return {
        "one_step_rmse_z": round(float(rmse(to_measure(one_step) - truth[:, 1:]).mean()), 4),
        "rollout_rmse_z": [round(float(v), 4) for v in rmse(to_measure(rollout[:, 1:]) - truth[:, 1:])],
        "reward_mae": round(float(((reward - true_reward) * norm.rew_std).abs().mean()), 4),
        "constant_rmse_z": round(float(rmse(truth[:, 1:2] - truth[:, :1]).mean()), 4),
    }


def run_prior(run: Path, data: EpisodeDataset, task: Task, horizon: int, segments: int, seed: int) -> dict[str, object]:
    """The same measures of a trained run's own prior (its EMA weights, as imagination uses them), on the same held-out
    episodes; in-sample for it, since the run trained on every episode."""
    model = WorldModel.load(run / "checkpoint" / "model")
    if not model.config.dynamics_prior:
        raise ValueError(f"{run}: its world model has no dynamics prior (WorldModelConfig.dynamics_prior is false)")
    train, test = data.split(0.8, seed)
    _, measure = new_prior(train, task, horizon, generator=torch.Generator().manual_seed(seed))
    return {"run": str(run), "width": model.config.prior_width} | held_out_errors(
        model.ema_network.prior, model.normalizer, test, task, segments, seed, measure=measure)


def sweep(data: EpisodeDataset, task: Task, width: int, depth: int, lr: float, updates: list[int], horizon: int,
          segments: int, seed: int, batch_size: int, rollout_weight: float = 0.0) -> list[dict[str, object]]:
    """One prior of ``width`` x ``depth`` trained with Adam(``lr``) and ``rollout_weight`` on 80% of the episodes,
    measured at each count of ``updates``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, test = data.split(0.8, seed)
    prior, norm = new_prior(train, task, horizon, width, depth, gen)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    rows, done, seconds = [], 0, 0.0
    for total in sorted(updates):
        start = time.perf_counter()
        train_prior(prior, norm, train, task, optimizer, total - done, gen, batch_size, rollout_weight)
        done, seconds = total, seconds + time.perf_counter() - start
        row = {"width": width, "depth": depth, "lr": lr, "rollout_weight": rollout_weight, "batch_segments": batch_size,
               "updates": total, "fit_seconds": round(seconds, 1),
               "parameters": sum(p.numel() for p in prior.parameters())}
        rows.append(row | held_out_errors(prior, norm, test, task, segments, seed))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="an episode dataset (a run's data/ or datasets/<name>)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--widths", type=int, nargs="+", default=[256])
    parser.add_argument("--depths", type=int, nargs="+", default=[3])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--updates", type=int, nargs="+", default=[5000, 15000, 30000])
    parser.add_argument("--rollout-weights", type=float, nargs="+", default=[0.0],
                        help="weights of the H-step rollout error in the prior's loss (WorldModelConfig.prior_rollout_weight)")
    parser.add_argument("--batch", type=int, default=64, help="training segments per update")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--segments", type=int, default=4096, help="held-out windows measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=Path, help="also measure this agd train run's own prior (in-sample) on the held-out episodes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="prior_capacity", help="result file benchmarks/results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    data = EpisodeDataset.open(args.dataset, task=task.name)
    rows = [row for w in args.widths for d in args.depths for lr in args.lrs for rw in args.rollout_weights
            for row in sweep(data, task, w, d, lr, args.updates, args.horizon, args.segments, args.seed, args.batch, rw)]
    result = {"dataset": str(args.dataset), "dataset_steps": int(data.num_steps), "rows": rows}
    if args.run is not None:
        result["run_prior"] = run_prior(args.run, data, task, args.horizon, args.segments, args.seed)
    write_result(args.name, result)


if __name__ == "__main__":
    main()
