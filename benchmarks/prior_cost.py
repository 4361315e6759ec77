"""What the dynamics prior costs: world-model updates/s and imagine() time, with and without it, same run.

For each task, the ``cpu`` preset with its dynamics prior (the default) and the s_0-anchored model
before it (``dynamics_prior=False, anchor_states=True``) are fit on the task's shipped dataset and timed:
updates per second over ``--updates`` updates (after a short warm-up), and milliseconds per
``imagine`` call (joint segments, policy-guided actions, guides ``none`` and ``eag``) at each batch
size. Weights do not change the cost. The ratios prior / anchored are in ``ratios``.

Run (repo root): python3 benchmarks/prior_cost.py --tasks Hopper HalfCheetah --batch 256 1024
"""

from __future__ import annotations

import argparse
import time

import torch

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.sampling import imagine
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig
from agents.a2c import A2CAgent

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result

VARIANTS = {"prior": {}, "anchored": {"dynamics_prior": False, "anchor_states": True}}


def time_variant(task: str, overrides: dict, updates: int, batches: list[int], repeats: int) -> dict[str, float]:
    """Updates/s and ms per imagine call (``imagine_<guide>_<batch>``) of one world-model variant."""
    data = EpisodeDataset.open(default_dataset_path(task))
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig.preset("cpu", task, **overrides))
    trainer = WorldModelTrainer(model)
    trainer.fit(data, 10, generator=torch.Generator().manual_seed(0), progress=False)
    start = time.perf_counter()
    trainer.fit(data, updates, generator=torch.Generator().manual_seed(1), progress=False, update_normalizer=False)
    row = {"updates_per_second": updates / (time.perf_counter() - start)}
    agent = A2CAgent(obs_dim=model.task.obs_dim, act_dim=model.task.act_dim)
    for guide in ("none", "eag"):
        for batch in batches:
            s0 = data.sample_segments(batch, model.config.horizon, generator=torch.Generator().manual_seed(2)).states[:, 0]
            imagine(model, s0, agent.actor, agent.critic, guide=guide, generator=torch.Generator().manual_seed(3))
            start = time.perf_counter()
            for _ in range(repeats):
                imagine(model, s0, agent.actor, agent.critic, guide=guide, generator=torch.Generator().manual_seed(3))
            row[f"imagine_{guide}_{batch}_ms"] = 1000 * (time.perf_counter() - start) / repeats
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Hopper", "HalfCheetah"])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="prior_cost")
    parser.add_argument("--note", default="", help="conditions of the run (e.g. other jobs on the machine)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for task in args.tasks:
        rows = {name: time_variant(task, o, args.updates, args.batch, args.repeats) for name, o in VARIANTS.items()}
        ratios = {key: rows["prior"][key] / rows["anchored"][key] for key in rows["prior"]}
        results[task] = {**rows, "ratios": ratios}
    write_result(args.name, {"threads": 1, "note": args.note, "results": results})


if __name__ == "__main__":
    main()
