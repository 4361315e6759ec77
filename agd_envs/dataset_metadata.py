"""metadata.json of a dataset: Minari's keys plus ours, the task a dataset holds, and where its files are."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agd_envs import _journal as J
from agd_envs._journal import DatasetError
from agd_envs.tasks import TASKS, Task, get_task

SCHEMA_VERSION = 1
"""Version of the agd_* metadata keys and the journal; readers refuse datasets with a larger one."""
_MINARI_VERSION = "0.5.0"  # the oldest 0.5 release: every Minari 0.5.x lists it as supported
_NAMESPACE = "agd"
DATASET_ID_RE = re.compile(r"(?:[-\w][-\w/]*[-\w]+/)?[-\w]+-v\d+")
"""Minari's dataset id grammar, version required."""
PathLike = str | os.PathLike[str]


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


def space_dtype(metadata: dict[str, Any]) -> np.dtype | None:
    """The observation dtype that ``observation_space`` declares, or None if it declares none readable."""
    try:
        return np.dtype(json.loads(metadata["observation_space"])["dtype"])
    except (TypeError, KeyError, ValueError):
        return None


def new_metadata(task: Task, obs_dtype: np.dtype, dataset_id: str, policy: str, author: str,
                 description: str) -> dict[str, Any]:
    """metadata.json of a new, empty dataset: Minari's keys and ours."""
    return {
        "total_episodes": 0, "total_steps": 0, "data_format": "hdf5", "jpeg_encoding": False,
        "observation_space": _box(obs_dtype, task.obs_dim, -math.inf, math.inf),
        "action_space": _box(np.dtype(np.float32), task.act_dim, task.action_low, task.action_high),
        "env_spec": gym.spec(task.env_id).to_json(), "dataset_size": 0.0, "dataset_id": dataset_id,
        "author": [author], "algorithm_name": policy, "description": description,
        "minari_version": _MINARI_VERSION, "agd_schema_version": SCHEMA_VERSION, "agd_task": task.name,
        J.CRC_METADATA_KEY: True,
    }


def check_schema(metadata: dict[str, Any], where: Path) -> None:
    """Refuse a dataset written by a newer agd-envs (DatasetError naming the upgrade)."""
    version = metadata.get("agd_schema_version")
    if version is not None and (not isinstance(version, int) or version > SCHEMA_VERSION):
        raise DatasetError(
            f"{where}: written by a newer agd-envs (agd_schema_version {version!r}, this one reads up to "
            f"{SCHEMA_VERSION}). Upgrade with `pip install -U agd-envs`."
        )


def infer_task(metadata: dict[str, Any], where: Path, task: str | Task | None) -> Task:
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


def resolve_data_dir(path: PathLike) -> Path:
    """The ``data`` directory of an existing dataset given its root, its data dir or its main_data.hdf5."""
    data_dir = J.find_data_dir(path)
    if data_dir is None:
        raise DatasetError(
            f"{path}: no dataset here (expected {Path(path) / 'data' / J.METADATA_FILE}). Check the path, "
            "or collect one with DatasetWriter."
        )
    return data_dir


def default_dataset_id(root: Path) -> str:
    """``agd/<root name>-v0``: a valid Minari id made from the dataset directory's name."""
    name = re.sub(r"[^-\w]+", "-", root.resolve().name).strip("-") or "dataset"
    return f"{_NAMESPACE}/{name}" if re.search(r"-v\d+$", name) else f"{_NAMESPACE}/{name}-v0"
