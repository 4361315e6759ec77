"""What a dream env takes from its caller, checked: spaces, the critic protocol, start states, argument values.

Every check raises ValueError (or TypeError) with a message that names the argument and the fix; the dream
envs (agd_envs/dream_vector_env.py, agd_envs/dream_env.py) call them before touching the world model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from agd_envs.datasets import EpisodeDataset
from agd_envs.guides import Critic, call_net
from agd_envs.tasks import Task

_F32_MAX = float(np.finfo(np.float32).max)
CRITIC_SIGNATURE = "critic(obs: Tensor[B, obs_dim]) -> Tensor[B] | Tensor[B, 1]"


def observation_space(task: Task) -> spaces.Box:
    """The dream observation space: float32, the real env's shape, finite float32 bounds."""
    return spaces.Box(-_F32_MAX, _F32_MAX, shape=(task.obs_dim,), dtype=np.float32)


def action_space(task: Task) -> spaces.Box:
    """The real env's action space (float32 Box between the task's bounds)."""
    return spaces.Box(task.action_low, task.action_high, shape=(task.act_dim,), dtype=np.float32)


def check_critic(critic: Critic, task: Task, probe: torch.Tensor) -> None:
    """Call ``critic`` once on a probe batch ``B x S``; ValueError naming the protocol if it breaks it."""
    where = f"{CRITIC_SIGNATURE}, differentiable in obs (real units); critic(obs[{probe.shape[0]}, {task.obs_dim}])"
    probe = probe.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            values = call_net(critic, probe)
    except Exception as err:
        raise ValueError(f"critic must be {where} raised {type(err).__name__}: {err}") from err
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"critic must be {where} returned {type(values).__name__}, not a torch.Tensor")
    if tuple(values.shape) not in ((probe.shape[0],), (probe.shape[0], 1)):
        raise ValueError(f"critic must be {where} returned shape {tuple(values.shape)}")
    if not values.requires_grad:
        raise ValueError(f"critic must be {where} returned a tensor without grad (detached, or computed under no_grad)")
    (grad,) = torch.autograd.grad(values.sum(), probe, allow_unused=True)
    if grad is None:
        raise ValueError(f"critic must be {where} returned values that do not depend on obs")


def start_state_pool(dataset: Any, task: Task, horizon: int, device: torch.device) -> torch.Tensor:
    """First states of every ``horizon``-step segment of ``dataset`` (path, EpisodeDataset or None=default)."""
    if dataset is None:
        from agd_envs.defaults import default_dataset_path

        dataset = default_dataset_path(task)
    if isinstance(dataset, (str, Path)):
        dataset = EpisodeDataset.open(dataset, task=task)
    if not isinstance(dataset, EpisodeDataset):
        raise TypeError(f"dataset must be a path or an EpisodeDataset, got {type(dataset).__name__}")
    if dataset.task.name != task.name:
        raise ValueError(f"dataset {dataset.path} holds {dataset.task.name} episodes, but {task.dream_id} needs "
                         f"{task.name} start states; pass a {task.name} dataset")
    count = len(dataset.segment_starts(horizon))
    if count == 0:
        raise ValueError(f"dataset {dataset.path} has no episode of {horizon}+ steps, so no state starts a "
                         f"{horizon}-step segment; collect longer episodes or pass options={{'initial_state': s0}}")
    chunks = []
    for lo in range(0, count, 65536):  # bounded memory: a chunk holds whole segments
        rows = np.arange(lo, min(count, lo + 65536))
        # On the CPU: the dataset caches a full tensor copy per device it serves; only the pool moves.
        chunks.append(dataset.sample_segments(len(rows), horizon, indices=rows, device="cpu").states[:, 0])
    return torch.cat(chunks).float().to(device).contiguous()


def real_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a numpy array of real numbers; ValueError naming ``name`` otherwise."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of real numbers ({err})") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def int_in(name: str, value: Any, low: int, high: int, why: str) -> int:
    """``value`` as an int in ``low..high``; ValueError naming ``name`` and ``why`` the bounds hold otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high} ({why}), got {value!r}")
    return int(value)


def float_in(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a finite float in ``[low, high]``; ValueError naming ``name`` otherwise."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)
