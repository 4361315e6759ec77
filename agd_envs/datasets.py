"""Episode datasets in Minari's on-disk layout: a crash-safe append-only writer and an in-memory reader.

A dataset is a directory ``<root>/data/{main_data.hdf5, metadata.json}`` laid out exactly as
Minari 0.5 writes it (one group ``episode_{i}`` per episode with ``observations`` (n+1, S) including
the final one, ``actions`` (n, A) float32, ``rewards`` (n,) float64, ``terminations``/``truncations``
(n,) bool), so copying ``<root>`` to ``$MINARI_DATASETS_PATH/<dataset_id>`` lets
``minari.load_dataset`` open it, and :meth:`EpisodeDataset.open` reads Minari's own datasets.

Why a journal and copy-on-write commits instead of appending to the HDF5 file in place:

* A SIGKILL while HDF5 flushes its metadata (B-trees, superblock, free-space info) leaves a file that no
  longer opens: everything collected is lost, not just the episode in flight.
* SWMR mode, HDF5's answer to crash-safe appends, cannot create new groups, and Minari's layout needs
  one group per episode.
* Rewriting the whole file copy-on-write after every episode is safe but costs O(N^2) over a collection.

So each :meth:`DatasetWriter.add_episode` appends one self-checking record (JSON header, raw arrays,
CRC32) to ``data/journal.agd`` with a single ``write`` and returns only after the bytes are in the OS
page cache, which a SIGKILL of the writer does not lose (fsync, for power loss, happens at commits). A
record torn by a kill fails its CRC and is ignored: it was never acknowledged. Every
``checkpoint_seconds`` (default ``COMMIT_SECONDS``; longer once commits get expensive, see
``MAX_COMMIT_SHARE``), every ``checkpoint_every`` episodes if set, and on :meth:`DatasetWriter.close` the
journal is committed: main_data.hdf5 is copied, the new groups are added to the copy, the copy is
fsynced and ``os.replace``-d over the original (atomic), metadata.json is replaced the same way, and
only then is the journal emptied. Records carry their episode index, so a kill between the rename and
the reset duplicates nothing: records already in the HDF5 file are skipped. A new dataset is built in a
hidden temp directory and renamed to ``data`` in one step, so a kill during creation leaves either no
dataset or an empty valid one. Readers see committed episodes plus valid journal records and never
write; opening a :class:`DatasetWriter` (or :func:`repair`, ``agd repair PATH``) commits a crashed run's
journal. Minari reads main_data.hdf5 only, so after a crash it misses the last few seconds of episodes
until then.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
import torch

from agd_envs import _journal as J
from agd_envs._journal import DatasetError
from agd_envs.tasks import TASKS, Task, get_task

__all__ = [
    "COMMIT_SECONDS", "MAX_COMMIT_SHARE", "SCHEMA_VERSION", "DatasetError", "DatasetStatistics", "DatasetWriter",
    "Episode", "EpisodeDataset", "Segments", "repair", "resolve_data_dir",
]

DatasetError.__module__ = __name__  # raised by _journal too; shown (and pickled) as agd_envs.datasets.DatasetError
SCHEMA_VERSION = 1
"""Version of the agd_* metadata keys and the journal; readers refuse datasets with a larger one."""
_MINARI_VERSION = "0.5.0"  # the oldest 0.5 release: every Minari 0.5.x lists it as supported
_NAMESPACE = "agd"
_ID_RE = re.compile(r"(?:[-\w][-\w/]*[-\w]+/)?[-\w]+-v\d+")  # Minari's id grammar, version required
_PathLike = str | os.PathLike[str]
_DTYPE_KINDS = {"observations": "f", "actions": "f", "rewards": "f", "terminations": "b", "truncations": "b"}
COMMIT_SECONDS = 2.0
"""Default ``checkpoint_seconds``: what Minari sees (main_data.hdf5) lags the journal by about this much.
Measured (benchmarks/results/commit_cost.json): a commit of 10 Hopper episodes costs 12 ms at 20k steps
(4 MB), 37 ms at 200k (40 MB), 0.31 s at 1M (200 MB), so at the shipped datasets' size a commit every
2 s costs < 1% of the time (the collection throughput change was within run-to-run noise)."""
MAX_COMMIT_SHARE = 0.05
"""Timed commits take at most this share of the writer's time: after a commit of d seconds the next one
waits at least d / MAX_COMMIT_SHARE. A commit copies the whole file, so on large datasets the lag grows
(about 6 s at 1M Hopper steps) and collection stays O(N) rather than O(N^2)."""


@dataclass
class Episode:
    """One episode of n transitions as stored (after the writer's checked casts)."""

    observations: np.ndarray
    """``(n+1) x S``: s_0..s_n, the last one observed after the final action."""
    actions: np.ndarray
    """``n x A`` float32."""
    rewards: np.ndarray
    """``n`` float64."""
    terminations: np.ndarray
    """``n`` bool; only the last step can be True."""
    truncations: np.ndarray
    """``n`` bool; only the last step can be True."""
    seed: int | None = None
    """The ``reset`` seed of the episode, if known."""

    @property
    def num_steps(self) -> int:
        """Number of transitions n."""
        return int(self.rewards.shape[0])


@dataclass(frozen=True)
class DatasetStatistics:
    """Per-dimension float64 means and standard deviations (population std, floored at 1e-6)."""

    obs_mean: np.ndarray
    """``S``, over every stored observation (n+1 per episode)."""
    obs_std: np.ndarray
    act_mean: np.ndarray
    """``A``, over every action."""
    act_std: np.ndarray
    rew_mean: np.ndarray
    """0-d, over every reward."""
    rew_std: np.ndarray


@dataclass
class Segments:
    """A batch of H-step windows, each inside one episode; float32 tensors except the bool flags."""

    states: torch.Tensor
    """``B x (H+1) x S``: s_0..s_H."""
    actions: torch.Tensor
    """``B x H x A``."""
    rewards: torch.Tensor
    """``B x H``."""
    terminations: torch.Tensor
    """``B x H`` bool (only the last step of an episode can be True)."""

    def to(self, device: torch.device | str) -> Segments:
        """The same batch on ``device``."""
        return Segments(*(t.to(device) for t in (self.states, self.actions, self.rewards, self.terminations)))


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


# ---------------------------------------------------------------------------------------- metadata
def _box(dtype: np.dtype, size: int, low: float, high: float) -> str:
    """A Box space serialized the way minari.serialization.serialize_space does."""
    return json.dumps({"type": "Box", "dtype": dtype.name, "shape": [size], "low": [low] * size,
                       "high": [high] * size})


def _space_shape(metadata: dict[str, Any], key: str) -> tuple[int, ...] | None:
    space = metadata.get(key)
    try:
        space = json.loads(space) if isinstance(space, str) else space
        return tuple(space["shape"]) if space["type"] == "Box" else ()
    except (TypeError, KeyError, json.JSONDecodeError):
        return None


def _space_dtype(metadata: dict[str, Any]) -> np.dtype | None:
    try:
        return np.dtype(json.loads(metadata["observation_space"])["dtype"])
    except (TypeError, KeyError, ValueError):
        return None


def _new_metadata(task: Task, obs_dtype: np.dtype, dataset_id: str, policy: str, author: str,
                  description: str) -> dict[str, Any]:
    return {
        "total_episodes": 0, "total_steps": 0, "data_format": "hdf5", "jpeg_encoding": False,
        "observation_space": _box(obs_dtype, task.obs_dim, -math.inf, math.inf),
        "action_space": _box(np.dtype(np.float32), task.act_dim, task.action_low, task.action_high),
        "env_spec": gym.spec(task.env_id).to_json(), "dataset_size": 0.0, "dataset_id": dataset_id,
        "author": [author], "algorithm_name": policy, "description": description,
        "minari_version": _MINARI_VERSION, "agd_schema_version": SCHEMA_VERSION, "agd_task": task.name,
        J.CRC_METADATA_KEY: True,
    }


def _check_schema(metadata: dict[str, Any], where: Path) -> None:
    version = metadata.get("agd_schema_version")
    if version is not None and (not isinstance(version, int) or version > SCHEMA_VERSION):
        raise DatasetError(
            f"{where}: written by a newer agd-envs (agd_schema_version {version!r}, this one reads up to "
            f"{SCHEMA_VERSION}). Upgrade with `pip install -U agd-envs`."
        )


def _infer_task(metadata: dict[str, Any], where: Path, task: str | Task | None) -> Task:
    """The dataset's task from agd_task, else env_spec's id, else unique obs/action sizes; checked vs ``task``."""
    obs_shape, act_shape = _space_shape(metadata, "observation_space"), _space_shape(metadata, "action_space")
    found: Task | None = None
    try:
        env_id = json.loads(metadata["env_spec"])["id"] if "env_spec" in metadata else None
    except (TypeError, KeyError, json.JSONDecodeError):
        env_id = None
    for name in (metadata.get("agd_task"), env_id):
        if found is None and isinstance(name, str):
            try:
                found = get_task(name)
            except ValueError:
                pass
    if found is None and obs_shape and act_shape:
        matches = [t for t in TASKS.values() if (t.obs_dim,) == obs_shape and (t.act_dim,) == act_shape]
        found = matches[0] if len(matches) == 1 else None
    wanted = get_task(task) if task is not None else None
    if found is not None and wanted is not None and found != wanted:
        raise DatasetError(
            f"{where}: holds {found.name} ({found.env_id}) episodes, but task {wanted.name!r} was requested. "
            f"Use task={found.name!r} or a {wanted.name} dataset."
        )
    result = found or wanted
    if result is None:
        raise DatasetError(
            f"{where}: cannot tell which task this dataset is for (no agd_task, no known env_spec id, "
            f"observation shape {obs_shape}). Pass task=... explicitly."
        )
    if obs_shape not in (None, (result.obs_dim,)) or act_shape not in (None, (result.act_dim,)):
        raise DatasetError(
            f"{where}: observation/action shapes {obs_shape}/{act_shape} do not match {result.name} "
            f"({result.obs_dim}/{result.act_dim}): the dataset is for another environment, or its "
            f"{J.METADATA_FILE} is damaged (restore it from a copy)."
        )
    return result


def resolve_data_dir(path: _PathLike) -> Path:
    """The ``data`` directory of an existing dataset given its root, its data dir or its main_data.hdf5."""
    data_dir = J.find_data_dir(path)
    if data_dir is None:
        raise DatasetError(
            f"{path}: no dataset here (expected {Path(path) / 'data' / J.METADATA_FILE}). Check the path, "
            "or collect one with DatasetWriter."
        )
    return data_dir


def _default_dataset_id(root: Path) -> str:
    name = re.sub(r"[^-\w]+", "-", root.resolve().name).strip("-") or "dataset"
    return f"{_NAMESPACE}/{name}" if re.search(r"-v\d+$", name) else f"{_NAMESPACE}/{name}-v0"


# ------------------------------------------------------------------------------------------ writer
class DatasetWriter:
    """Appends episodes to a dataset, crash-safely (see the module docstring); use it as a context manager.

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

    def __init__(self, path: _PathLike, task: str | Task, *, obs_dtype: Any = None, policy: str = "unknown",
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
            dataset_id = dataset_id or _default_dataset_id(Path(path))
            if not _ID_RE.fullmatch(dataset_id):
                raise DatasetError(
                    f"{path}: dataset_id {dataset_id!r} is not a Minari id. Use the form 'namespace/name-v0'."
                )
            meta = _new_metadata(self.task, dtype, dataset_id, policy, author, description)
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
        _check_schema(meta, where)
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
        self.obs_dtype = _space_dtype(meta) or np.dtype(np.float32)
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


# ------------------------------------------------------------------------------------------ reader
@dataclass(eq=False)
class _Store:
    """All episodes of one dataset as flat read-only arrays, shared by every view of it."""

    arrays: dict[str, np.ndarray]
    """``observations`` (sum n_i+1) x S; the step arrays (sum n_i) x ...; never written."""
    obs_offsets: np.ndarray
    """``E+1`` int64: episode i's observations are rows obs_offsets[i]:obs_offsets[i+1]."""
    step_offsets: np.ndarray
    """``E+1`` int64: episode i's steps are rows step_offsets[i]:step_offsets[i+1]."""
    seeds: list[int | None]
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Per-device torch copies for sample_segments (observations/actions/rewards float32)."""

    @classmethod
    def build(cls, records: list[J.Record], task: Task, where: Path, obs_dtype: np.dtype) -> _Store:
        for r in records:
            obs, act = r.arrays["observations"], r.arrays["actions"]
            n = r.num_steps
            shapes = [(obs.shape, (n + 1, task.obs_dim)), (act.shape, (n, task.act_dim))]
            shapes += [(r.arrays[k].shape, (n,)) for k in ("terminations", "truncations")]
            if n < 1 or any(got != want for got, want in shapes):
                raise DatasetError(
                    f"{where}: episode {r.index} has shapes {[g for g, _ in shapes]}, expected "
                    f"{[w for _, w in shapes]} for {task.name} (n={n}). The file is damaged or not for this task."
                )
            dtypes = {key: r.arrays[key].dtype.str for key in J.KEYS}
            if any(r.arrays[key].dtype.kind != kind for key, kind in _DTYPE_KINDS.items()):
                raise DatasetError(
                    f"{where}: episode {r.index} has dtypes {dtypes}, expected float arrays and bool flags: the "
                    "file is damaged or not a Minari dataset. Restore it from a copy, or collect the data again."
                )
        empty = {"observations": np.zeros((0, task.obs_dim), obs_dtype),
                 "actions": np.zeros((0, task.act_dim), np.float32), "rewards": np.zeros(0, np.float64),
                 "terminations": np.zeros(0, bool), "truncations": np.zeros(0, bool)}
        arrays = {k: np.concatenate([r.arrays[k] for r in records]) if records else empty[k] for k in J.KEYS}
        for a in arrays.values():
            a.flags.writeable = False
        steps = np.array([0] + [r.num_steps for r in records], dtype=np.int64).cumsum()
        return cls(arrays, steps + np.arange(len(records) + 1), steps, [r.seed for r in records])

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Torch copies (float32; bool flags) of the arrays that segments need, made once per device."""
        key = str(torch.device(device))
        if key not in self.tensors:
            dtypes = {"observations": np.float32, "actions": np.float32, "rewards": np.float32, "terminations": bool}
            self.tensors[key] = {k: torch.from_numpy(self.arrays[k].astype(t)).to(device) for k, t in dtypes.items()}
        return self.tensors[key]


def _ranges(offsets: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(offsets[e], offsets[e+1])`` for each e in ``episodes``, without a python loop."""
    starts, lengths = offsets[episodes], offsets[episodes + 1] - offsets[episodes]
    return np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)


class EpisodeDataset:
    """A dataset's episodes in memory (read-only); a view from :meth:`split` shares the arrays."""

    def __init__(self, path: Path, task: Task, metadata: dict[str, Any], store: _Store, selection: np.ndarray):
        """Use :meth:`open`; this wraps already loaded data."""
        self.path, self.task, self.metadata = path, task, metadata
        self._store, self._selection = store, selection
        self._windows: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
        self._statistics: DatasetStatistics | None = None

    @classmethod
    def open(cls, path: _PathLike, task: str | Task | None = None) -> EpisodeDataset:
        """Load a dataset (root dir, its data dir or main_data.hdf5), ours or Minari's; ``task`` is checked if given."""
        data_dir = resolve_data_dir(path)
        metadata = J.read_metadata(data_dir)
        _check_schema(metadata, data_dir)
        the_task = _infer_task(metadata, data_dir, task)
        # The journal first: a concurrent commit only moves records from it into the HDF5 file.
        journal = J.read_journal(data_dir / J.JOURNAL_FILE)
        records = J.read_committed(data_dir / J.MAIN_FILE, require_crc=metadata.get(J.CRC_METADATA_KEY) is True)
        if len(records) < metadata["total_episodes"]:
            raise DatasetError(
                f"{data_dir / J.MAIN_FILE}: holds {len(records)} episodes but {J.METADATA_FILE} lists "
                f"{metadata['total_episodes']}. The HDF5 file was replaced or truncated; restore it from a copy."
            )
        records += J.uncommitted(journal, len(records), data_dir / J.JOURNAL_FILE)
        obs_dtype = records[0].arrays["observations"].dtype if records else _space_dtype(metadata) or np.float32
        store = _Store.build(records, the_task, data_dir, np.dtype(obs_dtype))
        return cls(data_dir.parent, the_task, metadata, store, np.arange(len(records)))

    @property
    def num_episodes(self) -> int:
        """Number of episodes in this dataset (or view)."""
        return len(self._selection)

    @property
    def episode_lengths(self) -> np.ndarray:
        """``E`` int64: transitions per episode."""
        offsets = self._store.step_offsets
        return offsets[self._selection + 1] - offsets[self._selection]

    @property
    def num_steps(self) -> int:
        """Number of transitions in this dataset (or view)."""
        return int(self.episode_lengths.sum())

    @property
    def episode_indices(self) -> np.ndarray:
        """``E`` int64: the stored index of each episode of this view."""
        return self._selection.copy()

    def __len__(self) -> int:
        return self.num_episodes

    def episode(self, i: int) -> Episode:
        """Episode ``i`` of this view, as read-only views of the loaded arrays."""
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"{self.path}: episode {i} out of range; this dataset has {self.num_episodes}.")
        e, s, a = int(self._selection[i]), self._store.step_offsets, self._store.arrays
        o = self._store.obs_offsets
        return Episode(a["observations"][o[e]:o[e + 1]], *(a[k][s[e]:s[e + 1]] for k in J.KEYS[1:]),
                       seed=self._store.seeds[e])

    def episodes(self) -> Iterator[Episode]:
        """Every episode in order."""
        return (self.episode(i) for i in range(self.num_episodes))

    def statistics(self) -> DatasetStatistics:
        """Per-dimension mean/std of observations, actions and rewards over this dataset (or view)."""
        if self._statistics is None:
            if self.num_steps == 0:
                raise DatasetError(f"{self.path}: has no transitions to compute statistics from. Collect first.")
            a, store = self._store.arrays, self._store
            obs = a["observations"][_ranges(store.obs_offsets, self._selection)].astype(np.float64)
            rows = _ranges(store.step_offsets, self._selection)
            act, rew = a["actions"][rows].astype(np.float64), a["rewards"][rows].astype(np.float64)
            floor = lambda std: np.asarray(np.maximum(std, 1e-6))  # noqa: E731
            self._statistics = DatasetStatistics(obs.mean(0), floor(obs.std(0)), act.mean(0), floor(act.std(0)),
                                                 np.asarray(rew.mean()), floor(rew.std()))
        return self._statistics

    def _window_table(self, horizon: int) -> tuple[np.ndarray, torch.Tensor]:
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        if horizon not in self._windows:
            counts = np.maximum(self.episode_lengths - horizon + 1, 0)
            episode = np.repeat(np.arange(self.num_episodes), counts)
            start = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            stored = self._selection[episode]
            flat = np.stack([self._store.obs_offsets[stored] + start, self._store.step_offsets[stored] + start], 1)
            self._windows[horizon] = (np.stack([episode, start], 1).astype(np.int64), torch.as_tensor(flat))
        return self._windows[horizon]

    def segment_starts(self, horizon: int) -> np.ndarray:
        """``M x 2`` int64 (episode, start) of every window of ``horizon`` transitions inside one episode."""
        return self._window_table(horizon)[0].copy()

    def sample_segments(self, batch_size: int, horizon: int, *, generator: torch.Generator | None = None,
                        device: torch.device | str | None = "cpu", indices: Any = None) -> Segments:
        """``batch_size`` windows drawn uniformly from :meth:`segment_starts` (or its rows ``indices``)."""
        starts, flat = self._window_table(horizon)
        if indices is None:
            if len(starts) == 0:
                raise DatasetError(
                    f"{self.path}: no episode has {horizon} transitions, so no segment fits. Use a shorter "
                    f"horizon (longest episode: {self.episode_lengths.max(initial=0)} steps) or collect more."
                )
            rows = torch.randint(len(starts), (batch_size,), generator=generator,
                                 device=generator.device if generator is not None else "cpu").cpu()
        else:
            rows = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
            if len(rows) != batch_size or (len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < len(starts)):
                raise IndexError(
                    f"indices must be {batch_size} rows of segment_starts({horizon}), in 0..{len(starts) - 1}"
                )
        device = device if device is not None else "cpu"
        data, first = self._store.on(device), flat[rows].to(device)
        obs_rows = first[:, :1] + torch.arange(horizon + 1, device=first.device)
        step_rows = first[:, 1:] + torch.arange(horizon, device=first.device)
        return Segments(data["observations"][obs_rows], data["actions"][step_rows], data["rewards"][step_rows],
                        data["terminations"][step_rows])

    def split(self, fraction: float, seed: int) -> tuple[EpisodeDataset, EpisodeDataset]:
        """Random episode-level split: (``fraction`` of the episodes, the rest), both sharing this memory."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if self.num_episodes < 2:
            raise DatasetError(f"{self.path}: has {self.num_episodes} episode(s); a split needs at least 2.")
        k = min(max(round(fraction * self.num_episodes), 1), self.num_episodes - 1)
        order = self._selection[np.random.default_rng(seed).permutation(self.num_episodes)]
        return tuple(EpisodeDataset(self.path, self.task, self.metadata, self._store, np.sort(part))
                     for part in (order[:k], order[k:]))  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"EpisodeDataset({str(self.path)!r}, task={self.task.name}, episodes={self.num_episodes}, "
                f"steps={self.num_steps})")


def repair(path: _PathLike) -> int:
    """Commit a crashed collection's journal into main_data.hdf5 and fix metadata.json; returns the episode count."""
    data_dir = resolve_data_dir(path)
    task = _infer_task(J.read_metadata(data_dir), data_dir, None)
    with DatasetWriter(data_dir, task) as writer:
        return writer.num_episodes
