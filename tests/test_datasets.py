"""Datasets: round trip, append, SIGKILL safety, bad input, Minari compatibility, segments."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from _crash_writer import KEYS, episode_sha, rollout_episode
from agd_envs import _journal as J
from agd_envs.datasets import COMMIT_SECONDS, SCHEMA_VERSION, DatasetError, DatasetWriter, Episode, EpisodeDataset, repair

REPO = Path(__file__).resolve().parents[1]


def rollout(env_id: str, num_episodes: int, max_steps: int, seed: int) -> list[dict]:
    """Real episodes with seeded uniform random actions, as numpy arrays in the env's own dtypes."""
    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    episodes = [rollout_episode(env, seed + k) | {"seed": seed + k} for k in range(num_episodes)]
    env.close()
    return episodes


@pytest.fixture(scope="module")
def hopper() -> list[dict]:
    episodes = rollout("Hopper-v5", 10, 40, seed=100)
    kinds = {(bool(e["terminations"][-1]), bool(e["truncations"][-1])) for e in episodes}
    assert (True, False) in kinds and (False, True) in kinds, "need both terminated and truncated episodes"
    return episodes


@pytest.fixture(scope="module")
def cheetah() -> list[dict]:
    return rollout("HalfCheetah-v5", 3, 25, seed=7)


def write(path: Path, task: str, episodes: list[dict], **kwargs) -> list[int]:
    with DatasetWriter(path, task, **kwargs) as writer:
        return [writer.add_episode(**e) for e in episodes]


def assert_same(stored: Episode, given: dict, obs_dtype=np.float32) -> None:
    """Stored arrays equal the given ones after the documented casts, bit for bit."""
    want = {"observations": obs_dtype, "actions": np.float32, "rewards": np.float64, "terminations": bool,
            "truncations": bool}
    for key, dtype in want.items():
        array = getattr(stored, key)
        assert array.dtype == dtype, key
        assert np.array_equal(array, given[key].astype(dtype)), key
    assert stored.seed == given["seed"]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data").iterdir())}


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_float32_default(tmp_path: Path, hopper: list[dict]) -> None:
    root = tmp_path / "hopper-random"
    assert write(root, "Hopper", hopper, policy="random") == list(range(len(hopper)))
    data = EpisodeDataset.open(root)
    assert data.task.name == "Hopper" and data.num_episodes == len(hopper)
    assert data.num_steps == sum(len(e["rewards"]) for e in hopper)
    for stored, given in zip(data.episodes(), hopper):
        assert_same(stored, given)
    meta = json.loads((root / "data" / "metadata.json").read_text())
    assert meta["dataset_id"] == "agd/hopper-random-v0" and meta["algorithm_name"] == "random"
    assert meta["agd_schema_version"] == SCHEMA_VERSION and meta["agd_task"] == "Hopper"
    assert (meta["total_episodes"], meta["total_steps"]) == (data.num_episodes, data.num_steps)
    assert json.loads(meta["observation_space"])["dtype"] == "float32"
    assert gym.envs.registration.EnvSpec.from_json(meta["env_spec"]).id == "Hopper-v5"
    assert (root / "data" / "journal.agd").stat().st_size == 0  # everything committed on close
    # the other accepted spellings of the path
    assert EpisodeDataset.open(root / "data").num_episodes == len(hopper)
    assert EpisodeDataset.open(root / "data" / "main_data.hdf5", task="Hopper-v5").num_episodes == len(hopper)


def test_round_trip_float64_option(tmp_path: Path, hopper: list[dict]) -> None:
    write(tmp_path / "d", "Hopper", hopper[:3], obs_dtype=np.float64)
    data = EpisodeDataset.open(tmp_path / "d")
    for stored, given in zip(data.episodes(), hopper):
        assert_same(stored, given, obs_dtype=np.float64)
    with h5py.File(tmp_path / "d" / "data" / "main_data.hdf5") as f:
        assert f["episode_0/observations"].dtype == np.float64
    with pytest.raises(DatasetError, match="stores observations as float64"):
        DatasetWriter(tmp_path / "d", "Hopper", obs_dtype=np.float32)


