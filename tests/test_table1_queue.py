"""benchmarks/table1.py, now a wrapper of `agd sweep`: it skips the runs already complete in --results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agd_envs.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[1]


def _table1():  # benchmarks/ is a script folder, not an installed package: load the file itself
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_complete_in_results_are_skipped_and_the_rest_go_to_the_sweep(tmp_path: Path) -> None:
    table1 = _table1()
    config = SweepConfig(tasks=("Hopper",), algos=("eag", "ppo"), seeds=(0, 1), steps=100_000, out=tmp_path / "work",
                         prefill_steps=table1.PREFILL_STEPS)  # fmt: skip
    results = tmp_path / "results"
    for name, last in (("hopper-eag-s0", 100_000), ("hopper-eag-s1", 45_000)):
        (results / name).mkdir(parents=True)
        (results / name / "progress.csv").write_text(f"real_steps,eval_return_mean\n0,1.0\n{last},2.0\n")
    assert table1.finished_steps(results / "hopper-eag-s1" / "progress.csv") == 45_000
    pending = [job.name for job in table1.pending_jobs(config, results)]
    assert pending == ["hopper-eag-s1", "hopper-ppo-s0", "hopper-ppo-s1"]  # the work dirs' names are unchanged
    table1.copy_result(_run(tmp_path / "work" / "hopper-ppo-s0"), results)
    assert (results / "hopper-ppo-s0" / "progress.csv").read_text() == "real_steps\n100000\n"


def _run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "progress.csv").write_text("real_steps\n100000\n")
    return path
