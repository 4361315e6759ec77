"""Learning curves (paper Figure 2 style) and the final-return table (paper Table I layout) from run CSVs."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from agents.run_log import COLUMNS, CSV_NAME, REQUIRED_COLUMNS

DEFAULT_METRIC = "eval_return_mean"
"""The progress.csv column curves and tables show unless told otherwise."""
NON_METRICS = ("algo", "task", "seed", "real_steps")
"""progress.csv columns that name or place a row rather than measure it; ``--metric`` refuses them."""


@dataclass(frozen=True)
class Curve:
    """One run's evaluation curve (``returns``: the ``metric`` column's values, evaluation returns by default)."""

    algo: str
    task: str
    seed: int
    steps: np.ndarray
    returns: np.ndarray
    metric: str = DEFAULT_METRIC


def read_runs(paths: list[str | Path], metric: str = DEFAULT_METRIC) -> list[Curve]:
    """Read ``metric`` (a ``progress.csv`` column) at each row that has it, of each run directory (or CSV file) given."""
    import csv

    if metric not in COLUMNS or metric in NON_METRICS:
        names = ", ".join(c for c in COLUMNS if c not in NON_METRICS)
        raise ValueError(f"metric {metric!r} is not a progress.csv column; choose one of {names}")
    curves = []
    for path in map(Path, paths):
        csv_path = path / CSV_NAME if path.is_dir() else path
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: no such file; pass run directories written by `agd train`/`agd baseline` or their {CSV_NAME}")
        with csv_path.open(newline="") as f:
            every_row = list(csv.DictReader(f))
        if not every_row or set(REQUIRED_COLUMNS) - set(every_row[0]):
            raise ValueError(f"{csv_path}: not an agd progress log (columns {REQUIRED_COLUMNS})")
        rows = [r for r in every_row if r.get(metric)]
        if not rows:
            raise ValueError(f"{csv_path}: no row has a value of {metric!r} (an older log, or a column this run does not fill)")
        curves.append(Curve(
            algo=rows[0]["algo"], task=rows[0]["task"], seed=int(rows[0]["seed"]),
            steps=np.array([float(r["real_steps"]) for r in rows]),
            returns=np.array([float(r[metric]) for r in rows]), metric=metric,
        ))  # fmt: skip
    return curves


def relabel(curves: list[Curve], rules: list[str]) -> list[Curve]:
    """Rename algos by ``PATTERN=NAME`` rules (shell patterns, first match wins), e.g. ``agd-eag*=agd-eag``.

    Merges runs logged under different labels (before and after a default changed) into one row or curve;
    refuses a merge that would give one task and seed two runs under the new name.
    """
    parsed = []
    for rule in rules:
        pattern, sep, name = rule.partition("=")
        if not sep or not pattern or not name:
            raise ValueError(f"--label {rule!r}: write PATTERN=NAME, e.g. 'agd-eag*=agd-eag'")
        if not any(fnmatch.fnmatchcase(c.algo, pattern) for c in curves):
            raise ValueError(f"--label {rule!r}: no algo matches {pattern!r}; the algos are: {', '.join(sorted({c.algo for c in curves}))}")
        parsed.append((pattern, name))
    out = [dataclasses.replace(c, algo=next((n for p, n in parsed if fnmatch.fnmatchcase(c.algo, p)), c.algo)) for c in curves]
    seen: dict[tuple[str, str, int], str] = {}
    for before, after in zip(curves, out):
        key = (after.task, after.algo, after.seed)
        if key in seen:
            raise ValueError(f"--label gives {after.task} seed {after.seed} two {after.algo!r} runs ({seen[key]!r} and "
                             f"{before.algo!r}): pass one run per seed and label")
        seen[key] = before.algo
    return out


def _group(curves: list[Curve]) -> dict[str, dict[str, list[Curve]]]:
    groups: dict[str, dict[str, list[Curve]]] = defaultdict(lambda: defaultdict(list))
    for curve in curves:
        groups[curve.task][curve.algo].append(curve)
    return groups


def mean_and_stderr(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard error over seeds on the steps all seeds reached (``steps, mean, stderr``)."""
    length = min(len(c.steps) for c in curves)
    returns = np.stack([c.returns[:length] for c in curves])
    stderr = returns.std(axis=0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros(length)
    return curves[0].steps[:length], returns.mean(axis=0), stderr


def plot(curves: list[Curve], out: str | Path) -> Path:
    """One panel per task: mean ± standard error over seeds per algorithm; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(curves)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    every_algo = sorted({algo for algos in groups.values() for algo in algos})
    color = {algo: palette[i % len(palette)] for i, algo in enumerate(every_algo)}  # the same in every panel
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (task, algos) in zip(axes[0], sorted(groups.items())):
        for algo, runs in sorted(algos.items()):
            steps, mean, stderr = mean_and_stderr(runs)
            ax.plot(steps, mean, color=color[algo], label=f"{algo} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            ax.fill_between(steps, mean - stderr, mean + stderr, color=color[algo], alpha=0.25)
        ax.set_title(task)
        ax.set_xlabel("real environment steps")
        ax.set_ylabel("evaluation return" if curves[0].metric == DEFAULT_METRIC else curves[0].metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _check_last(last: int) -> None:
    if last < 1:
        raise ValueError(f"last={last}: the number of final evaluations to average must be at least 1 (1: the final one)")


def _score(curve: Curve, last: int) -> float:
    """A run's score: the mean of its last ``last`` evaluations."""
    return float(curve.returns[-last:].mean())


def _grid(curves: list[Curve], cell: Callable[[list[Curve]], str]) -> str:
    """Markdown table, tasks x algorithms, with ``cell(runs)`` for each pair that has runs ("–" otherwise)."""
    groups = _group(curves)
    algos = sorted({c.algo for c in curves})
    lines = ["| task | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for task, by_algo in sorted(groups.items()):
        cells = [cell(by_algo[algo]) if by_algo.get(algo) else "–" for algo in algos]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(curves: list[Curve], last: int = 1) -> str:
    """Markdown table (tasks x algorithms): each run's mean of its last ``last`` evaluations, mean ± s.e. over seeds."""
    _check_last(last)

    def cell(runs: list[Curve]) -> str:
        finals = np.array([_score(c, last) for c in runs])
        steps = min(c.steps[-1] for c in runs)
        first = min(c.steps[-last:][0] for c in runs)
        spread = f" ± {finals.std(ddof=1) / np.sqrt(len(finals)):.1f}" if len(finals) > 1 else ""  # no SE of one seed
        window = f"{first / 1000:.0f}-{steps / 1000:.0f}k" if last > 1 else f"{steps / 1000:.0f}k"
        return f"{finals.mean():.1f}{spread} (n={len(runs)}, {window})"

    return _grid(curves, cell)


def first_reach(curve: Curve, target: float) -> float:
    """Real steps at the run's first evaluation with a return >= ``target``; inf if none reached it."""
    hits = np.flatnonzero(curve.returns >= target)
    return float(curve.steps[hits[0]]) if len(hits) else float("inf")


def reach_table(curves: list[Curve], target: float) -> str:
    """Markdown table (tasks x algorithms): real steps until a run first evaluates at ``target`` or more.

    Each cell: the median over seeds (a run that never reached it counts as beyond its last step, so the median is
    "> N" when half or more did not), how many reached it, and each seed's step in seed order ("–": not reached).
    """

    def cell(runs: list[Curve]) -> str:
        runs = sorted(runs, key=lambda c: c.seed)
        steps = np.array([first_reach(c, target) for c in runs])
        median = float(np.median(steps))
        shown = f"{median / 1000:.0f}k" if np.isfinite(median) else f"> {min(c.steps[-1] for c in runs) / 1000:.0f}k"
        each = ", ".join(f"{s / 1000:.0f}k" if np.isfinite(s) else "–" for s in steps)
        return f"{shown} ({int(np.isfinite(steps).sum())} of {len(runs)}: {each})"

    return _grid(curves, cell)


def sign_flip_p_value(differences: np.ndarray) -> float:
    """Exact two-sided p of the paired sign-flip test: the share of the 2^n sign patterns whose |mean| reaches the observed one."""
    n = len(differences)
    if not 1 <= n <= 20:
        raise ValueError(f"{n} paired differences: the exact sign-flip test enumerates 2^n patterns, give 1 to 20")
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # every sign pattern, one per row
    means = np.abs(((1 - 2 * bits) * differences).mean(axis=1))
    return float(np.mean(means >= abs(differences.mean()) - 1e-12 * np.abs(differences).max(initial=0.0)))


def paired(curves: list[Curve], first: str, second: str, last: int = 1) -> str:
    """Markdown table per task: ``first`` minus ``second`` on the seeds both ran (mean ± s.e., t, sign-flip p, wins).

    ``first`` and ``second`` are algo labels or shell patterns over them (``agd-eag*`` also takes the runs labelled
    ``agd-eag-alpha0.1-ppo``); each side must hold at most one run per task and seed.
    """
    _check_last(last)
    if first == second:
        raise ValueError(f"--paired {first} {second}: name two different algos")
    known = sorted({c.algo for c in curves})
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for side in (first, second):
        if not fnmatch.filter(known, side):
            raise ValueError(f"no runs of algo {side!r} among the runs given; their algos are: {', '.join(known)}")
        scores[side] = defaultdict(dict)
        for curve in (c for c in curves if fnmatch.fnmatchcase(c.algo, side)):
            if curve.seed in scores[side][curve.task]:
                raise ValueError(f"{curve.task} seed {curve.seed} has two runs matching {side!r}: pass one run per seed")
            scores[side][curve.task][curve.seed] = _score(curve, last)
    lines = [f"| task | {first} − {second} | seeds | t | sign-flip p | {first} ahead |", "|---" * 6 + "|"]
    for task in sorted(scores[first].keys() & scores[second].keys()):
        a, b = scores[first][task], scores[second][task]
        seeds = sorted(a.keys() & b.keys())
        if not seeds:
            continue
        diff = np.array([a[s] - b[s] for s in seeds])
        stderr = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        t = diff.mean() / stderr if len(diff) > 1 and stderr > 0 else float("nan")
        lines.append(f"| {task} | {diff.mean():.1f} ± {stderr:.1f} | {', '.join(map(str, seeds))} | {t:.2f} (df {len(diff) - 1}) "
                     f"| {sign_flip_p_value(diff):.3f} | {int((diff > 0).sum())} of {len(diff)} |")
    if len(lines) == 2:
        raise ValueError(f"no task has a seed run by both {first!r} and {second!r}: pair runs by their seed")
    return "\n".join(lines)
