"""The crash-safe append-only dataset writer (the design is in agd_envs/datasets.py) and ``repair``."""

from __future__ import annotations

import os
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from agd_envs import _journal as J
from agd_envs._journal import DatasetError
from agd_envs.dataset_metadata import (DATASET_ID_RE, PathLike, check_schema, default_dataset_id, infer_task,
                                       new_metadata, resolve_data_dir, space_dtype)
from agd_envs.tasks import Task, get_task

COMMIT_SECONDS = 2.0
"""Default ``checkpoint_seconds``: what Minari sees (main_data.hdf5) lags the journal by about this much.
Measured (benchmarks/results/commit_cost.json): a commit of 10 Hopper episodes costs 12 ms at 20k steps
(4 MB), 37 ms at 200k (40 MB), 0.31 s at 1M (200 MB), so at the shipped datasets' size a commit every
2 s costs < 1% of the time (the collection throughput change was within run-to-run noise)."""
MAX_COMMIT_SHARE = 0.05
"""Timed commits take at most this share of the writer's time: after a commit of d seconds the next one
waits at least d / MAX_COMMIT_SHARE. A commit copies the whole file, so on large datasets the lag grows
(about 6 s at 1M Hopper steps) and collection stays O(N) rather than O(N^2)."""


# --------------------------------------------------------------------------------------- validation
def _numbers(where: str, name: str, value: Any, kinds: str = "iuf") -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{where}: `{name}` is not an array of numbers ({e}). Pass a numpy array.") from None
    if array.dtype.kind not in kinds:
        raise DatasetError(
            f"{where}: `{name}` has dtype {array.dtype}, expected real numbers (float or int). "
            "Pass a numeric array, not strings, complex numbers or objects."
        )
    return array


