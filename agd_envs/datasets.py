"""Episode datasets in Minari's on-disk layout: a crash-safe append-only writer and an in-memory reader.

This module gathers the public names of the modules that implement them: dataset_writer.py
(DatasetWriter, repair), dataset_reader.py (EpisodeDataset, Episode), dataset_statistics.py,
dataset_segments.py (windows, Segments), dataset_metadata.py (metadata.json, the task a dataset holds)
and _journal.py (the on-disk layer: journal, commit, HDF5 reads).

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

from agd_envs._journal import DatasetError
from agd_envs.dataset_metadata import SCHEMA_VERSION, resolve_data_dir
from agd_envs.dataset_reader import Episode, EpisodeDataset
from agd_envs.dataset_segments import Segments
from agd_envs.dataset_statistics import DatasetStatistics
from agd_envs.dataset_writer import COMMIT_SECONDS, MAX_COMMIT_SHARE, DatasetWriter, repair

__all__ = [
    "COMMIT_SECONDS", "MAX_COMMIT_SHARE", "SCHEMA_VERSION", "DatasetError", "DatasetStatistics", "DatasetWriter",
    "Episode", "EpisodeDataset", "Segments", "repair", "resolve_data_dir",
]

DatasetError.__module__ = __name__  # raised by _journal too; shown (and pickled) as agd_envs.datasets.DatasetError
