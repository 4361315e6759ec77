"""Collection throughput: RealEnvCollector (policy + bookkeeping + HDF5 journal) vs raw vector-env stepping.

Run: python3 benchmarks/collect.py --task Hopper --steps 20000 --num-envs 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from agd_envs.collector import RealEnvCollector
from agd_envs.tasks import get_task

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def raw_steps_per_second(env_id: str, num_envs: int, steps: int, seed: int) -> float:
    """Step the same SyncVectorEnv with pre-drawn uniform actions and no bookkeeping."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
    envs.reset(seed=seed)
    iterations = steps // num_envs
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(iterations, *envs.action_space.shape)).astype(np.float32)
    start = time.perf_counter()
    for i in range(iterations):
        envs.step(actions[i])
    elapsed = time.perf_counter() - start
    envs.close()
    return iterations * num_envs / elapsed


def collect_steps_per_second(task: str, num_envs: int, steps: int, seed: int, out: Path) -> float:
    """RealEnvCollector with the built-in random policy writing to a fresh dataset."""
    collector = RealEnvCollector(task, out, num_envs=num_envs, seed=seed, progress=False)
    start = time.perf_counter()
    collector.collect("random", steps)
    collector.close()  # the final checkpoint of the HDF5 file counts too
    elapsed = time.perf_counter() - start
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env_id = get_task(args.task).env_id
    raw, collected = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # Interleave the two so machine noise hits both alike.
        for r in range(args.repeats):
            raw.append(raw_steps_per_second(env_id, args.num_envs, args.steps, seed=r))
            collected.append(collect_steps_per_second(args.task, args.num_envs, args.steps, r, Path(tmp) / f"d{r}"))
    write_result(
        f"collect_{args.task.lower()}",
        {
            "task": args.task, "num_envs": args.num_envs, "steps": args.steps,
            "raw_steps_per_s": raw, "collect_steps_per_s": collected,
            "ratio_median": float(np.median(collected) / np.median(raw)),
        },
    )


if __name__ == "__main__":
    main()