def test_append_continues_indices_and_keeps_old_episodes(tmp_path: Path, hopper: list[dict]) -> None:
    root = tmp_path / "d"
    write(root, "Hopper", hopper[:4])
    before = file_bytes(root)["main_data.hdf5"]
    assert write(root, "Hopper", hopper[4:]) == list(range(4, len(hopper)))
    data = EpisodeDataset.open(root)
    assert data.num_episodes == len(hopper)
    for stored, given in zip(data.episodes(), hopper):
        assert_same(stored, given)
    with h5py.File(root / "data" / "main_data.hdf5") as f:
        assert sorted(f.keys(), key=lambda k: int(k.split("_")[1])) == [f"episode_{i}" for i in range(len(hopper))]
    assert len(file_bytes(root)["main_data.hdf5"]) > len(before)


def test_automatic_checkpoints_and_uncommitted_episodes_are_readable(tmp_path: Path, hopper: list[dict]) -> None:
    root = tmp_path / "d"
    writer = DatasetWriter(root, "Hopper", checkpoint_every=3)
    for e in hopper[:7]:
        writer.add_episode(**e)
    committed, _ = J.count_committed(root / "data" / "main_data.hdf5", 0)
    journal = J.read_journal(root / "data" / "journal.agd")
    assert committed == 6 and [r.index for r in journal] == [6]
    data = EpisodeDataset.open(root)  # committed + journal, while the writer is still open
    assert data.num_episodes == 7 and writer.num_episodes == 7
    assert_same(data.episode(6), hopper[6])
    writer.close()
    assert J.count_committed(root / "data" / "main_data.hdf5", 0)[0] == 7
    with pytest.raises(DatasetError, match="closed"):
        writer.add_episode(**hopper[0])


def test_reopen_reads_only_new_episodes_and_equals_a_fresh_open(tmp_path: Path, hopper: list[dict], monkeypatch) -> None:
    root = tmp_path / "d"
    writer = DatasetWriter(root, "Hopper", checkpoint_every=3)
    for e in hopper[:4]:  # 3 committed, 1 journaled
        writer.add_episode(**e)
    first = EpisodeDataset.open(root)
    for e in hopper[4:8]:  # commits 3..5 (the journaled one among them), journals 6..7
        writer.add_episode(**e)
    starts = []
    real_read = J.read_committed
    monkeypatch.setattr(J, "read_committed", lambda *a, **k: starts.append(k["start"]) or real_read(*a, **k))
    again = first.split(0.5, seed=0)[1].reopen()  # from any view: the whole dataset
    assert starts == [3]  # episodes 0..2 came from the first read, not from the file
    fresh = EpisodeDataset.open(root)
    assert again.num_episodes == fresh.num_episodes == 8
    for key in KEYS:
        assert np.array_equal(again._store.arrays[key], fresh._store.arrays[key]), key
    for stored, given in zip(again.episodes(), hopper):
        assert_same(stored, given)
    writer.close()
    final = again.reopen()
    assert final.num_episodes == 8 and starts[-1] == 6
    # a main file holding fewer episodes than were read before was replaced: refuse, as open does
    write(tmp_path / "small", "Hopper", [])
    store = dataclasses.replace(final._store, data_dir=tmp_path / "small" / "data")
    moved = EpisodeDataset(final.path, final.task, final.metadata, store, final._selection)
    with pytest.raises(DatasetError, match="holds 0 episodes but 8 were committed"):
        moved.reopen()


def test_dataset_ids_and_overwrite(tmp_path: Path, hopper: list[dict]) -> None:
    write(tmp_path / "walk-expert-v3", "Hopper", hopper[:1])
    assert EpisodeDataset.open(tmp_path / "walk-expert-v3").metadata["dataset_id"] == "agd/walk-expert-v3"
    write(tmp_path / "d", "Hopper", hopper[:2], dataset_id="me/hop-v1")
    assert EpisodeDataset.open(tmp_path / "d").metadata["dataset_id"] == "me/hop-v1"
    with pytest.raises(DatasetError, match="has dataset_id 'me/hop-v1', not 'me/other-v0'"):
        DatasetWriter(tmp_path / "d", "Hopper", dataset_id="me/other-v0")
    with pytest.raises(DatasetError, match="not a Minari id"):
        DatasetWriter(tmp_path / "e", "Hopper", dataset_id="no version")
    assert write(tmp_path / "d", "Hopper", hopper[2:3], overwrite=True) == [0]
    assert EpisodeDataset.open(tmp_path / "d").num_episodes == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["data"]
    (tmp_path / "f" / "data").mkdir(parents=True)  # not a dataset: overwrite must not delete it
    with pytest.raises(DatasetError, match="metadata.json: missing"):
        DatasetWriter(tmp_path / "f", "Hopper", overwrite=True)
    assert (tmp_path / "f" / "data").is_dir()


