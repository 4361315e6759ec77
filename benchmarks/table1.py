"""Scaled Table I: the grid as an ``agd sweep`` (Ray), with each finished run's log copied into ``--results``.

The runs are ``agd sweep``'s (agd_envs/sweep.py): one Ray task per (task, algorithm, seed), ``--workers`` at a
time with one CPU each, in ``--work-dir/<task>-<algo>-s<seed>`` (output in ``--work-dir/.sweep/<run>.log``).
A run whose CSV already reached ``--steps`` under ``--results`` is skipped; one with a checkpoint in its work
directory resumes, so a grid killed at the end of a session picks up where it stopped; one killed before its
first checkpoint (and any unfinished PPO run) starts over. Each finished run's ``progress.csv`` and
``config.json`` are copied to ``--results/<run>/`` as soon as it ends.

Protocol: every run's ``real_steps`` counts all real transitions it learned from; AGD runs start from a
5k-step random prefill (``agd sweep --warm-start none --prefill-steps 5000``, its default). The runs in
``results/runs/`` from before this protocol started from the shipped datasets (Hopper 20k, HalfCheetah 40k
steps), which their ``real_steps`` did not count.

Run (repo root; needs ``pip install -e ".[ray]"``):
    python3 benchmarks/table1.py --tasks HalfCheetah Hopper --algos eag none oracle --seeds 0 1 2 --results benchmarks/results/runs_v2
    python3 benchmarks/table1.py --tasks HalfCheetah --algos eag --seeds 0 1 2 --reward-head   # <run>-rhead-s<seed>
The same grid without the copy into --results, as one command (on a cluster: add --address auto):
    agd sweep --tasks HalfCheetah Hopper --guides eag none oracle ppo --seeds 0 1 2 --steps 100000 --out runs/table1 --num-cpus 2
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from agd_envs.cli import main as agd_main
from agd_envs.sweep import ALGOS, Job, SweepConfig, run_name, run_sweep

RUNS = Path(__file__).resolve().parent / "results" / "runs"
PREFILL_STEPS = 5000
"""Uniform-random real steps an AGD run starts from (no shipped data), counted in its ``real_steps``."""
__all__ = ["PREFILL_STEPS", "RUNS", "finished_steps", "main", "pending_jobs", "run_name"]


def finished_steps(csv_path: Path) -> int:
    """The last ``real_steps`` recorded in a progress CSV (0 when there is none)."""
    if not csv_path.exists():
        return 0
    with csv_path.open() as handle:
        steps = [int(float(row["real_steps"])) for row in csv.DictReader(handle)]
    return max(steps, default=0)


def pending_jobs(config: SweepConfig, results: Path) -> list[Job]:
    """The grid's runs whose copy in ``results`` has not reached ``config.steps`` yet."""
    return [job for job in config.grid() if finished_steps(results / job.name / "progress.csv") < config.steps]


def copy_result(run_dir: Path, results: Path) -> None:
    """Copy a finished run's ``progress.csv`` and ``config.json`` into ``results/<run>/``."""
    (results / run_dir.name).mkdir(parents=True, exist_ok=True)
    for file in ("progress.csv", "config.json"):
        if (run_dir / file).exists():
            shutil.copy2(run_dir / file, results / run_dir.name / file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["Hopper", "HalfCheetah"])
    parser.add_argument("--algos", nargs="+", default=["eag", "none", "ppo", "sag", "reward"], choices=ALGOS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--reward-head", action="store_true", help="AGD runs with the per-transition reward head")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (the local Ray's CPUs, one per run)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/table1"))
    parser.add_argument("--results", type=Path, default=RUNS)
    args = parser.parse_args()
    config = SweepConfig(
        tasks=tuple(args.tasks), algos=tuple(args.algos), seeds=tuple(args.seeds), steps=args.steps, out=args.work_dir,
        prefill_steps=PREFILL_STEPS, reward_head=args.reward_head, num_cpus=args.workers,
    )  # fmt: skip
    jobs = pending_jobs(config, args.results)
    for job in config.grid():
        if job not in jobs:
            print(f"{job.name}: already in {args.results}", flush=True)

    def report(job: Job, status: str) -> None:
        if not status.startswith("FAILED"):
            copy_result(config.out / job.name, args.results)
        print(f"{job.name}: {status}", flush=True)

    run_sweep(config, agd_main, jobs, report=report)


if __name__ == "__main__":
    main()
