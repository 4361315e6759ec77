"""What re-reading a growing dataset costs: ``EpisodeDataset.open`` against ``EpisodeDataset.reopen``, same run.

``agd train`` reads its dataset once per iteration (every 500 real steps on Reacher, 1000 elsewhere). ``open`` reads
and checks every episode group of main_data.hdf5; ``reopen`` reuses the episodes an earlier read already holds and
reads only what was committed or journaled since. Here nothing was added in between, so ``reopen`` times its fixed
part (metadata, journal, the episode count, rebuilding the flat arrays). Median CPU seconds of ``--repeats`` calls
each after a warm-up call (benchmarks/_common.py), so a machine shared with training runs does not inflate them.

Run (repo root): python3 benchmarks/dataset_reopen.py --tasks Reacher Hopper [--paths RUN/data ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path

try:
    from benchmarks._common import median_seconds, write_result
except ImportError:  # run as a script from the repo root
    from _common import median_seconds, write_result


def measure(path: Path, repeats: int) -> dict[str, float | int | str]:
    """open / reopen seconds of one dataset, their ratio and its size."""
    data = EpisodeDataset.open(path)
    open_s = median_seconds(lambda: EpisodeDataset.open(path), repeats)
    reopen_s = median_seconds(data.reopen, repeats)
    return {"dataset": str(path), "task": data.task.name, "episodes": data.num_episodes, "steps": data.num_steps,
            "open_s": round(open_s, 4), "reopen_s": round(reopen_s, 4), "open_over_reopen": round(open_s / reopen_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["Reacher", "Hopper"], help="shipped datasets to time")
    parser.add_argument("--paths", nargs="*", default=[], type=Path, help="other datasets (e.g. a run's data/)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="dataset_reopen")
    args = parser.parse_args()
    paths = [default_dataset_path(task) for task in args.tasks] + args.paths
    write_result(args.name, {"repeats": args.repeats, "datasets": [measure(p, args.repeats) for p in paths]})


if __name__ == "__main__":
    main()