def test_second_writer_is_refused_while_one_is_open(tmp_path: Path, hopper: list[dict]) -> None:
    with DatasetWriter(tmp_path / "d", "Hopper") as writer:
        writer.add_episode(**hopper[0])
        with pytest.raises(DatasetError, match="another DatasetWriter"):
            DatasetWriter(tmp_path / "d", "Hopper")
    assert DatasetWriter(tmp_path / "d", "Hopper").num_episodes == 1  # lock released on close


# ------------------------------------------------------------------------------- crash safety
def _abandon(writer: DatasetWriter) -> None:
    """Simulate the writer's process dying: drop its journal (and lock) without committing."""
    writer._journal.close()


@pytest.mark.parametrize("stage", ["copy", "metadata", "journal_reset"])
def test_interrupted_commit_loses_and_duplicates_nothing(tmp_path: Path, hopper: list[dict], monkeypatch,
                                                         stage: str) -> None:
    root = tmp_path / "d"
    writer = DatasetWriter(root, "Hopper", checkpoint_every=None)
    for e in hopper[:3]:
        writer.add_episode(**e)
    writer.checkpoint()
    for e in hopper[3:6]:
        writer.add_episode(**e)

    def boom(*args, **kwargs):
        raise OSError(f"simulated crash at {stage}")

    if stage == "copy":  # dies after the copy got its groups, before it replaces main_data.hdf5
        real_replace = os.replace
        monkeypatch.setattr(J.os, "replace", lambda a, b: boom() if "main_data" in str(b) else real_replace(a, b))
    elif stage == "metadata":  # main_data.hdf5 replaced, metadata.json still old
        monkeypatch.setattr(J, "write_json_atomic", boom)
    else:  # both replaced, journal still full
        monkeypatch.setattr(J.Journal, "reset", boom)
    with pytest.raises(OSError, match="simulated"):
        writer.checkpoint()
    _abandon(writer)
    monkeypatch.undo()
    (root / "data" / ".main_data.hdf5.tmp-99999").write_bytes(b"half a copy")  # as a SIGKILL leaves it

    data = EpisodeDataset.open(root)
    assert data.num_episodes == 6
    for stored, given in zip(data.episodes(), hopper):
        assert_same(stored, given)
    with DatasetWriter(root, "Hopper") as writer:
        assert writer.num_episodes == 6
        assert writer.add_episode(**hopper[6]) == 6
    data = EpisodeDataset.open(root)
    assert data.num_episodes == 7 and data.metadata["total_episodes"] == 7
    for stored, given in zip(data.episodes(), hopper):
        assert_same(stored, given)
    assert sorted(p.name for p in (root / "data").iterdir()) == ["journal.agd", "main_data.hdf5", "metadata.json"]


def test_torn_or_corrupt_journal_tail_is_ignored(tmp_path: Path, hopper: list[dict]) -> None:
    root = tmp_path / "d"
    writer = DatasetWriter(root, "Hopper", checkpoint_every=None)
    for e in hopper[:3]:
        writer.add_episode(**e)
    _abandon(writer)
    journal = root / "data" / "journal.agd"
    raw = journal.read_bytes()
    journal.write_bytes(raw[:-10])  # torn last record
    assert EpisodeDataset.open(root).num_episodes == 2
    second = len(J.encode_record(J.read_journal(journal)[0]))
    journal.write_bytes(raw[: second + 200] + bytes([raw[second + 200] ^ 1]) + raw[second + 201 :])
    assert EpisodeDataset.open(root).num_episodes == 1  # CRC catches one flipped bit in record 2
    assert repair(root) == 1
    assert write(root, "Hopper", hopper[1:3]) == [1, 2]
    for stored, given in zip(EpisodeDataset.open(root).episodes(), hopper):
        assert_same(stored, given)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


PHASES = {"": "before first episode", "R": "before first episode", "W": "before first episode",
          "C0": "during checkpoint", "D": "finished"}
"""Phase of a kill from the last line its collector logged; any other line means mid-collection."""


