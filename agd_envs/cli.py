"""The ``agd`` command line: collect real data, fit world models, and (later) train and evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from agd_envs.tasks import TASKS


def _collect(args: argparse.Namespace) -> None:
    from agd_envs.collector import RealEnvCollector
    from agd_envs.datasets import DatasetWriter

    writer = DatasetWriter(
        Path(args.out),
        args.task,
        policy=args.policy,
        description=f"agd collect --task {args.task} --steps {args.steps} --policy {args.policy} "
        f"--num-envs {args.num_envs} --seed {args.seed}",
    )
    with RealEnvCollector(args.task, writer, num_envs=args.num_envs, seed=args.seed) as collector:
        # "mixed": the first half uniform random, the second half perturbed sinusoids.
        plan = [("random", args.steps // 2), ("sine", args.steps - args.steps // 2)] if args.policy == "mixed" else [(args.policy, args.steps)]
        for policy, steps in plan:
            collector.collect(policy, steps)
    print(f"wrote {writer.num_episodes} episodes, {writer.num_steps} steps to {args.out}")


def _fit(args: argparse.Namespace) -> None:
    from agd_envs.world_model import fit_main

    out = fit_main(
        task=args.task, dataset=args.dataset, preset=args.preset, steps=args.steps,
        out=args.out, seed=args.seed, device=args.device,
    )
    print(f"saved world model to {out}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agd`` (one sub-command per stage)."""
    parser = argparse.ArgumentParser(prog="agd", description="Advantage-guided diffusion world models as Gymnasium envs.")
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = sorted(TASKS)

    collect = sub.add_parser("collect", help="collect real MuJoCo transitions into a Minari-layout HDF5 dataset")
    collect.add_argument("--task", required=True, choices=tasks)
    collect.add_argument("--steps", type=int, required=True, help="real environment steps in total")
    collect.add_argument("--policy", default="random", choices=["random", "sine", "mixed"])
    collect.add_argument("--out", required=True, help="dataset directory (created, or appended to)")
    collect.add_argument("--num-envs", type=int, default=1)
    collect.add_argument("--seed", type=int, default=0)
    collect.set_defaults(func=_collect)

    fit = sub.add_parser("fit", help="fit a diffusion world model on a dataset and save a checkpoint")
    fit.add_argument("--task", required=True, choices=tasks)
    fit.add_argument("--dataset", required=True)
    fit.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    fit.add_argument("--steps", type=int, default=5000, help="gradient steps")
    fit.add_argument("--out", required=True)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="cpu")
    fit.set_defaults(func=_fit)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``agd`` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"agd {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
