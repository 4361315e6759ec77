"""Collect a real MuJoCo dataset and log every acknowledged episode; tests/test_datasets.py SIGKILLs it.

Usage: ``python tests/_crash_writer.py``, then per trial one JSON line of :func:`main`'s
arguments on stdin: the server forks a child that runs the collection and prints the child's pid; the
next stdin line (``kill``) makes it SIGKILL the child (a no-op if it already finished) and print the
wait status. Forking from one process that already imported torch, MuJoCo and h5py keeps a trial at
tens of milliseconds instead of ~1.7 s of interpreter start-up; the child is a real separate process.

Log lines (each one ``os.write`` to an O_APPEND file, so they survive the kill):
``R`` env made, ``W`` writer open, ``P i sha`` before ``add_episode`` of episode i,
``E i`` after it returned, ``C0``/``C1`` around every commit, ``D`` clean finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def episode_sha(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminations: np.ndarray,
                truncations: np.ndarray) -> str:
    """sha256 over the arrays in their stored dtypes (float32 obs/actions, float64 rewards, bool flags)."""
    h = hashlib.sha256()
    for array, dtype in ((observations, np.float32), (actions, np.float32), (rewards, np.float64),
                         (terminations, bool), (truncations, bool)):
        h.update(np.ascontiguousarray(np.asarray(array).astype(dtype)).tobytes())
    return h.hexdigest()


def rollout_episode(env, seed: int) -> dict[str, np.ndarray]:
    """One episode of ``env`` from ``reset(seed=seed)`` with its action space's (seeded) random actions."""
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {key: [] for key in KEYS}
    rows["observations"].append(obs)
    while True:
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(KEYS, (obs, action, reward, terminated, truncated)):
            rows[key].append(value)
        if terminated or truncated:
            return {key: np.array(value) for key, value in rows.items()}


def main(dataset: str, log: str, env_id: str, seed: int, checkpoint_every: int, episodes: int,
         max_steps: int, slow_fsync: float = 0.0) -> None:
    """Collect ``episodes`` random episodes into ``dataset``, logging progress to ``log``.

    ``slow_fsync`` seconds are added after every fsync of a path (a slow disk), which widens each step of
    dataset creation and of a commit so that random kills land in every one of them.
    """
    import gymnasium as gym

    from agd_envs import _journal
    from agd_envs.datasets import DatasetWriter

    real_fsync = _journal.fsync_path

    def slow_fsync_path(path: Path) -> None:
        real_fsync(path)
        time.sleep(slow_fsync)

    _journal.fsync_path = slow_fsync_path

    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write_log(line: str) -> None:
        os.write(log_fd, (line + "\n").encode())

    class LoggedWriter(DatasetWriter):
        def checkpoint(self) -> None:
            write_log("C0")
            super().checkpoint()
            write_log("C1")

    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    write_log("R")
    with LoggedWriter(dataset, env_id, policy="random", checkpoint_every=checkpoint_every) as writer:
        write_log("W")
        for k in range(episodes):
            episode = rollout_episode(env, seed * 1000 + k)
            write_log(f"P {writer.num_episodes} {episode_sha(**episode)}")
            write_log(f"E {writer.add_episode(**episode, seed=seed * 1000 + k)}")
    write_log("D")


def serve() -> None:
    """Run one forked collection per pair of stdin lines (arguments JSON, then ``kill``)."""
    import gymnasium as gym

    import agd_envs.datasets  # noqa: F401  (imported once here, inherited by every child)

    for env_id in ("Hopper-v5", "HalfCheetah-v5"):  # loads MuJoCo and the env modules once
        gym.make(env_id).close()

    while line := sys.stdin.readline():
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                main(**json.loads(line))
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        print(pid, flush=True)
        sys.stdin.readline()
        # Until waitpid reaps it the child's pid cannot be reused, so this kill cannot hit another process.
        os.kill(pid, signal.SIGKILL)
        print(os.waitpid(pid, 0)[1], flush=True)


if __name__ == "__main__":
    serve()
