"""The Table I queue resumes what it can and restarts what it cannot (benchmarks/table1.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table1():  # benchmarks/ is a script folder, not an installed package: load the file itself
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path: Path) -> None:
    table1 = _table1()
    out = tmp_path / "hopper-reward-s1"
    (out / "data").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    assert table1.clear_unresumable(out, "reward") and not out.exists()
    argv = table1.command("Hopper", "reward", 1, 100_000, out)
    assert "--resume" not in argv and argv[argv.index("--guide") + 1] == "reward"
    # Fair accounting: 5k random prefill + 95k online steps = the 100k real steps PPO gets.
    assert argv[argv.index("--steps") + 1] == "95000" and argv[argv.index("--warm-start") + 1] == "none"
    oracle = table1.command("Hopper", "oracle", 0, 100_000, tmp_path / "o")
    assert oracle[oracle.index("--world-model") + 1] == "oracle" and oracle[oracle.index("--guide") + 1] == "none"


def test_a_checkpointed_run_resumes_and_ppo_always_restarts(tmp_path: Path) -> None:
    table1 = _table1()
    out = tmp_path / "hopper-eag-s0"
    (out / "checkpoint").mkdir(parents=True)
    assert not table1.clear_unresumable(out, "eag") and (out / "checkpoint").exists()
    assert table1.command("Hopper", "eag", 0, 100_000, out) == ["agd", "train", "--resume", "--out", str(out)]
    assert table1.clear_unresumable(out, "ppo") and not out.exists()
