"""Run logs: one CSV row per evaluation (the columns every algorithm writes) and TensorBoard scalars."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

CSV_NAME = "progress.csv"
REQUIRED_COLUMNS = (
    "algo", "task", "seed", "real_steps", "wall_seconds", "steps_per_second",
    "eval_return_mean", "eval_return_std", "eval_return_stderr", "eval_episodes",
    "model_loss", "actor_loss", "critic_loss", "entropy", "imagined_reward", "imagined_advantage",
)  # fmt: skip
"""CSV columns shared by ``agd train`` and ``agd baseline``, the ones ``agd plot``/``agd table`` need."""
PHASES = ("env", "model", "imagine", "agent", "eval")
"""Phases of an ``agd train`` iteration whose cumulative wall seconds are logged (``seconds_<phase>``)."""
COLUMNS = REQUIRED_COLUMNS + ("online_steps", "model_skipped", "eval_online_return_mean", "rollout_return_mean", "rollout_episodes") + tuple(f"seconds_{phase}" for phase in PHASES)
"""All columns written; ``online_steps`` (real steps collected after the warm start or prefill, which
``real_steps`` includes), ``model_skipped`` (world-model updates refused so far, agd_envs.training.SpikeGuard),
``eval_online_return_mean`` (the online actor's return where ``eval_return_mean`` is the averaged actor's,
``A2CConfig.actor_average``), ``rollout_return_mean`` / ``rollout_episodes`` (the real episodes the exploring policy
finished since the previous row: their mean return and count) and the timing columns are empty for baselines and for logs of older versions."""


class RunLog:
    """Appends rows to ``<run>/progress.csv`` (and TensorBoard when installed); truncatable on resume."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / CSV_NAME
        self._tensorboard, self._tb = tensorboard, None

    def rows(self) -> list[dict[str, str]]:
        """The rows written so far."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def truncate(self, num_rows: int) -> None:
        """Keep the first ``num_rows`` rows (resuming from a checkpoint taken when there were that many)."""
        rows = self.rows()[:num_rows]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (missing columns left empty) and mirror numeric values to TensorBoard."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown log columns {sorted(unknown)}; known: {COLUMNS}")
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        if self._tensorboard and self._tb is None:  # opened on first write: a refused run leaves no file
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tb"))
            except ImportError:  # tensorboard is an optional extra
                self._tensorboard = False
        if self._tb is not None:
            step = int(row["real_steps"])
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("real_steps", "seed"):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
