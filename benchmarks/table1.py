"""Scaled Table I queue: run `agd train` / `agd baseline ppo` jobs two at a time, resumably.

Each job is one (task, algorithm, seed) run of ``--steps`` real steps in ``--work-dir/<task>-<algo>-s<seed>``
with one torch thread. A job whose CSV already reached ``--steps`` under ``--results`` is skipped; a job
with a checkpoint in its work directory continues with ``--resume``, so a queue killed at the end of a
session picks up where it stopped; one killed before its first checkpoint starts over. Each finished
run's ``progress.csv`` and ``config.json`` are copied to ``benchmarks/results/runs/<run>/`` as soon as it ends.

Protocol: every run's ``real_steps`` counts all real transitions it learned from; AGD runs start from a
5k-step random prefill (see ``command``). The runs in ``results/runs/`` from before this protocol started
from the shipped datasets (Hopper 20k, HalfCheetah 40k steps), which their ``real_steps`` did not count.

Run (repo root):
    python3 benchmarks/table1.py --tasks HalfCheetah Hopper --algos eag none oracle --seeds 0 1 2 --results benchmarks/results/runs_v2
    python3 benchmarks/table1.py --tasks HalfCheetah --algos eag --seeds 0 1 2 --reward-head   # <run>-rhead-s<seed>
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "results" / "runs"


def run_name(task: str, algo: str, seed: int, reward_head: bool = False) -> str:
    """The run directory name, e.g. ``hopper-eag-s0`` (``hopper-eag-rhead-s0`` with a reward head)."""
    return f"{task.lower()}-{algo}{'-rhead' if reward_head else ''}-s{seed}"


def finished_steps(csv_path: Path) -> int:
    """The last ``real_steps`` recorded in a progress CSV (0 when there is none)."""
    if not csv_path.exists():
        return 0
    with csv_path.open() as handle:
        steps = [int(float(row["real_steps"])) for row in csv.DictReader(handle)]
    return max(steps, default=0)


PREFILL_STEPS = 5000
"""Uniform-random real steps an AGD run starts from (no shipped data), counted in its ``real_steps``."""


def command(task: str, algo: str, seed: int, steps: int, out: Path, reward_head: bool = False) -> list[str]:
    """The `agd` command line that runs (or resumes) one job of ``steps`` real steps in all.

    Fair accounting: an AGD run starts from ``PREFILL_STEPS`` random steps instead of the shipped dataset
    and collects ``steps - PREFILL_STEPS`` more, so its log's ``real_steps`` (prefill included) ends at
    ``steps``, as PPO's does. ``oracle`` is the unguided learner on the real simulator (agd_envs/oracle.py).
    """
    if algo == "ppo":
        return ["agd", "baseline", "ppo", "--task", task, "--steps", str(steps), "--seed", str(seed), "--out", str(out)]
    if (out / "checkpoint").exists():
        return ["agd", "train", "--resume", "--out", str(out)]
    head = ["--reward-head"] if reward_head else []
    model = ["--world-model", "oracle", "--guide", "none"] if algo == "oracle" else ["--guide", algo]
    return ["agd", "train", "--task", task, *model, "--steps", str(steps - PREFILL_STEPS), "--seed", str(seed),
            "--warm-start", "none", "--prefill-steps", str(PREFILL_STEPS), "--out", str(out), *head]  # fmt: skip


def clear_unresumable(out: Path, algo: str) -> bool:
    """Delete a work directory that cannot resume (any PPO run, an AGD run without a checkpoint); True if deleted."""
    if out.exists() and (algo == "ppo" or not (out / "checkpoint").exists()):
        shutil.rmtree(out)  # SB3 runs do not resume, nor do runs killed before their first checkpoint
        return True
    return False


def run_job(task: str, algo: str, seed: int, steps: int, work_dir: Path, results: Path, reward_head: bool = False) -> str:
    """Run one job to completion and copy its CSV and config into ``results``; returns a status line."""
    name = run_name(task, algo, seed, reward_head and algo != "ppo")
    if finished_steps(results / name / "progress.csv") >= steps:
        return f"{name}: already in {results}"
    out = work_dir / name
    clear_unresumable(out, algo)
    argv = command(task, algo, seed, steps, out, reward_head)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    with (work_dir / f"{name}.log").open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    minutes = (time.time() - start) / 60
    if code != 0 or finished_steps(out / "progress.csv") < steps:
        return f"{name}: FAILED (exit {code}) after {minutes:.1f} min; see {work_dir / (name + '.log')}"
    (results / name).mkdir(parents=True, exist_ok=True)
    for file in ("progress.csv", "config.json"):
        if (out / file).exists():
            shutil.copy2(out / file, results / name / file)
    return f"{name}: done in {minutes:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["Hopper", "HalfCheetah"])
    parser.add_argument("--algos", nargs="+", default=["eag", "none", "ppo", "sag", "reward"],
                        choices=["eag", "sag", "reward", "none", "oracle", "ppo"])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--reward-head", action="store_true", help="AGD runs with the per-transition reward head")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/table1"))
    parser.add_argument("--results", type=Path, default=RUNS)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    jobs = list(itertools.product(args.tasks, args.algos, args.seeds))
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, task, algo, seed, args.steps, args.work_dir, args.results, args.reward_head)
                   for task, algo, seed in jobs]  # fmt: skip
        for future in futures:
            print(future.result(), flush=True, file=sys.stdout)


if __name__ == "__main__":
    main()
