"""One harness for AGD and the model-free baselines: shared CSV columns, `agd plot`/`agd table`/`agd eval`."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agd_envs.cli import main as agd_main
from agents.plotting import Curve, first_reach, mean_and_stderr, paired, reach_table, read_runs, relabel, sign_flip_p_value, table
from agents.run_log import COLUMNS
from test_trainer import tiny_config  # tests/ is on sys.path (pytest's rootdir-less import mode)

ROOT = Path(__file__).resolve().parents[1]
AGD_RUN = ROOT / "docs" / "results" / "reacher" / "reacher-eag-s0"


def test_mean_and_standard_error_over_seeds() -> None:
    steps = np.array([0.0, 10.0, 20.0])
    curves = [Curve("a", "Reacher", s, steps[: 2 + s % 2], np.array([1.0, 2.0, 4.0])[: 2 + s % 2] + s) for s in range(3)]
    x, mean, stderr = mean_and_stderr(curves)  # seeds 0 and 2 reach step 20, seed 1 does not: cut to 2 points
    np.testing.assert_array_equal(x, [0.0, 10.0])
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(stderr, [1.0 / np.sqrt(3)] * 2)  # std of (0, 1, 2) is 1


def test_table_scores_each_run_by_its_last_evaluations() -> None:
    steps = np.array([80_000.0, 90_000.0, 100_000.0])
    curves = [Curve("agd-none", "Hopper", s, steps, np.array([1000.0, 3000.0, 200.0 * (s + 1)])) for s in range(3)]
    # final evaluations 200 / 400 / 600: mean 400, s.e. 200 / sqrt(3); last two: 1600 / 1700 / 1800
    assert "| Hopper | 400.0 ± 115.5 (n=3, 100k) |" in table(curves)
    assert "| Hopper | 1700.0 ± 57.7 (n=3, 90-100k) |" in table(curves, last=2)
    assert "| Hopper | 1466.7 ± 38.5 (n=3, 80-100k) |" in table(curves, last=5)  # fewer evaluations than K: all of them
    with pytest.raises(ValueError, match="last=0: the number of final evaluations to average must be at least 1"):
        table(curves, last=0)


def test_sign_flip_p_value_counts_the_sign_patterns_as_extreme_as_observed() -> None:
    # (1, 2, 3): only all-plus and all-minus reach |mean| 2 -> 2 of 8; five same-sign seeds -> 2 of 32
    assert sign_flip_p_value(np.array([1.0, 2.0, 3.0])) == 0.25
    assert sign_flip_p_value(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == 2 / 32
    assert sign_flip_p_value(np.array([1.0, -1.0])) == 1.0  # every pattern has |mean| >= 0
    # (4, 1, 1), |mean| 2: the patterns give |4 +- 1 +- 1| / 3 = 2, 4/3, 4/3, 2/3, each twice (mirrored): 2 of 8 reach 2
    assert sign_flip_p_value(np.array([4.0, 1.0, 1.0])) == 2 / 8
    assert sign_flip_p_value(np.array([4.0, -1.0, 1.0])) == 6 / 8  # |mean| 4/3: reached by 2, 4/3, 4/3 and mirrors
    with pytest.raises(ValueError, match="21 paired differences: the exact sign-flip test enumerates 2\\^n patterns"):
        sign_flip_p_value(np.ones(21))


def test_paired_compares_two_algos_seed_by_seed() -> None:
    steps = np.array([90_000.0, 100_000.0])
    curves = [Curve("agd-eag-alpha0.1-ppo", "Hopper", 0, steps, np.array([0.0, 500.0])),
              Curve("agd-eag-ppo", "Hopper", 1, steps, np.array([0.0, 900.0])),  # the same guide under a newer label
              Curve("agd-eag-ppo", "Hopper", 2, steps, np.array([0.0, 300.0]))]  # fmt: skip
    curves += [Curve("agd-none-ppo", "Hopper", s, steps, np.array([100.0, 200.0 * (s + 1)])) for s in range(4)]
    # differences on seeds 0-2: 500-200, 900-400, 300-600 = 300, 500, -300: mean 166.7, sd 416.3, s.e. 240.4;
    # sign patterns |+-300 +-500 +-300| = 1100, 500, 100, 500 (each twice): 6 of 8 reach 500 = 3 x 166.7
    out = paired(curves, "agd-eag*", "agd-none-ppo")
    assert "| Hopper | 166.7 ± 240.4 | 0, 1, 2 | 0.69 (df 2) | 0.750 | 2 of 3 |" in out  # seed 3 has no EAG twin
    with pytest.raises(ValueError, match="no runs of algo 'agd-sag' among the runs given; their algos are: agd-eag-alpha0.1-ppo"):
        paired(curves, "agd-sag", "agd-none-ppo")
    with pytest.raises(ValueError, match="Hopper seed 1 has two runs matching 'agd-none-ppo': pass one run per seed"):
        paired(curves + [curves[4]], "agd-eag*", "agd-none-ppo")
    with pytest.raises(ValueError, match="no task has a seed run by both"):
        paired(curves[1:3] + curves[3:4], "agd-eag*", "agd-none-ppo")


def test_relabel_merges_runs_logged_under_two_labels() -> None:
    steps = np.array([100_000.0])
    curves = [Curve("agd-eag-alpha0.1-ppo", "Hopper", 0, steps, np.array([500.0])),
              Curve("agd-eag-ppo", "Hopper", 1, steps, np.array([900.0])),
              Curve("agd-none-ppo", "Hopper", 0, steps, np.array([200.0]))]  # fmt: skip
    merged = relabel(curves, ["agd-eag*=agd-eag"])
    assert [c.algo for c in merged] == ["agd-eag", "agd-eag", "agd-none-ppo"]
    assert "| Hopper | 700.0 ± 200.0 (n=2, 100k) | 200.0 (n=1, 100k) |" in table(merged)  # mean 700, sd 282.8 / sqrt 2
    assert relabel(curves, []) == curves
    with pytest.raises(ValueError, match="--label 'agd-eag': write PATTERN=NAME"):
        relabel(curves, ["agd-eag"])
    with pytest.raises(ValueError, match="no algo matches 'agd-sag\\*'; the algos are: agd-eag-alpha0.1-ppo"):
        relabel(curves, ["agd-sag*=agd-sag"])
    with pytest.raises(ValueError, match="Hopper seed 0 two 'agd' runs \\('agd-eag-alpha0.1-ppo' and 'agd-none-ppo'\\)"):
        relabel(curves, ["agd-*=agd"])


def test_reach_table_counts_real_steps_to_a_return() -> None:
    steps = np.array([10_000.0, 20_000.0, 30_000.0])
    fast = Curve("agd-none", "HalfCheetah", 0, steps, np.array([100.0, 2600.0, 2000.0]))  # dips after: the first hit counts
    assert first_reach(fast, 2545.0) == 20_000.0 and first_reach(fast, 2600.0) == 20_000.0
    assert first_reach(fast, 3000.0) == float("inf")
    curves = [fast,
              Curve("agd-none", "HalfCheetah", 1, steps, np.array([3000.0, 0.0, 0.0])),
              Curve("agd-none", "HalfCheetah", 2, steps, np.array([0.0, 0.0, 0.0])),
              Curve("ppo", "HalfCheetah", 0, steps, np.array([0.0, 0.0, 2545.0])),
              Curve("ppo", "HalfCheetah", 1, steps, np.array([0.0, 0.0, 0.0]))]  # fmt: skip
    out = reach_table(curves, 2545.0)
    assert out.splitlines()[0] == "| task | agd-none | ppo |"
    # agd-none: 20k, 10k, never -> median 20k; ppo: 30k, never -> median of (30k, inf) is beyond the last step
    assert "| HalfCheetah | 20k (2 of 3: 20k, 10k, –) | > 30k (1 of 2: 30k, –) |" in out


def test_metric_reads_another_column_and_names_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    with (AGD_RUN / "progress.csv").open(newline="") as f:
        logged = [(float(r["real_steps"]), float(r["entropy"])) for r in csv.DictReader(f) if r["entropy"]]
    curve = read_runs([AGD_RUN], "entropy")[0]
    assert curve.metric == "entropy" and len(curve.steps) == len(logged) > 5  # the first row (step 0) has no entropy
    np.testing.assert_array_equal(np.c_[curve.steps, curve.returns], np.array(logged))
    agd_main(["table", str(AGD_RUN), "--metric", "entropy", "--last", "3"])
    assert f"| Reacher | {np.mean([e for _, e in logged[-3:]]):.1f} (n=1, " in capsys.readouterr().out
    with pytest.raises(ValueError, match="'entropie' is not a progress.csv column; choose one of .*entropy"):
        read_runs([AGD_RUN], "entropie")
    with pytest.raises(ValueError, match="no row has a value of 'rollout_return_mean'"):
        read_runs([AGD_RUN], "rollout_return_mean")  # a log written before the column existed


def test_baseline_logs_the_agd_columns_and_plots_with_agd_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, scratch = tmp_path / "reacher-ppo-s0", tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # SB3's default logger would make SB3-<date> here
    agd_main(["baseline", "ppo", "--task", "Reacher", "--steps", "1024", "--seed", "0", "--out", str(out),
              "--eval-every", "512"])  # fmt: skip
    assert list(scratch.glob("SB3-*")) == []
    with (out / "progress.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert [int(r["real_steps"]) for r in rows] == [0, 512, 1024] and {r["algo"] for r in rows} == {"ppo"}
    assert all(-200 < float(r["eval_return_mean"]) < 0 for r in rows)  # Reacher returns are negative
    with pytest.raises(SystemExit) as exit_info:  # the same --out again: refused, nothing overwritten
        agd_main(["baseline", "ppo", "--task", "Reacher", "--steps", "1024", "--out", str(out)])
    assert exit_info.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert len(read_runs([out])[0].steps) == 3

    png = tmp_path / "curves.png"
    agd_main(["plot", str(AGD_RUN), str(out), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()
    agd_main(["table", str(AGD_RUN), str(out)])
    markdown = capsys.readouterr().out
    assert markdown.splitlines()[0] == "| task | agd-eag | ppo |"
    final = float(read_runs([AGD_RUN])[0].returns[-1])
    assert f"| Reacher | {final:.1f} (n=1, 10k) |" in markdown  # one seed: no standard error shown
    agd_main(["table", str(AGD_RUN), str(out), "--paired", "agd-eag", "ppo"])  # both seed 0: one difference
    ppo_final = float(read_runs([out])[0].returns[-1])
    assert f"| Reacher | {final - ppo_final:.1f} ± nan | 0 | nan (df 0) | 1.000 |" in capsys.readouterr().out
    agd_main(["table", str(AGD_RUN), str(out), "--label", "ppo=sb3-ppo", "--label", "agd-*=agd"])
    assert capsys.readouterr().out.splitlines()[0] == "| task | agd | sb3-ppo |"
    agd_main(["table", str(AGD_RUN), "--reach", "-1000"])  # every Reacher return beats -1000: reached at once
    first = read_runs([AGD_RUN])[0].steps[0]
    assert f"| Reacher | {first / 1000:.0f}k (1 of 1: {first / 1000:.0f}k) |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        agd_main(["table", str(AGD_RUN), "--reach", "0", "--paired", "agd-eag", "ppo"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_eval_reports_the_checkpointed_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.trainer import AGDTrainer

    run = tmp_path / "run"
    AGDTrainer(tiny_config(steps=200, checkpoint_every=200), run, progress=False).train()
    capsys.readouterr()
    agd_main(["eval", str(run), "--episodes", "2", "--seed", "10000"])
    printed = capsys.readouterr().out
    last = read_runs([run])[0]
    # The checkpointed agent on the trainer's evaluation episodes (seeds 10_000 + seed 0, 2 episodes):
    # exactly the return the trainer logged last.
    assert printed.startswith(f"Reacher: return {last.returns[-1]:.1f} ± ") and "2 episodes" in printed
