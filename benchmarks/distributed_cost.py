"""1 vs 2 torchrun processes (gloo, CPU): world-model fit updates/s at the same global batch, and a short `agd train`.

Each measurement is a ``torchrun --standalone --nproc_per_node=N`` launch with one torch thread per process:

- fit: ``--updates`` updates of the Reacher ``cpu``-preset world model at its global batch on the shipped
  dataset (each of N ranks draws batch/N segments); timed inside the processes, after start-up;
- train: ``agd train --task Reacher`` for ``--train-steps`` online steps from the shipped data
  (``--set model_pretrain_updates=200``), timed from the launch to its exit, and the run's own ``wall_seconds``.

The load average (1 min) before and after each measurement is recorded: on a machine shared with other jobs, two
processes only run in parallel where two cores are free.

Run (repo root):
    OMP_NUM_THREADS=1 python3 benchmarks/distributed_cost.py --out benchmarks/results/distributed_cost.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def torchrun(processes: int, *args: str) -> float:
    """Run ``torchrun --standalone --nproc_per_node=<processes> <args>``; its wall seconds (start-up included)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def fit_worker(updates: int, out: Path) -> None:
    """Inside torchrun: time ``updates`` fit updates of the Reacher cpu-preset model; rank 0 writes the result."""
    from agd_envs.datasets import EpisodeDataset
    from agd_envs.defaults import default_dataset_path
    from agd_envs.distributed import distributed_from_env
    from agd_envs.training import WorldModelTrainer
    from agd_envs.world_model import WorldModel, WorldModelConfig

    torch.set_num_threads(1)
    data = EpisodeDataset.open(default_dataset_path("Reacher"))
    with distributed_from_env("cpu") as ranks:
        torch.manual_seed(0)
        model = WorldModel(WorldModelConfig.preset("cpu", "Reacher"))
        trainer = WorldModelTrainer(model, ranks)
        generator = torch.Generator().manual_seed(ranks.seed(0))
        trainer.fit(data, 10, generator=generator, progress=False)  # warm-up: normalizer, first allocations
        ranks.barrier()
        start = time.perf_counter()
        log = trainer.fit(data, updates, generator=generator, progress=False, update_normalizer=False)
        ranks.barrier()
        seconds = time.perf_counter() - start
        if ranks.is_main:
            out.write_text(json.dumps({"processes": ranks.world_size, "global_batch": model.config.batch_size,
                                       "updates": updates, "seconds": seconds, "updates_per_second": updates / seconds,
                                       "final_loss": log[-1]["loss"]}))  # fmt: skip


def measure_fit(processes: int, updates: int) -> dict[str, float]:
    """Fit updates/s with ``processes`` ranks at the preset's global batch."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        load = os.getloadavg()[0]
        torchrun(processes, __file__, "--fit-worker", str(updates), "--out", str(out))
        return {**json.loads(out.read_text()), "load_before": load, "load_after": os.getloadavg()[0]}


def measure_train(processes: int, steps: int) -> dict[str, float]:
    """Wall seconds of a short Reacher ``agd train`` with ``processes`` ranks (launch to exit, and the run's own)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        load = os.getloadavg()[0]
        wall = torchrun(processes, "-m", "agd_envs", "train", "--task", "Reacher", "--steps", str(steps), "--seed", "0",
                        "--out", str(run), "--eval-episodes", "5", "--set", "model_pretrain_updates=200")  # fmt: skip
        with (run / "progress.csv").open() as f:
            rows = list(csv.DictReader(f))
        return {"processes": processes, "online_steps": steps, "launch_to_exit_seconds": wall,
                "run_wall_seconds": float(rows[-1]["wall_seconds"]), "seconds_model": float(rows[-1]["seconds_model"]),
                "seconds_imagine": float(rows[-1]["seconds_imagine"]), "eval_return": float(rows[-1]["eval_return_mean"]),
                "load_before": load, "load_after": os.getloadavg()[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/distributed_cost.json"))
    parser.add_argument("--updates", type=int, default=300, help="timed world-model updates per fit measurement")
    parser.add_argument("--train-steps", dest="train_steps", type=int, default=1000)
    parser.add_argument("--fit-worker", dest="fit_worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_worker is not None:
        fit_worker(args.fit_worker, args.out)
        return
    result = {
        "machine": f"{os.cpu_count()} CPU cores, shared with other jobs (see load_before/load_after); gloo, 1 torch thread per process",
        "torch": torch.__version__,
        "fit": [measure_fit(n, args.updates) for n in (1, 2)],
        "train": [measure_train(n, args.train_steps) for n in (1, 2)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
