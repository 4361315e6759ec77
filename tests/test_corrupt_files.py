"""Fuzz: damaged copies of a small dataset and a small checkpoint raise the library's error naming the file, or load identically.

Each mutation (fixed seed) truncates a file, flips bits in it, drops or mistypes a JSON key, or removes a
file; then :meth:`EpisodeDataset.open` / :meth:`WorldModel.load` must either raise DatasetError /
CheckpointError whose message names the damaged file (or its directory) and a fix, or return data equal
to the original bit for bit (a damaged key that the reader does not need).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

from _crash_writer import KEYS, rollout_episode
from agd_envs.datasets import DatasetError, DatasetWriter, EpisodeDataset
from agd_envs.world_model import CheckpointError, WorldModel, WorldModelConfig

FIXES = ("restore", "re-save", "re-run", "re-create", "delete", "collect", "upgrade", "pass ", "use ", "check the path")
"""Every message says what to do; one of these is how it says it."""
WRONG_TYPES: list[Any] = ["x", None, [], {}, -1, 1.5, True]


def truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])


def flip_bits(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _json_keys(meta: dict[str, Any]) -> list[tuple[str, ...]]:
    """Top-level keys and those of a nested ``config`` object, as key paths."""
    nested = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return [(k,) for k in meta] + [("config", k) for k in nested]


def _edit_json(path: Path, rng: random.Random, edit: Callable[[dict, str], None],
               keys: list[tuple[str, ...]] | None = None) -> None:
    meta = json.loads(path.read_text())
    *parents, key = rng.choice(keys or _json_keys(meta))
    target = meta
    for parent in parents:
        target = target[parent]
    edit(target, key)
    path.write_text(json.dumps(meta, indent=1))


def drop_key(path: Path, rng: random.Random) -> None:
    _edit_json(path, rng, lambda d, k: d.pop(k))


def mistype_key(path: Path, rng: random.Random, keys: list[tuple[str, ...]] | None = None) -> None:
    def edit(d: dict, k: str) -> None:
        d[k] = rng.choice([v for v in WRONG_TYPES if type(v) is not type(d[k])])

    _edit_json(path, rng, edit, keys)


def mistype_read_key(path: Path, rng: random.Random) -> None:
    """Mistype one of the metadata.json keys EpisodeDataset.open reads (most of the others it never needs)."""
    mistype_key(path, rng, [(k,) for k in ("total_episodes", "total_steps", "data_format", "agd_schema_version",
                                           "agd_task", "observation_space", "env_spec", "agd_episode_crc32")])


def remove(path: Path, rng: random.Random) -> None:
    path.unlink()


DATASET_PLAN = [("data/main_data.hdf5", flip_bits, 12), ("data/main_data.hdf5", truncate, 4),
                ("data/metadata.json", drop_key, 4), ("data/metadata.json", mistype_key, 4),
                ("data/metadata.json", mistype_read_key, 6),
                ("data/metadata.json", flip_bits, 2), ("data/metadata.json", truncate, 2),
                ("data/main_data.hdf5", remove, 1), ("data/metadata.json", remove, 1), ("data/journal.agd", remove, 1)]
CHECKPOINT_PLAN = [("weights.pt", flip_bits, 10), ("weights.pt", truncate, 4), ("config.json", drop_key, 5),
                   ("config.json", mistype_key, 5), ("config.json", flip_bits, 2), ("config.json", truncate, 2),
                   ("weights.pt", remove, 1), ("config.json", remove, 1)]


def same_dataset(a: EpisodeDataset, b: EpisodeDataset) -> bool:
    return a.task == b.task and a.num_episodes == b.num_episodes and all(
        all(np.array_equal(getattr(x, k), getattr(y, k)) for k in KEYS) and x.seed == y.seed
        for x, y in zip(a.episodes(), b.episodes()))


def same_model(a: WorldModel, b: WorldModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return a.config == b.config and list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def fuzz(original: Path, plan: list, load: Callable[[Path], Any], same: Callable[[Any], bool],
         error: type[Exception], tmp_path: Path, seed: int) -> dict[str, list[str]]:
    """Apply every mutation of ``plan`` to a fresh copy of ``original``; outcomes by kind, failures listed."""
    rng, outcomes = random.Random(seed), {"raised": [], "identical": [], "FAILED": []}
    for name, mutate, count in plan:
        for k in range(count):
            copy = tmp_path / f"{original.name}-{mutate.__name__}-{Path(name).stem}-{k}"
            shutil.copytree(original, copy)
            mutate(copy / name, rng)
            label = f"{mutate.__name__} {name}"
            try:
                outcome = "identical" if same(load(copy)) else "FAILED"
                label += " (loaded different data)" if outcome == "FAILED" else ""
            except error as e:
                message = str(e)
                named = str(copy / name) in message or str((copy / name).parent) in message
                fixes = any(word in message.lower() for word in FIXES)
                outcome = "raised" if named and fixes else "FAILED"
                label += "" if outcome == "raised" else f" (message {message!r})"
            except Exception as e:  # noqa: BLE001 - exactly what must not happen
                outcome, label = "FAILED", f"{label} ({type(e).__name__}: {e})"
            outcomes[outcome].append(label)
    return outcomes


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 6-episode Hopper dataset and a tiny Hopper checkpoint, as the library writes them."""
    root = tmp_path_factory.mktemp("pristine")
    env = gym.make("Hopper-v5", max_episode_steps=30)
    env.action_space.seed(0)
    with DatasetWriter(root / "dataset", "Hopper") as writer:
        for k in range(6):
            writer.add_episode(**rollout_episode(env, seed=k), seed=k)
    torch.manual_seed(0)
    WorldModel(WorldModelConfig.preset("cpu", "Hopper", width=32, depth=1, embed_dim=16)).save(root / "checkpoint")
    return root / "dataset", root / "checkpoint"


def test_damaged_datasets_raise_dataset_error_naming_the_file_or_load_identically(pristine, tmp_path: Path) -> None:
    original = EpisodeDataset.open(pristine[0])
    outcomes = fuzz(pristine[0], DATASET_PLAN, EpisodeDataset.open, lambda d: same_dataset(d, original), DatasetError,
                    tmp_path, seed=0)
    print({k: len(v) for k, v in outcomes.items()})
    assert outcomes["FAILED"] == [], outcomes["FAILED"]
    assert len(outcomes["raised"]) >= 20 and len(outcomes["identical"]) >= 5  # the plan reaches both outcomes
    assert "remove data/journal.agd" in outcomes["identical"]  # an empty journal is optional


def test_damaged_checkpoints_raise_checkpoint_error_naming_the_file_or_load_identically(pristine, tmp_path: Path) -> None:
    original = WorldModel.load(pristine[1])
    outcomes = fuzz(pristine[1], CHECKPOINT_PLAN, WorldModel.load, lambda m: same_model(m, original), CheckpointError,
                    tmp_path, seed=1)
    print({k: len(v) for k, v in outcomes.items()})
    assert outcomes["FAILED"] == [], outcomes["FAILED"]
    assert outcomes["raised"].count("flip_bits weights.pt") == 10  # the sha256 catches every flipped bit
    assert len(outcomes["raised"]) >= 25
