"""`agd sweep` (agd_envs/sweep.py): the runs' commands and resume decisions, and Reacher sweeps on a local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL

from agd_envs.cli import main as agd_main
from agd_envs.sweep import Job, SweepConfig, clear_unresumable, command, is_finished, run_one, run_sweep
from agents.plotting import read_runs, table

TINY_TRAIN = ("--iteration-steps 200 --eval-every 200 --checkpoint-every 200 --eval-episodes 2 --model-set "
              + " ".join(f"{k}={v}" for k, v in TINY_MODEL.items())
              + " --set model_pretrain_updates=20 model_updates_per_step=0.05 agent_updates_per_step=0.02 imagination_batch=32")  # fmt: skip


def _checkpoint(run: Path, online_steps: int) -> None:
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text(json.dumps({"online_steps": online_steps}))


def test_runs_follow_the_table1_protocol_and_resume_what_they_can(tmp_path: Path) -> None:
    config = SweepConfig(tasks=("hopper",), algos=("eag", "oracle", "ppo"), seeds=(0,), steps=100_000, out=tmp_path)
    assert [job.name for job in config.grid()] == ["hopper-eag-s0", "hopper-oracle-s0", "hopper-ppo-s0"]
    eag, oracle, ppo = config.grid()
    argv = command(eag, config, tmp_path / eag.name)
    # Fair accounting: 5k random prefill + 95k online steps = the 100k real steps PPO gets.
    assert argv[:2] == ["train", "--task"] and argv[argv.index("--steps") + 1] == "95000"
    assert argv[argv.index("--warm-start") + 1] == "none" and argv[argv.index("--prefill-steps") + 1] == "5000"
    argv = command(oracle, config, tmp_path / oracle.name)
    assert argv[argv.index("--world-model") + 1] == "oracle" and argv[argv.index("--guide") + 1] == "none"
    assert command(ppo, config, tmp_path / ppo.name)[:4] == ["baseline", "ppo", "--task", "Hopper"]

    run = tmp_path / eag.name  # killed before its first checkpoint: starts over
    (run / "data").mkdir(parents=True)
    assert clear_unresumable(eag, run) and not run.exists()
    _checkpoint(run, 40_000)  # checkpointed half-way: resumes, to the sweep's steps
    assert not clear_unresumable(eag, run) and not is_finished(eag, run, config)
    assert command(eag, config, run) == ["train", "--resume", "--out", str(run), "--steps", "95000"]
    (run / "checkpoint" / "state.json").write_text(json.dumps({"online_steps": 95_000}))
    assert is_finished(eag, run, config)
    (tmp_path / ppo.name).mkdir()  # a baseline cannot resume: only a saved model means finished
    assert not is_finished(ppo, tmp_path / ppo.name, config) and clear_unresumable(ppo, tmp_path / ppo.name)


def test_bad_sweeps_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown algorithm\(s\) \['dqn'\]; choose from"):
        SweepConfig(tasks=("Hopper",), algos=("dqn",), seeds=(0,), steps=10_000, out=tmp_path)
    with pytest.raises(ValueError, match="steps=3000 must exceed prefill_steps=5000"):
        SweepConfig(tasks=("Hopper",), algos=("eag",), seeds=(0,), steps=3000, out=tmp_path)
    with pytest.raises(ValueError, match="Pong"):
        SweepConfig(tasks=("Pong",), algos=("eag",), seeds=(0,), steps=10_000, out=tmp_path)


def test_a_failing_run_reports_its_exit_code_and_keeps_its_error_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    argv = ["train", "--task", "Reacher", "--set", "bogus=1", "--out", str(tmp_path / "run")]
    code, minutes = run_one(agd_main, argv, str(log), threads=1)
    assert code == 2 and minutes < 1
    text = log.read_text()
    assert text.startswith("$ agd train --task Reacher") and "expected FIELD=VALUE with FIELD a TrainerConfig field" in text


def _shell_glob(directory: Path) -> list[Path]:
    """``directory/*`` as the shell expands it (dot-entries left out)."""
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _reacher_sweep(out: Path, steps: int) -> SweepConfig:
    return SweepConfig(tasks=("Reacher",), algos=("eag", "none"), seeds=(0, 1), steps=steps, out=out, prefill_steps=200,
                       train_args=tuple(TINY_TRAIN.split()), num_cpus=2)  # fmt: skip


@pytest.mark.slow  # ~17 s, most of it Ray's start and its workers' imports
def test_a_2x2_reacher_sweep_on_a_local_ray_finishes_with_4_runs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    config = _reacher_sweep(tmp_path / "sweep", steps=600)
    status = run_sweep(config, agd_main)
    assert sorted(status) == ["reacher-eag-s0", "reacher-eag-s1", "reacher-none-s0", "reacher-none-s1"]
    assert all(line.startswith("done") for line in status.values()), status
    runs = _shell_glob(config.out)  # what `agd table DIR/*` reads: run directories only
    assert [p.name for p in runs] == sorted(status)
    curves = read_runs(runs)
    assert {(c.algo, c.seed) for c in curves} == {("agd-eag", 0), ("agd-eag", 1), ("agd-none", 0), ("agd-none", 1)}
    assert all(c.steps[-1] == 600 for c in curves)  # the 200 prefill steps counted in real_steps
    assert "agd-eag" in table(curves)


@pytest.mark.slow  # ~45 s: two launches of the CLI, each starting Ray
def test_a_killed_sweep_relaunched_continues_without_redoing_finished_runs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    config = _reacher_sweep(tmp_path / "sweep", steps=1000)
    argv = [sys.executable, "-m", "agd_envs", "sweep", "--tasks", "Reacher", "--guides", "eag", "none", "--seeds", "0", "1",
            "--steps", "1000", "--prefill-steps", "200", "--num-cpus", "2", "--out", str(config.out), "--train-args", TINY_TRAIN]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    finished: list[Job] = []
    while not finished and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
        finished = [job for job in config.grid() if is_finished(job, config.out / job.name, config)]
    sweep.send_signal(signal.SIGTERM)  # mid-way: Ray stops the runs in flight
    sweep.wait(timeout=60)
    finished = [job for job in config.grid() if is_finished(job, config.out / job.name, config)]
    assert 1 <= len(finished) < 4, f"kill came too late or never: {len(finished)} runs finished"
    stamps = {job.name: (config.out / job.name / "progress.csv").stat().st_mtime_ns for job in finished}

    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 of 4 runs finished" in done.stdout
    for name in stamps:
        assert f"{name}: already finished" in done.stdout
        assert (config.out / name / "progress.csv").stat().st_mtime_ns == stamps[name], f"{name} was redone"
    assert all(is_finished(job, config.out / job.name, config) for job in config.grid())
    assert all(c.steps[-1] == 1000 for c in read_runs(_shell_glob(config.out)))
