"""torchrun with 2 gloo processes on CPU: `agd fit` equals a 1-process fit on the same global batch, and a
2-process `agd train` writes one log and one checkpoint and resumes (agd_envs/distributed.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, tiny_model_config

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.distributed import Distributed
from agd_envs.training import WorldModelTrainer, diffusion_loss, fit_segment_moments
from agd_envs.world_model import WorldModel

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_SET = [f"{k}={v}" for k, v in TINY_MODEL.items()]


def torchrun(*agd_args: str, processes: int = 2, script: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=<processes> -m agd_envs <agd_args>`` (or ``script``), one thread per process."""
    target = script if script is not None else ["-m", "agd_envs", *agd_args]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def two_shard_fit(steps: int, seed: int, global_batch: int) -> WorldModel:
    """One process doing what 2 ranks do: each shard draws half the global batch with its own generator, the
    two shards' gradients are averaged, one clipped AdamW step and one EMA update follow."""
    data = EpisodeDataset.open(default_dataset_path("Reacher"))
    torch.manual_seed(seed)
    model = WorldModel(tiny_model_config("Reacher"))
    trainer = WorldModelTrainer(model)
    shards = [torch.Generator().manual_seed(Distributed(rank=r, world_size=2).seed(seed)) for r in range(2)]
    model.normalizer.fit(data.statistics())
    fit_segment_moments(model, data, shards[0])  # rank 0's moments, broadcast to rank 1
    params = model.trainable_parameters()
    model.network.train()
    for _ in range(steps):
        grads = []
        for generator in shards:
            batch = data.sample_segments(global_batch // 2, model.config.horizon, generator=generator)
            grads.append(torch.autograd.grad(diffusion_loss(model, batch, generator), params, allow_unused=True))
        for p, g0, g1 in zip(params, *grads):
            p.grad = None if g0 is None else (g0 + g1) / 2
        torch.nn.utils.clip_grad_norm_(params, model.config.grad_clip)
        trainer.optimizer.step()
        trainer.update_ema()
        model.num_updates += 1
    return model


def test_two_process_fit_equals_a_one_process_fit_on_the_same_global_batch(tmp_path: Path) -> None:
    steps, seed = 6, 3
    torchrun("fit", "--task", "Reacher", "--dataset", str(default_dataset_path("Reacher")), "--steps", str(steps),
             "--seed", str(seed), "--out", str(tmp_path / "m2"), "--model-set", *MODEL_SET)  # fmt: skip
    fitted = WorldModel.load(tmp_path / "m2", task="Reacher").state_dict()
    reference = two_shard_fit(steps, seed, global_batch=TINY_MODEL["batch_size"]).state_dict()
    assert int(fitted["num_updates"]) == steps
    # Bit for bit: gloo sums 2 gradients in either order to the same float, and halving is exact.
    differ = [k for k in reference if not torch.equal(fitted[k], reference[k])]
    assert not differ, f"{len(differ)} of {len(reference)} tensors differ, e.g. {differ[:3]}"
    # ... and the fit really moved the weights (not two copies of the initial model).
    torch.manual_seed(seed)
    initial = WorldModel(tiny_model_config("Reacher")).state_dict()
    key = next(k for k in reference if k.startswith("network.") and reference[k].is_floating_point())
    assert not torch.equal(initial[key], fitted[key])


def test_a_global_count_that_does_not_split_evenly_is_refused() -> None:
    with pytest.raises(ValueError, match="imagination_batch=256 must be a multiple of the 3 processes"):
        Distributed(rank=1, world_size=3).share(256, "imagination_batch")
    assert Distributed(rank=1, world_size=2).share(256, "imagination_batch") == 128
    assert Distributed().seed(7) == 7 and Distributed(rank=1, world_size=2).seed(7) != 7


def test_every_rank_holds_the_same_agent_and_world_model_after_distributed_training(tmp_path: Path) -> None:
    out = tmp_path / "ranks.json"
    torchrun(script=[str(Path(__file__).with_name("_ranks_agree.py")), str(tmp_path / "run"), str(out)])
    report = json.loads(out.read_text())
    rank0, rank1 = report["fingerprints"]
    assert len(rank0) > 50  # weights, buffers and optimizer moments of the agent, the model and its trainer
    assert rank0 == rank1, [i for i, (a, b) in enumerate(zip(rank0, rank1)) if a != b][:5]
    assert report["draws"][0] != report["draws"][1]  # yet each rank drew its own segments


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "progress.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # ~40 s: two torchrun launches of 3 processes each on 2 shared cores
def test_two_process_train_writes_one_log_and_one_checkpoint_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "reacher-eag-s0"
    tiny = ["--iteration-steps", "200", "--eval-every", "200", "--checkpoint-every", "200", "--eval-episodes", "2",
            "--model-set", *MODEL_SET, "--set", "model_pretrain_updates=20", "model_updates_per_step=0.05",
            "agent_updates_per_step=0.02", "imagination_batch=32"]  # fmt: skip
    torchrun("train", "--task", "Reacher", "--guide", "eag", "--steps", "400", "--seed", "0", "--out", str(run), *tiny)
    first = _rows(run)
    assert [int(r["online_steps"]) for r in first] == [0, 200, 400]  # rank 0 alone logs: one row per evaluation
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["online_steps"] == 400

    done = torchrun("train", "--resume", "--steps", "600", "--out", str(run))
    rows = _rows(run)
    assert rows[:3] == first and [int(r["online_steps"]) for r in rows[3:]] == [600]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["online_steps"] == 600
    assert json.loads((run / "config.json").read_text())["steps"] == 600
    # One real dataset, collected by rank 0: real steps grow by exactly the online steps.
    assert int(rows[-1]["real_steps"]) - int(rows[0]["real_steps"]) == 600
    assert EpisodeDataset.open(run).num_steps >= int(rows[0]["real_steps"]) + 600 - 50  # Reacher episodes: 50 steps
    assert done.stdout.count("eval return") == 1  # rank 0 alone reports


def test_agd_train_set_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agd_envs.cli import main as agd_main

    for item, message in (("bogus=1", "expected FIELD=VALUE with FIELD a TrainerConfig field"),
                          ("model={}", "set model entries with --model-set/--reward-head instead")):  # fmt: skip
        with pytest.raises(SystemExit):
            agd_main(["train", "--task", "Reacher", "--set", item, "--out", str(tmp_path / "run")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
