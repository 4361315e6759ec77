"""The dataset reader: every episode of a dataset (committed and journaled) in memory, read-only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from agd_envs import _journal as J
from agd_envs._journal import DatasetError
from agd_envs.dataset_metadata import PathLike, check_schema, infer_task, resolve_data_dir, space_dtype
from agd_envs.dataset_segments import Segments, gather_segments, window_table
from agd_envs.dataset_statistics import DatasetStatistics, statistics_of
from agd_envs.tasks import Task

_DTYPE_KINDS = {"observations": "f", "actions": "f", "rewards": "f", "terminations": "b", "truncations": "b"}


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
    data_dir: Path = Path()
    """The dataset's data directory (main_data.hdf5, metadata.json, the journal)."""
    num_committed: int = 0
    """Episodes 0..num_committed-1 came from main_data.hdf5 (append-only: later reads may reuse them)."""
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Per-device torch copies for sample_segments (observations/actions/rewards float32)."""

    @classmethod
    def build(cls, records: list[J.Record], task: Task, where: Path, obs_dtype: np.dtype, num_committed: int = 0,
              checked: int = 0) -> _Store:
        for r in records[checked:]:
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
        return cls(arrays, steps + np.arange(len(records) + 1), steps, [r.seed for r in records], where, num_committed)

    def records(self, count: int) -> list[J.Record]:
        """Episodes 0..count-1 as records whose arrays are views of this store's."""
        o, s, a = self.obs_offsets, self.step_offsets, self.arrays
        return [J.Record(i, self.seeds[i], {"observations": a["observations"][o[i]:o[i + 1]],
                                            **{k: a[k][s[i]:s[i + 1]] for k in J.KEYS[1:]}}) for i in range(count)]

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
    def open(cls, path: PathLike, task: str | Task | None = None) -> EpisodeDataset:
        """Load a dataset (root dir, its data dir or main_data.hdf5), ours or Minari's; ``task`` is checked if given."""
        data_dir = resolve_data_dir(path)
        metadata = J.read_metadata(data_dir)
        check_schema(metadata, data_dir)
        return cls._load(data_dir, infer_task(metadata, data_dir, task), metadata, None)

    def reopen(self) -> EpisodeDataset:
        """The whole dataset as it is on disk now, reading only the episodes committed or journaled since this was read.

        Committed episodes never change (the writer only appends to main_data.hdf5), so this dataset's are reused
        instead of being read and CRC-checked again: on a dataset of many short episodes (Reacher: 800 of 50 steps)
        that is most of :meth:`open`'s time. Works from any view of the dataset; returns the whole dataset.
        """
        data_dir = self._store.data_dir
        return EpisodeDataset._load(data_dir, self.task, J.read_metadata(data_dir), self._store)

    @classmethod
    def _load(cls, data_dir: Path, task: Task, metadata: dict[str, Any], reuse: _Store | None) -> EpisodeDataset:
        """Read ``data_dir``'s episodes, taking the committed ones ``reuse`` holds from it."""
        known = reuse.num_committed if reuse is not None else 0
        # The journal first: a concurrent commit only moves records from it into the HDF5 file.
        journal = J.read_journal(data_dir / J.JOURNAL_FILE)
        main = data_dir / J.MAIN_FILE
        committed, fresh = J.read_committed(main, require_crc=metadata.get(J.CRC_METADATA_KEY) is True, start=known)
        if committed < max(metadata["total_episodes"], known):
            raise DatasetError(
                f"{main}: holds {committed} episodes but {max(metadata['total_episodes'], known)} were committed "
                f"({J.METADATA_FILE} lists {metadata['total_episodes']}). The HDF5 file was replaced or truncated; "
                "restore it from a copy."
            )
        records = (reuse.records(known) if reuse is not None else []) + fresh
        records += J.uncommitted(journal, committed, data_dir / J.JOURNAL_FILE)
        obs_dtype = records[0].arrays["observations"].dtype if records else space_dtype(metadata) or np.float32
        store = _Store.build(records, task, data_dir, np.dtype(obs_dtype), num_committed=committed, checked=known)
        return cls(data_dir.parent, task, metadata, store, np.arange(len(records)))

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
            rows = _ranges(store.step_offsets, self._selection)
            self._statistics = statistics_of(a["observations"][_ranges(store.obs_offsets, self._selection)],
                                             a["actions"][rows], a["rewards"][rows])
        return self._statistics

    def _window_table(self, horizon: int) -> tuple[np.ndarray, torch.Tensor]:
        if horizon not in self._windows:
            store, selection = self._store, self._selection
            self._windows[horizon] = window_table(self.episode_lengths, store.obs_offsets[selection],
                                                  store.step_offsets[selection], horizon)
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
        return gather_segments(self._store.on(device), flat[rows].to(device), horizon)

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
