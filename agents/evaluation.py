"""Real-environment evaluation of a policy: mean return and its standard error over seeded episodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

from agd_envs.tasks import Task, get_task

ActFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Evaluation:
    """Returns of ``episodes`` real episodes and their summary."""

    returns: tuple[float, ...]
    lengths: tuple[int, ...]

    @property
    def mean(self) -> float:
        """Mean episode return."""
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """Sample standard deviation of the returns (ddof=1; 0 for one episode)."""
        return float(np.std(self.returns, ddof=1)) if len(self.returns) > 1 else 0.0

    @property
    def stderr(self) -> float:
        """Standard error of the mean return."""
        return self.std / np.sqrt(len(self.returns))


def evaluate(task: str | Task, act: ActFn, episodes: int, seed: int, video: str | None = None) -> Evaluation:
    """Run ``episodes`` real episodes (env seeds ``seed``, ``seed + 1``, ...) with ``act(obs[1, S]) -> [1, A]``.

    ``video``: write an MP4 of the first episode there (needs rendering: MuJoCo with EGL/OSMesa or a display).
    """
    task = get_task(task)
    env = gym.make(task.env_id, render_mode="rgb_array" if video else None)
    frames: list[np.ndarray] = []
    returns, lengths = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, steps, done = 0.0, 0, False
        while not done:
            action = np.asarray(act(obs[None].astype(np.float32)))[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
            if video and episode == 0:
                frames.append(env.render())
        returns.append(total)
        lengths.append(steps)
    env.close()
    if video:
        _write_mp4(video, frames, fps=int(env.metadata.get("render_fps", 30)))
    return Evaluation(tuple(returns), tuple(lengths))


def _write_mp4(path: str, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio  # installed with gymnasium[mujoco]

    with imageio.get_writer(path, fps=fps) as writer:
        for frame in frames:
            writer.append_data(frame)
