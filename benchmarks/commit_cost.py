"""Cost of one DatasetWriter commit (copy-on-write of main_data.hdf5) by dataset size, and its share of a collection.

A commit copies main_data.hdf5, adds the new episode groups to the copy, fsyncs it and renames it over
the original, so its cost grows with the file. This measures that cost for datasets of Hopper-like short
episodes (20 steps: many groups) and HalfCheetah-like long ones (1000 steps), and the throughput of a
real Hopper collection with commits at the default cadence against commits only at close. The numbers
chose ``DatasetWriter``'s defaults (``COMMIT_SECONDS``, ``MAX_COMMIT_SHARE`` in agd_envs/dataset_writer.py).

Run: python3 benchmarks/commit_cost.py --steps 20000 200000 1000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from agd_envs.collector import RealEnvCollector
from agd_envs.datasets import COMMIT_SECONDS, MAX_COMMIT_SHARE, DatasetWriter
from agd_envs.tasks import get_task

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def synthetic_episode(task: str, steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One truncated episode of random numbers with the task's shapes (a commit's cost ignores the values)."""
    t = get_task(task)
    flags = np.zeros(steps, bool)
    return {"observations": rng.standard_normal((steps + 1, t.obs_dim)), "actions": rng.uniform(-1, 1, (steps, t.act_dim)),
            "rewards": rng.standard_normal(steps), "terminations": flags, "truncations": np.append(flags[:-1], True)}


def commit_seconds(root: Path, task: str, total_steps: int, episode_steps: int, new_episodes: int,
                   repeats: int) -> dict[str, float]:
    """Build a dataset of ``total_steps``, then time ``repeats`` commits of ``new_episodes`` episodes each."""
    rng = np.random.default_rng(0)
    with DatasetWriter(root, task, checkpoint_every=None, checkpoint_seconds=None) as writer:
        for _ in range(total_steps // episode_steps):
            writer.add_episode(**synthetic_episode(task, episode_steps, rng))
    size_mb = (root / "data" / "main_data.hdf5").stat().st_size / 1e6
    times = []
    with DatasetWriter(root, task, checkpoint_every=None, checkpoint_seconds=None) as writer:
        for _ in range(repeats):
            for _ in range(new_episodes):
                writer.add_episode(**synthetic_episode(task, episode_steps, rng))
            start = time.perf_counter()
            writer.checkpoint()
            times.append(time.perf_counter() - start)
    return {"file_mb": round(size_mb, 1), "commit_s_median": statistics.median(times), "commit_s": times}


def collection_rate(root: Path, steps: int, **writer_kwargs: float | None) -> float:
    """Real Hopper steps per second of RealEnvCollector (8 envs, random policy) into a fresh dataset."""
    writer = DatasetWriter(root, "Hopper", **writer_kwargs)
    collector = RealEnvCollector("Hopper", writer, num_envs=8, seed=0, progress=False)
    start = time.perf_counter()
    collector.collect("random", steps)
    collector.close()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[20_000, 200_000, 1_000_000],
                        help="dataset sizes (transitions) to time a commit at")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--collect-steps", type=int, default=40_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, episode_steps in (("Hopper", 20), ("HalfCheetah", 1000)):
            for total in args.steps:
                row = commit_seconds(Path(tmp) / f"{task}-{total}", task, total, episode_steps, 10, args.repeats)
                rows.append({"task": task, "episode_steps": episode_steps, "total_steps": total, **row})
                print(rows[-1])
        rates = {"commit at close only": [], "defaults": []}
        for r in range(3):  # interleaved, so machine noise hits both alike
            rates["commit at close only"].append(collection_rate(Path(tmp) / f"once{r}", args.collect_steps,
                                                                 checkpoint_every=None, checkpoint_seconds=None))
            rates["defaults"].append(collection_rate(Path(tmp) / f"default{r}", args.collect_steps))
    write_result("commit_cost", {
        "commit_seconds_default": COMMIT_SECONDS, "max_commit_share_default": MAX_COMMIT_SHARE,
        "commits": rows, "collect_hopper_steps": args.collect_steps, "collect_steps_per_s": rates,
        "collect_slowdown_with_defaults": 1 - statistics.median(rates["defaults"])
        / statistics.median(rates["commit at close only"]),
    })


if __name__ == "__main__":
    main()
