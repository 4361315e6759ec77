"""What imagination costs a trained run, and what skipping the guide at the low-noise steps changes.

For a trained run (``agd train --out RUN``, its last checkpoint: world model, actor, critic — the agent's
real [Linear, LayerNorm, ELU] networks, not stand-ins), from start states of the run's own dataset:

- speed: imagined transitions per CPU second (batch x H / CPU seconds per ``imagine`` call, one thread) at each ``--batch``, unguided
  and EAG at each ``--min-guide-noise`` (0 = the guide at every visited step: the sampler before
  ``DEFAULT_MIN_GUIDE_NOISE``; with ``--action-guide`` also EAG on the actions, ``guide_on="actions"``), with the ratio to
  EAG at 0 in the same run;
- samples: at the first batch size, the same noise for every setting. ``guide_effect_kept`` compares the
  states of each setting with EAG at 0 and the unguided ones: 1 - RMSE(x - x_eag0) / RMSE(x_eag0 - x_none)
  (1: the guide's whole effect kept; 0: as unguided). Beside it, the step-H state error against the real
  simulator replaying the imagined actions (benchmarks/oracle_gap.py ``gap``), the mean imagined advantage
  (what EAG raises) and the policy-gradient cosine with the real replay.

``--dtypes float32 bfloat16`` repeats every setting under ``torch.autocast`` to bf16 (what ``agd train --set
imagination_dtype=bfloat16`` does): keys gain ``/bfloat16``, and ``deviation_from_float32_z`` is the step-H state RMSE (z)
between a bf16 setting's segments and the same setting's float32 ones from the same noise.

Run (repo root):
    OMP_NUM_THREADS=1 python3 benchmarks/imagination_cost.py RUN --batch 256 1024 4096 --min-guide-noise 0 0.01 0.05 --name imagination_cost_halfcheetah
    OMP_NUM_THREADS=1 PYTHONPATH=. python3 benchmarks/imagination_cost.py RUN --min-guide-noise 0 0.01 --dtypes float32 bfloat16 --name imagination_cost_hopper_bf16
    OMP_NUM_THREADS=1 PYTHONPATH=. python3 benchmarks/imagination_cost.py RUN --batch 256 1024 --min-guide-noise 0 0.01 --action-guide --name imagination_cost_hopper_action_guide
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from agd_envs.batch import SegmentBatch
from agd_envs.datasets import EpisodeDataset
from agd_envs.oracle import OracleWorldModel
from agd_envs.sampling import imagine
from agd_envs.world_model import WorldModel
from agents.trainer import agent_from_run

try:
    from benchmarks._common import median_seconds, write_result
    from benchmarks.oracle_gap import gap, replay
except ImportError:  # run as a script from the repo root
    from _common import median_seconds, write_result
    from oracle_gap import gap, replay


def kept(x: torch.Tensor, full: torch.Tensor, unguided: torch.Tensor) -> float:
    """1 - RMSE(x - full) / RMSE(full - unguided): the share of the guide's effect on the states that ``x`` keeps."""
    return 1.0 - float((x - full).square().mean().sqrt() / (full - unguided).square().mean().sqrt().clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained run directory (agd train --out) with a checkpoint")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--min-guide-noise", dest="thresholds", type=float, nargs="+", default=[0.0, 0.01, 0.05])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=None, help="EAG scale (default: the task's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--action-guide", action="store_true", help="also EAG on the actions (guide_on='actions') at each threshold")
    parser.add_argument("--action-alpha", type=float, default=None, help="the action guide's scale (default: the sampler's)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="autocast dtypes to time (float32: none); float32 must come first, the reference")
    parser.add_argument("--name", default="imagination_cost")
    args = parser.parse_args()
    if 0.0 not in args.thresholds:
        raise SystemExit("--min-guide-noise must include 0 (the guide at every step), the reference of every ratio")
    if args.dtypes[0] != "float32":
        raise SystemExit("--dtypes must start with float32, the reference of every ratio")

    config, agent = agent_from_run(args.run)
    model = WorldModel.load(args.run / "checkpoint" / "model").eval()
    data = EpisodeDataset.open(args.run / "data", task=config.task)
    horizon = model.config.horizon
    s0_all = data.sample_segments(max(args.batch), horizon, generator=torch.Generator().manual_seed(args.seed)).states[:, 0]
    actor, critic = agent.actor, agent.critic

    def run(s0: torch.Tensor, guide: str, threshold: float = 0.0, dtype: str = "float32", guide_on: str = "states") -> SegmentBatch:
        generator = torch.Generator().manual_seed(args.seed)
        cast = getattr(torch, dtype)
        alpha = args.alpha if guide_on == "states" else args.action_alpha
        with torch.no_grad() if guide == "none" else torch.enable_grad(), torch.autocast("cpu", dtype=cast, enabled=cast != torch.float32):
            return imagine(model, s0, actor, critic, guide=guide, alpha=alpha, generator=generator, min_guide_noise=threshold,
                           guide_on=guide_on)  # fmt: skip

    # label -> (guide, threshold, dtype, guide_on): unguided and EAG at each threshold (and on the actions), under each dtype
    actions = [(f"eag-actions@{t:g}", "eag", t, "actions") for t in args.thresholds if args.action_guide]
    settings = {
        f"{label}{'' if dtype == 'float32' else '/' + dtype}": (guide, threshold, dtype, *on)
        for dtype in args.dtypes
        for label, guide, threshold, *on in [("none", "none", 0.0)] + [(f"eag@{t:g}", "eag", t) for t in args.thresholds] + actions
    }
    speed = []
    for batch in args.batch:
        s0 = s0_all[:batch]
        seconds = {label: median_seconds(lambda: run(s0, *setting), args.repeats) for label, setting in settings.items()}
        row = {"batch": batch, "cpu_seconds": seconds,
               "transitions_per_s": {k: batch * horizon / v for k, v in seconds.items()},
               "speedup_vs_eag@0": {k: seconds["eag@0"] / v for k, v in seconds.items()}}  # fmt: skip
        speed.append(row)
        print(f"B={batch:<5} " + "  ".join(f"{k}: {v:9.0f}/s" for k, v in row["transitions_per_s"].items()))

    s0 = s0_all[: args.batch[0]]
    segments = {label: run(s0, *setting) for label, setting in settings.items()}
    unguided, full = segments["none"], segments["eag@0"]
    oracle = OracleWorldModel(config.task)
    scale = torch.as_tensor(np.asarray(data.statistics().obs_std), dtype=torch.float32)
    samples = {}
    for label, batch in segments.items():
        states, rewards, done = replay(oracle, s0, batch.actions)
        measures = gap(agent, batch, SegmentBatch(states=states, actions=batch.actions, rewards=rewards, terminations=done), scale)
        reference = segments[label.split("/")[0]]  # the same setting in float32
        samples[label] = {
            "deviation_from_float32_z": float(((batch.states[:, -1] - reference.states[:, -1]) / scale).square().mean().sqrt()),
            "guide_effect_kept": kept(batch.states / scale, full.states / scale, unguided.states / scale),
            "state_rmse_z_at_H": measures["state_rmse_z_per_step"][-1],
            "advantage_mean_dream": measures["advantage_mean"]["dream"],
            "policy_gradient_cosine": measures["policy_gradient_cosine"],
        }
        print(f"{label:>10}: " + "  ".join(f"{k} {v:.4f}" for k, v in samples[label].items()))
    oracle.close()
    write_result(args.name, {"run": str(args.run), "task": config.task, "horizon": horizon,
                             "sampling_steps": model.config.sampling_steps, "alpha": args.alpha if args.alpha is not None else model.task.guide_scale,
                             "torch_threads": torch.get_num_threads(), "speed": speed, "samples_at_batch": args.batch[0],
                             "samples": samples})  # fmt: skip


if __name__ == "__main__":
    main()
