"""Run two iterations of a tiny distributed Reacher ``AGDTrainer`` and report whether every rank holds the same state.

Usage (tests/test_distributed.py): ``torchrun --standalone --nproc_per_node=2 tests/_ranks_agree.py RUN_DIR OUT.json``.
Rank 0 writes ``{"fingerprints": [...], "draws": [...]}``: per rank, one number per tensor of the agent's and the
world model's state (weights, buffers, optimizer moments), and the sum of the last start states the rank imagined from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY_MODEL  # noqa: E402

from agd_envs.distributed import distributed_from_env  # noqa: E402
from agents.trainer import AGDTrainer, TrainerConfig  # noqa: E402


def fingerprint(state: object) -> list[float]:
    """One float64 sum per tensor of a nested state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [float(state.double().sum())] if state.is_floating_point() else [float(state.sum())]
    if isinstance(state, dict):
        return [x for key in sorted(state, key=str) for x in fingerprint(state[key])]
    if isinstance(state, (list, tuple)):
        return [x for item in state for x in fingerprint(item)]
    return []


def main(run_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    config = TrainerConfig.for_task(
        "Reacher", steps=400, iteration_steps=200, eval_every=200, checkpoint_every=200, eval_episodes=2,
        model_pretrain_updates=10, model_updates_per_step=0.05, agent_updates_per_step=0.02, imagination_batch=32,
        model=TINY_MODEL,
    )  # fmt: skip
    with distributed_from_env("cpu") as ranks:
        trainer = AGDTrainer(config, run_dir, progress=False, distributed=ranks)
        trainer.train()
        state = fingerprint(trainer.agent.state_dict()) + fingerprint(trainer.model.state_dict())
        state += fingerprint(trainer.model_trainer.state_dict())
        draw = float(trainer.generator.get_state().double().sum())  # each rank's own stream of segments
        gathered: list[object] = [None] * ranks.world_size
        dist.all_gather_object(gathered, (state, draw))
        if ranks.is_main:
            Path(out).write_text(json.dumps({"fingerprints": [g[0] for g in gathered], "draws": [g[1] for g in gathered]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