def _run_trials(trials: list[dict]) -> list[dict]:
    """Run each collection in a child of one _crash_writer server, SIGKILL it at the planned moment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "_crash_writer.py")], env=env, text=True,
                              cwd=Path(trials[0]["log"]).parent,  # MuJoCo writes MUJOCO_LOG.TXT to the cwd
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = []
    try:
        for trial in trials:
            log = Path(trial["log"])
            args = {k: trial[k] for k in ("log", "env_id", "seed", "checkpoint_every")}
            args |= {"dataset": trial["root"], "episodes": 25, "max_steps": 40, "slow_fsync": 0.004}
            server.stdin.write(json.dumps(args) + "\n")
            server.stdin.flush()
            server.stdout.readline()  # the child's pid: it is running
            marker, count, delay = trial["plan"]
            deadline = time.monotonic() + 20
            while marker and time.monotonic() < deadline:
                lines = log.read_text().split() if log.exists() else []
                if lines.count(marker) >= count or "D" in lines:
                    break
                time.sleep(0.0005)
            time.sleep(delay)
            server.stdin.write("kill\n")
            server.stdin.flush()
            status = int(server.stdout.readline())
            lines = log.read_text().splitlines() if log.exists() else []
            last = lines[-1].split()[0] if lines else ""
            phase = PHASES.get(last, "mid-collection")
            results.append(trial | {"lines": lines, "phase": phase, "last": last or "-", "status": status})
    finally:
        server.stdin.close()
        stderr = server.stderr.read()
        server.wait(timeout=30)
    assert "Traceback" not in stderr, stderr  # a child that raised prints its traceback here
    return results


def _commit_stage(data_dir: Path, committed: int) -> str:
    """Which step of ``commit`` a kill interrupted, read from the files it left."""
    if list(data_dir.glob(".main_data.hdf5.tmp-*")):
        return "copying"
    if json.loads((data_dir / "metadata.json").read_text())["total_episodes"] < committed:
        return "hdf5 replaced, metadata old"
    if any(r.index < committed for r in J.read_journal(data_dir / "journal.agd")):
        return "both replaced, journal full"
    return "before copy or after reset"


def test_sigkill_during_collection_keeps_every_acknowledged_episode(tmp_path: Path, monkeypatch) -> None:
    import minari

    rng = random.Random(1234)
    # (log marker to wait for, how many, then a random delay), checkpoint_every: kills during dataset creation,
    # while stepping and journaling between rare commits (journal-only recovery), and inside frequent commits
    plans = [((None, 0, rng.uniform(0, 0.03)), 2) for _ in range(2)]
    plans += [(("R", 1, rng.uniform(0, 0.015)), 2) for _ in range(2)]
    plans += [(("E", rng.randint(1, 8), rng.uniform(0, 0.01)), 10) for _ in range(6)]
    plans += [(("C0", rng.randint(1, 3), rng.uniform(i, i + 1) * 0.003), 1 + i % 3) for i in range(6)]
    trials = [{"root": str(tmp_path / f"t{i}" / "hopper-random"), "log": str(tmp_path / f"log{i}.txt"),
               "env_id": ("Hopper-v5", "HalfCheetah-v5")[i % 2], "seed": i, "checkpoint_every": every,
               "plan": plan} for i, (plan, every) in enumerate(plans)]
    results = _run_trials(trials)

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    extra_episode = {"Hopper-v5": rollout("Hopper-v5", 1, 10, seed=999)[0],
                     "HalfCheetah-v5": rollout("HalfCheetah-v5", 1, 10, seed=999)[0]}
    phases, from_journal, commit_stages = [], [], []  # from_journal: episodes only in the journal at the kill
    for i, r in enumerate(results):
        killed = os.WIFSIGNALED(r["status"]) and os.WTERMSIG(r["status"]) == signal.SIGKILL
        assert killed or (r["phase"] == "finished" and r["status"] == 0)
        root = Path(r["root"])
        acked = [int(line.split()[1]) for line in r["lines"] if line.startswith("E ")]
        pending = {int(p[1]): p[2] for p in (line.split() for line in r["lines"]) if p[0] == "P"}
        assert acked == list(range(len(acked)))
        phases.append(r["phase"])
        if not (root / "data").exists():  # killed before the dataset directory was renamed into place
            assert not acked
        else:
            before = _snapshot(root)
            committed = J.count_committed(root / "data" / "main_data.hdf5", 0)[0]
            data = EpisodeDataset.open(root)
            from_journal.append(data.num_episodes - committed)
            if r["phase"] == "during checkpoint":
                commit_stages.append(_commit_stage(root / "data", committed))
            assert _snapshot(root) == before, "a reader must not write"
            # every acknowledged episode, bit-identical; at most the one in flight besides
            assert data.num_episodes in (len(acked), len(acked) + 1)
            for k in range(data.num_episodes):
                e = data.episode(k)
                assert episode_sha(e.observations, e.actions, e.rewards, e.terminations, e.truncations) == pending[k]
                assert e.seed == r["seed"] * 1000 + k
        with DatasetWriter(root, r["env_id"]) as writer:  # recovers, then appends after the last episode
            n = writer.num_episodes
            assert writer.add_episode(**extra_episode[r["env_id"]]) == n
        data = EpisodeDataset.open(root)
        assert data.num_episodes == n + 1 and data.metadata["total_episodes"] == n + 1
        assert_same(data.episode(n), extra_episode[r["env_id"]])
        shutil.copytree(root, tmp_path / "minari" / "agd" / f"crash{i}-v0")
        loaded = minari.load_dataset(f"agd/crash{i}-v0")
        assert loaded.total_episodes == n + 1
        assert np.array_equal(loaded[n].observations, data.episode(n).observations)
    print("crash trials:", {p: phases.count(p) for p in sorted(set(phases))},
          "last log line at the kill:", [r["last"] for r in results],
          "acknowledged:", [sum(line.startswith("E") for line in r["lines"]) for r in results],
          "uncommitted (journal only):", from_journal, "commit stages hit:", commit_stages)
    assert max(from_journal) >= 2
    assert phases.count("before first episode") >= 1 and phases.count("during checkpoint") >= 1
    assert sum(p in ("mid-collection", "during checkpoint") for p in phases) >= 5


def test_killed_collect_leaves_minari_seconds_behind_and_agd_repair_restores_the_rest(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """The issue's case: HalfCheetah's 1000-step episodes took 200 episodes (minutes) to reach Minari before."""
    import minari

    from agd_envs.cli import main

    root, main_file = tmp_path / "cheetah", tmp_path / "cheetah" / "data" / "main_data.hdf5"
    collect = subprocess.Popen([sys.executable, "-m", "agd_envs.cli", "collect", "--task", "HalfCheetah", "--steps",
                                "10000000", "--num-envs", "2", "--out", str(root)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and collect.poll() is None and not (root / "data").exists():
            time.sleep(0.01)
        time.sleep(2 * COMMIT_SECONDS + 1)  # 2-3 commits after the writer made the dataset; before: none
        collect.send_signal(signal.SIGKILL)
        killed_at = time.time()
    finally:
        collect.kill()
        stderr = collect.communicate()[1].decode()
    assert collect.returncode == -signal.SIGKILL, stderr
    with h5py.File(main_file, "r") as f:
        visible = sum(name.startswith("episode_") for name in f)
    lag = killed_at - main_file.stat().st_mtime  # mtime: when the last commit wrote the file
    data = EpisodeDataset.open(root)  # the reader sees the journal too
    seen = f"committed {visible} of {data.num_episodes} episodes; last commit {lag:.2f} s before the kill"
    assert visible >= 2 and lag <= COMMIT_SECONDS + 1.5, seen
    assert data.num_episodes > visible  # the episodes since the last commit are only in the journal

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    shutil.copytree(root, tmp_path / "minari" / "agd" / "before-v0")
    assert minari.load_dataset("agd/before-v0").total_episodes == visible
    main(["repair", str(root)])
    assert f"{data.num_episodes} episodes in main_data.hdf5 ({data.num_episodes - visible} committed from the " \
           f"journal, Minari saw {visible})" in capsys.readouterr().out
    shutil.copytree(root, tmp_path / "minari" / "agd" / "after-v0")
    loaded = minari.load_dataset("agd/after-v0")
    assert loaded.total_episodes == data.num_episodes
    last = data.episode(data.num_episodes - 1)
    assert np.array_equal(loaded[data.num_episodes - 1].observations, last.observations)


# -------------------------------------------------------------------------------------- bad input
BAD_EPISODES = {
    "observations shape": (lambda e: e | {"observations": e["observations"][:-1]}, "`observations` has shape"),
    "observation size": (lambda e: e | {"observations": e["observations"][:, :5]}, "obs_dim=11"),
    "actions shape": (lambda e: e | {"actions": e["actions"][:, :2]}, "`actions` has shape"),
    "rewards shape": (lambda e: e | {"rewards": e["rewards"][:-1]}, "`rewards` has shape"),
    "string dtype": (lambda e: e | {"actions": e["actions"].astype(str)}, "dtype <U"),
    "complex dtype": (lambda e: e | {"rewards": e["rewards"].astype(complex)}, "not strings, complex"),
    "nan": (lambda e: e | {"observations": np.where(np.arange(11) == 3, np.nan, e["observations"])}, "NaN or inf"),
    "inf": (lambda e: e | {"rewards": np.append(e["rewards"][:-1], np.inf)}, "NaN or inf"),
    "overflow": (lambda e: e | {"observations": e["observations"] * 1e300}, "too large for float32"),
    "flags not bool": (lambda e: e | {"terminations": e["terminations"] + 0.5}, "booleans"),
    "done mid-episode": (lambda e: e | {"truncations": np.arange(len(e["rewards"])) == 0}, "not the last step"),
    "not done": (lambda e: e | {"terminations": np.zeros(len(e["rewards"]), bool),
                                "truncations": np.zeros(len(e["rewards"]), bool)}, "truncations[-1]=True"),
    "empty": (lambda e: e | {k: e[k][:0] for k in KEYS[1:]} | {"observations": e["observations"][:1]}, "n >= 1"),
    "bad seed": (lambda e: e | {"seed": -1}, "seed -1"),
}


@pytest.mark.parametrize("case", list(BAD_EPISODES))
def test_rejected_episode_leaves_dataset_unchanged(tmp_path: Path, hopper: list[dict], case: str) -> None:
    root = tmp_path / "d"
    mutate, hint = BAD_EPISODES[case]
    with DatasetWriter(root, "Hopper", checkpoint_every=2) as writer:
        for e in hopper[:3]:  # two committed, one in the journal
            writer.add_episode(**e)
        before = file_bytes(root)
        with pytest.raises(DatasetError) as err:
            writer.add_episode(**mutate(hopper[3]))
        assert str(root) in str(err.value) and hint in str(err.value), str(err.value)
        assert "dataset is unchanged" in str(err.value)
        assert file_bytes(root) == before and writer.num_episodes == 3
        assert writer.add_episode(**hopper[3]) == 3  # still usable
    for stored, given in zip(EpisodeDataset.open(root).episodes(), hopper[:4]):
        assert_same(stored, given)


def _break(root: Path, case: str, episodes: list[dict]) -> Path:
    """Write a 2-episode dataset at ``root``, damage it as ``case`` says, return the path to open."""
    data = root / "data"
    write(root, "Hopper", episodes)
    meta = data / "metadata.json"
    if case == "random file":
        (root.parent / "notes.txt").write_text("not a dataset")
        return root.parent / "notes.txt"
    if case == "dir without metadata":
        meta.unlink()
    elif case == "corrupt metadata":
        meta.write_text(meta.read_text()[:-20])
    elif case == "future schema":
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"agd_schema_version": SCHEMA_VERSION + 1}))
    elif case == "not hdf5":
        (data / "main_data.hdf5").write_bytes(b"\0" * 100)
    elif case == "flat hdf5 without episodes":
        with h5py.File(data / "main_data.hdf5", "w") as f:
            f.create_dataset("observations", data=np.zeros((3, 11)))
    return root


OPEN_ERRORS = {
    "random file": "is a file, not a dataset",
    "dir without metadata": "metadata.json: missing",
    "corrupt metadata": "corrupt JSON",
    "future schema": "pip install -U agd-envs",
    "not hdf5": "not a readable HDF5",
    "flat hdf5 without episodes": "top-level entry 'observations'",
}


@pytest.mark.parametrize("case", list(OPEN_ERRORS))
def test_opening_a_non_dataset_fails_clearly(tmp_path: Path, hopper: list[dict], case: str) -> None:
    target, hint = _break(tmp_path / "d", case, hopper[:2]), OPEN_ERRORS[case]
    for opener in (lambda: EpisodeDataset.open(target), lambda: DatasetWriter(target, "Hopper")):
        with pytest.raises(DatasetError) as err:
            opener()
        message = str(err.value)
        assert str(target) in message and hint in message, message


def test_task_mismatch_is_refused(tmp_path: Path, hopper: list[dict], cheetah: list[dict]) -> None:
    write(tmp_path / "cheetah", "HalfCheetah", cheetah)
    before = file_bytes(tmp_path / "cheetah")
    with pytest.raises(DatasetError, match="holds HalfCheetah episodes; a writer for Hopper") as err:
        DatasetWriter(tmp_path / "cheetah", "Hopper")
    assert str(tmp_path / "cheetah") in str(err.value)
    with pytest.raises(DatasetError, match="task='HalfCheetah'"):
        EpisodeDataset.open(tmp_path / "cheetah", task="Hopper")
    assert file_bytes(tmp_path / "cheetah") == before
    assert EpisodeDataset.open(tmp_path / "cheetah", task="HalfCheetah").num_episodes == len(cheetah)


# ----------------------------------------------------------------------------------------- Minari
def test_minari_loads_our_dataset(tmp_path: Path, hopper: list[dict], monkeypatch) -> None:
    import minari

    write(tmp_path / "hopper-random", "Hopper", hopper, policy="random", author="tester")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    shutil.copytree(tmp_path / "hopper-random", tmp_path / "minari" / "agd" / "hopper-random-v0")
    loaded = minari.load_dataset("agd/hopper-random-v0")
    assert loaded.total_episodes == len(hopper) and loaded.total_steps == sum(len(e["rewards"]) for e in hopper)
    meta = loaded.storage.metadata
    assert meta["algorithm_name"] == "random" and meta["author"] == {"tester"}
    assert loaded.spec.dataset_id == "agd/hopper-random-v0"
    assert loaded.observation_space == gym.spaces.Box(-np.inf, np.inf, (11,), np.float32)
    for episode, given in zip(loaded.iterate_episodes(), hopper):
        for key, dtype in zip(KEYS, (np.float32, np.float32, np.float64, bool, bool)):
            assert np.array_equal(getattr(episode, key), given[key].astype(dtype)), key
    assert loaded.recover_environment().spec.id == "Hopper-v5"


def test_we_read_a_minari_data_collector_dataset(tmp_path: Path, monkeypatch) -> None:
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = minari.DataCollector(gym.make("Hopper-v5", max_episode_steps=30), record_infos=False)
    env.action_space.seed(3)
    for k in range(4):
        env.reset(seed=k)
        while not any(env.step(env.action_space.sample())[2:4]):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari asks for code_permalink, author_email, eval_env
        env.create_dataset(dataset_id="test/hopper-collector-v0", algorithm_name="random")
    loaded = minari.load_dataset("test/hopper-collector-v0")
    ours = EpisodeDataset.open(tmp_path / "minari" / "test" / "hopper-collector-v0")
    assert ours.task.name == "Hopper" and ours.num_episodes == loaded.total_episodes == 4
    assert ours.num_steps == loaded.total_steps
    for mine, theirs in zip(ours.episodes(), loaded.iterate_episodes()):
        for key in KEYS:
            assert getattr(mine, key).dtype == getattr(theirs, key).dtype, key  # float64 obs kept as stored
            assert np.array_equal(getattr(mine, key), getattr(theirs, key)), key
    assert ours.sample_segments(4, 5).states.dtype == torch.float32
    with pytest.raises(DatasetError, match="not written by agd-envs"):
        DatasetWriter(tmp_path / "minari" / "test" / "hopper-collector-v0", "Hopper")


# --------------------------------------------------------------------------------------- segments
@pytest.fixture(scope="module")
def dataset(tmp_path_factory, hopper: list[dict]) -> EpisodeDataset:
    root = tmp_path_factory.mktemp("seg") / "d"
    write(root, "Hopper", hopper)
    return EpisodeDataset.open(root)


def test_segment_windows_stay_inside_episodes(dataset: EpisodeDataset) -> None:
    horizon = 10
    starts = dataset.segment_starts(horizon)
    lengths = dataset.episode_lengths
    assert starts.dtype == np.int64 and len(starts) == np.maximum(lengths - horizon + 1, 0).sum()
    assert (starts[:, 1] >= 0).all() and (starts[:, 1] + horizon <= lengths[starts[:, 0]]).all()
    batch = dataset.sample_segments(256, horizon, generator=torch.Generator().manual_seed(0))
    assert batch.states.shape == (256, horizon + 1, 11) and batch.actions.shape == (256, horizon, 3)
    assert batch.rewards.shape == (256, horizon) and batch.terminations.dtype == torch.bool
    assert batch.states.dtype == batch.actions.dtype == batch.rewards.dtype == torch.float32
    # the same windows, taken by row, equal the episode slices (s_{t+1} is the obs after action t)
    rows = np.arange(len(starts))
    every = dataset.sample_segments(len(rows), horizon, indices=rows)
    for row, (e, t) in enumerate(starts):
        ep = dataset.episode(int(e))
        assert np.array_equal(every.states[row].numpy(), ep.observations[t : t + horizon + 1])
        assert np.array_equal(every.actions[row].numpy(), ep.actions[t : t + horizon])
        assert np.array_equal(every.rewards[row].numpy(), ep.rewards[t : t + horizon].astype(np.float32))
        assert np.array_equal(every.terminations[row].numpy(), ep.terminations[t : t + horizon])
    # every sampled window is one of those (so none crosses an episode boundary)
    flat = every.states.reshape(len(rows), -1)
    match = (batch.states.reshape(256, 1, -1) == flat.unsqueeze(0)).all(-1).any(-1)
    assert match.all()
    assert not batch.terminations[:, :-1].any()  # a termination can only be an episode's last step


def test_sampling_is_deterministic_given_the_generator(dataset: EpisodeDataset) -> None:
    a = dataset.sample_segments(64, 5, generator=torch.Generator().manual_seed(7))
    b = dataset.sample_segments(64, 5, generator=torch.Generator().manual_seed(7))
    c = dataset.sample_segments(64, 5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.states, b.states) and torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.states, c.states)
    with pytest.raises(DatasetError, match="no episode has 41 transitions"):
        dataset.sample_segments(4, 41)


def test_statistics_match_numpy(dataset: EpisodeDataset, hopper: list[dict]) -> None:
    stats = dataset.statistics()
    obs = np.concatenate([e["observations"].astype(np.float32) for e in hopper]).astype(np.float64)
    act = np.concatenate([e["actions"] for e in hopper]).astype(np.float64)
    rew = np.concatenate([e["rewards"] for e in hopper])
    for got, want in ((stats.obs_mean, obs.mean(0)), (stats.obs_std, obs.std(0)), (stats.act_mean, act.mean(0)),
                      (stats.act_std, act.std(0)), (stats.rew_mean, rew.mean()), (stats.rew_std, rew.std())):
        assert got.dtype == np.float64 and got.shape == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_split_is_an_episode_level_partition_sharing_memory(dataset: EpisodeDataset, hopper: list[dict]) -> None:
    train, held_out = dataset.split(0.8, seed=0)
    assert (train.num_episodes, held_out.num_episodes) == (8, 2)
    ids = np.concatenate([train.episode_indices, held_out.episode_indices])
    assert sorted(ids) == list(range(10))
    assert train.num_steps + held_out.num_steps == dataset.num_steps
    again = dataset.split(0.8, seed=0)[1]
    assert np.array_equal(again.episode_indices, held_out.episode_indices)
    first = int(held_out.episode_indices[0])
    assert np.shares_memory(held_out.episode(0).observations, dataset.episode(first).observations)
    assert_same(held_out.episode(0), hopper[first])
    rew = np.concatenate([hopper[i]["rewards"] for i in held_out.episode_indices])
    np.testing.assert_allclose(held_out.statistics().rew_mean, rew.mean(), rtol=1e-12)
    starts = held_out.segment_starts(5)
    assert set(starts[:, 0]) <= set(range(held_out.num_episodes))
    batch = held_out.sample_segments(32, 5, generator=torch.Generator().manual_seed(0))
    held_obs = torch.tensor(np.concatenate([e.observations for e in held_out.episodes()]))
    assert (batch.states[:, 0].unsqueeze(1) == held_obs.unsqueeze(0)).all(-1).any(-1).all()
    with pytest.raises(ValueError):
        dataset.episode(0).observations[0, 0] = 1.0  # the loaded arrays are read-only