def _cast_finite(where: str, name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = array.astype(dtype)
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        cause = "NaN or inf" if not np.isfinite(array[first]) else f"too large for {dtype.name}"
        raise DatasetError(
            f"{where}: `{name}` has {int(bad.sum())} non-finite value(s), the first at index {first} "
            f"({cause}). Drop or fix this episode before storing it."
        )
    return out


def _flags(where: str, name: str, value: Any) -> np.ndarray:
    array = _numbers(where, name, value, kinds="biuf")
    if array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
        raise DatasetError(f"{where}: `{name}` must hold booleans (or 0/1), got values {np.unique(array)[:5]}.")
    return array.astype(bool)


def _validate(where: str, task: Task, obs_dtype: np.dtype, observations: Any, actions: Any, rewards: Any,
              terminations: Any, truncations: Any, seed: Any) -> dict[str, np.ndarray]:
    obs, act, rew = (_numbers(where, n, v) for n, v in
                     (("observations", observations), ("actions", actions), ("rewards", rewards)))
    term, trunc = _flags(where, "terminations", terminations), _flags(where, "truncations", truncations)
    if act.ndim != 2 or act.shape[0] < 1 or act.shape[1] != task.act_dim:
        raise DatasetError(
            f"{where}: `actions` has shape {act.shape}, expected (n, {task.act_dim}) with n >= 1 for "
            f"{task.name}. Pass one action row per step."
        )
    n = act.shape[0]
    expected = {"observations": (obs, (n + 1, task.obs_dim), "n+1 rows s_0..s_n, including the final one"),
                "rewards": (rew, (n,), "one reward per step"),
                "terminations": (term, (n,), "one flag per step"),
                "truncations": (trunc, (n,), "one flag per step")}
    for name, (array, shape, hint) in expected.items():
        if array.shape != shape:
            raise DatasetError(
                f"{where}: `{name}` has shape {array.shape}, expected {shape} (n={n} steps from `actions`, "
                f"obs_dim={task.obs_dim} for {task.name}). Pass {hint}."
            )
    done = term | trunc
    if done[:-1].any():
        raise DatasetError(
            f"{where}: step {int(np.flatnonzero(done[:-1])[0])} of {n} is terminated or truncated but is not "
            "the last step. Split the trajectory into one episode per done flag."
        )
    if not done[-1]:
        raise DatasetError(
            f"{where}: neither terminations[-1] nor truncations[-1] is set. An episode cut by the step "
            "budget is stored with truncations[-1]=True (Minari's convention); set it."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= int(seed) < 2**63):
        raise DatasetError(f"{where}: seed {seed!r} is not an int in [0, 2**63) or None. Pass the reset seed.")
    return {"observations": _cast_finite(where, "observations", obs, obs_dtype),
            "actions": _cast_finite(where, "actions", act, np.dtype(np.float32)),
            "rewards": _cast_finite(where, "rewards", rew, np.dtype(np.float64)),
            "terminations": term, "truncations": trunc}


class DatasetWriter:
    """Appends episodes to a dataset, crash-safely (see agd_envs/datasets.py); use it as a context manager.

    :param path: dataset root (created if missing), or an existing dataset's root / data dir.
    :param task: task name or :class:`~agd_envs.tasks.Task`; an existing dataset must be of this task.
    :param obs_dtype: storage dtype of observations: float32 for a new dataset unless given;
        an existing dataset keeps its own (giving another one is an error).
    :param policy: stored as Minari's ``algorithm_name``.
    :param dataset_id: Minari id ``namespace/name-vN``; default ``agd/<root name>-v0``.
    :param checkpoint_every: also commit the journal to main_data.hdf5 every this many episodes (None:
        by time only). Commits copy the HDF5 file, so very small values cost O(N^2) I/O.
    :param checkpoint_seconds: commit when this long has passed since the last commit, or longer when a
        commit got expensive (``MAX_COMMIT_SHARE``); None: never by time.
    :param overwrite: delete an existing dataset at ``path`` first (never anything that is not a dataset).
    """

    def __init__(self, path: PathLike, task: str | Task, *, obs_dtype: Any = None, policy: str = "unknown",
                 author: str = "agd-envs", description: str = "", dataset_id: str | None = None,
                 checkpoint_every: int | None = None, checkpoint_seconds: float | None = COMMIT_SECONDS,
                 overwrite: bool = False) -> None:
        self.task = get_task(task)
        self.checkpoint_every, self.checkpoint_seconds = checkpoint_every, checkpoint_seconds
        data_dir = J.find_data_dir(path)
        if data_dir is not None and overwrite and (data_dir / J.METADATA_FILE).exists():
            J.Journal(data_dir / J.JOURNAL_FILE).close()  # refuses while another writer holds the dataset
            trash = data_dir.with_name(f".data.old-{os.getpid()}")
            os.rename(data_dir, trash)  # a kill now leaves no dataset, never half of one
            shutil.rmtree(trash)
            data_dir = None
        if data_dir is None:
            dtype = np.dtype(obs_dtype if obs_dtype is not None else np.float32)
            if dtype not in (np.float32, np.float64):
                raise DatasetError(f"{path}: obs_dtype {dtype} is not supported. Use np.float32 or np.float64.")
            dataset_id = dataset_id or default_dataset_id(Path(path))
            if not DATASET_ID_RE.fullmatch(dataset_id):
                raise DatasetError(
                    f"{path}: dataset_id {dataset_id!r} is not a Minari id. Use the form 'namespace/name-v0'."
                )
            meta = new_metadata(self.task, dtype, dataset_id, policy, author, description)
            data_dir = self._create(Path(path), meta)
        self.data_dir = data_dir
        self.path = data_dir.parent
        """The dataset root (the directory holding ``data/``)."""
        self._metadata = J.read_metadata(data_dir)
        self._check_compatible(obs_dtype, dataset_id)
        self._journal = J.Journal(data_dir / J.JOURNAL_FILE)
        weakref.finalize(self, self._journal.close)
        try:
            self._recover()
        except BaseException:
            self._journal.close()
            raise

    @staticmethod
    def _create(root: Path, metadata: dict[str, Any]) -> Path:
        # Built in a hidden directory and renamed in one step: a kill leaves no dataset or a whole one.
        root.mkdir(parents=True, exist_ok=True)
        for leftover in [*root.glob(".data.tmp-*"), *root.glob(".data.old-*")]:  # from killed writers
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = root / f".data.tmp-{os.getpid()}"
        tmp.mkdir()
        J.create_main_file(tmp / J.MAIN_FILE)
        J.write_json_atomic(tmp / J.METADATA_FILE, metadata)
        (tmp / J.JOURNAL_FILE).touch()
        os.rename(tmp, root / "data")
        J.fsync_path(root)
        return root / "data"

    def _check_compatible(self, obs_dtype: Any, dataset_id: str | None) -> None:
        meta, where = self._metadata, self.data_dir
        check_schema(meta, where)
        if "agd_schema_version" not in meta:
            raise DatasetError(
                f"{where}: was not written by agd-envs (no agd_schema_version in {J.METADATA_FILE}, e.g. a "
                "dataset made by minari.DataCollector). Read it with EpisodeDataset.open; write to a new path."
            )
        if meta.get("agd_task") != self.task.name:
            raise DatasetError(
                f"{where}: holds {meta.get('agd_task')} episodes; a writer for {self.task.name} cannot append "
                f"to it. Write {self.task.name} episodes to another path."
            )
        self.obs_dtype = space_dtype(meta) or np.dtype(np.float32)
        if obs_dtype is not None and np.dtype(obs_dtype) != self.obs_dtype:
            raise DatasetError(
                f"{where}: stores observations as {self.obs_dtype}, not {np.dtype(obs_dtype)}. Omit obs_dtype "
                "when appending, or write to a new path."
            )
        if dataset_id is not None and dataset_id != meta.get("dataset_id"):
            raise DatasetError(
                f"{where}: has dataset_id {meta.get('dataset_id')!r}, not {dataset_id!r}. Omit dataset_id "
                "when appending."
            )
        self.dataset_id: str = meta.get("dataset_id", "")

    def _recover(self) -> None:
        """Commit what a killed writer left in the journal and make metadata.json match the HDF5 file."""
        meta = self._metadata
        main, journal_path = self.data_dir / J.MAIN_FILE, self.data_dir / J.JOURNAL_FILE
        count, extra_steps = J.count_committed(main, start=meta["total_episodes"])
        if count < meta["total_episodes"]:
            raise DatasetError(
                f"{main}: holds {count} episodes but {J.METADATA_FILE} lists {meta['total_episodes']}. "
                f"The HDF5 file was replaced or truncated; restore it from a copy."
            )
        J.remove_temp_files(self.data_dir)
        self._committed = (count, meta["total_steps"] + extra_steps)
        self._pending = J.uncommitted(J.read_journal(journal_path), count, journal_path)
        self._last_commit, self._commit_cost = time.monotonic(), 0.0
        if self._pending or count != meta["total_episodes"] or self._journal.size:
            self.checkpoint()

    @property
    def num_episodes(self) -> int:
        """Episodes stored, including those not yet committed to main_data.hdf5."""
        return self._committed[0] + len(self._pending)

    @property
    def num_steps(self) -> int:
        """Transitions stored, including those not yet committed to main_data.hdf5."""
        return self._committed[1] + sum(r.num_steps for r in self._pending)

    def add_episode(self, observations: Any, actions: Any, rewards: Any, terminations: Any, truncations: Any,
                    seed: int | None = None) -> int:
        """Validate and durably store one episode (``(n+1) x S``, ``n x A``, ``n``, ``n``, ``n``); returns its index.

        When this returns, the episode survives a SIGKILL of this process. A rejected episode raises
        DatasetError and leaves the dataset exactly as it was.
        """
        self._check_open()
        where = f"{self.path}: add_episode rejected the episode (the dataset is unchanged)"
        arrays = _validate(where, self.task, self.obs_dtype, observations, actions, rewards, terminations,
                           truncations, seed)
        record = J.Record(self.num_episodes, None if seed is None else int(seed), arrays)
        self._journal.append(J.encode_record(record))
        self._pending.append(record)
        due_count = self.checkpoint_every is not None and len(self._pending) >= self.checkpoint_every
        wait = None if self.checkpoint_seconds is None else max(self.checkpoint_seconds,
                                                                  self._commit_cost / MAX_COMMIT_SHARE)
        due_time = wait is not None and time.monotonic() - self._last_commit >= wait
        if due_count or due_time:
            self.checkpoint()
        return record.index

    def checkpoint(self) -> None:
        """Commit journaled episodes to main_data.hdf5 and metadata.json (copy-on-write), then empty the journal."""
        self._check_open()
        episodes, steps = self.num_episodes, self.num_steps
        stale = (self._metadata["total_episodes"], self._metadata["total_steps"]) != (episodes, steps)
        start = time.monotonic()
        if self._pending or stale:
            metadata = {**self._metadata, "total_episodes": episodes, "total_steps": steps}
            J.commit(self.data_dir, self._pending, metadata)
            self._metadata = metadata
        self._committed, self._pending = (episodes, steps), []
        if self._journal.size:
            self._journal.reset()
        self._last_commit = time.monotonic()
        self._commit_cost = self._last_commit - start

    def close(self) -> None:
        """Commit and release the dataset (idempotent)."""
        if self._journal.fd >= 0:
            try:
                self.checkpoint()
            finally:
                self._journal.close()

    def _check_open(self) -> None:
        if self._journal.fd < 0:
            raise DatasetError(f"{self.path}: this DatasetWriter is closed. Open a new one to append.")

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what was acknowledged, but never mask the original error
            self.close()
        except Exception:
            self._journal.close()


def repair(path: PathLike) -> int:
    """Commit a crashed collection's journal into main_data.hdf5 and fix metadata.json; returns the episode count."""
    data_dir = resolve_data_dir(path)
    task = infer_task(J.read_metadata(data_dir), data_dir, None)
    with DatasetWriter(data_dir, task) as writer:
        return writer.num_episodes
