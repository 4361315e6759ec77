"""Training wall clock of ``agd train`` with the default CPU settings, broken down by phase.

Runs a real AGDTrainer (the task's defaults from ``TrainerConfig.for_task``; warm start from the
shipped dataset) for ``--steps`` real steps and reads the cumulative phase timings it logs
(``seconds_env|model|imagine|agent|eval`` in progress.csv). Reports seconds per 1,000 real steps
of each phase (the setup -- dataset copy, world-model pretraining, first evaluation -- excluded and
reported apart) and the implied wall clock of a 100k-step run.

Run (repo root): python3 benchmarks/train_wallclock.py --task Hopper --steps 5000 --threads 1
    python3 benchmarks/train_wallclock.py --from-run RUN --steps 10000 --threads 2   # a run's own config, alone
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from agents.run_log import PHASES
from agents.trainer import AGDTrainer, TrainerConfig, config_from_run

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--guide", default="eag")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs share a 2-core machine)")
    parser.add_argument("--target-steps", type=int, default=100_000, help="run length to extrapolate to")
    parser.add_argument("--from-run", type=Path, help="time this `agd train` run's saved config (--steps replaces its length)")
    parser.add_argument("--name", help="result file benchmarks/results/<name>.json (default train_wallclock_<task>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_run:
        saved = config_from_run(args.from_run)
        prefill = saved.prefill_steps if saved.warm_start is None else 0
        config = dataclasses.replace(saved, steps=args.steps - prefill)  # ``agd train --steps`` counts after the prefill
    else:
        config = TrainerConfig.for_task(args.task, guide=args.guide, steps=args.steps, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer = AGDTrainer(config, Path(tmp) / "run", progress=False)
        setup = time.perf_counter() - start
        rows = trainer.train()
        total = time.perf_counter() - start
    first, last = rows[0], rows[-1]
    thousands = (int(last["real_steps"]) - int(first["real_steps"])) / 1000
    per_1000 = {p: (float(last[f"seconds_{p}"]) - float(first[f"seconds_{p}"])) / thousands for p in PHASES}
    loop_per_1000 = (total - setup) / thousands
    per_1000["other"] = loop_per_1000 - sum(per_1000.values())
    target_minutes = (setup + loop_per_1000 * args.target_steps / 1000) / 60
    for phase, seconds in per_1000.items():
        print(f"{phase:>8}: {seconds:6.2f} s per 1000 real steps ({100 * seconds / loop_per_1000:4.1f}%)")
    print(f"setup {setup:.1f} s; {loop_per_1000:.2f} s per 1000 real steps; {args.target_steps} steps -> {target_minutes:.1f} min")
    write_result(
        args.name or f"train_wallclock_{config.task.lower()}",
        {"task": config.task, "guide": config.guide, "steps": args.steps, "threads": args.threads,
         "from_run": None if args.from_run is None else str(args.from_run),
         "config": {k: v for k, v in vars(config).items() if k not in ("a2c", "model")} | {"a2c": config.a2c, "model": config.model},
         "setup_seconds": setup, "seconds_per_1000_steps": loop_per_1000, "phase_seconds_per_1000_steps": per_1000,
         "target_steps": args.target_steps, "target_minutes": target_minutes,
         "eval_returns": [(int(r["real_steps"]), float(r["eval_return_mean"])) for r in rows]},
    )  # fmt: skip


if __name__ == "__main__":
    main()
