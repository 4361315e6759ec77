"""Model-free baselines (SB3 PPO, sb3-contrib TRPO) in the same harness: same tasks, same CSV columns.

Hyperparameters are RL Zoo's tuned MuJoCo settings (rl-baselines3-zoo ``hyperparams/ppo.yml`` and
``trpo.yml`` for the v4 envs, which share dynamics with v5), with the observation/reward
normalization they use (VecNormalize). Evaluation matches ``agd train``: deterministic actions on
the real env, seeds ``10_000 + seed``, observations normalized with the frozen training statistics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from agd_envs.tasks import get_task
from agents.evaluation import evaluate
from agents.run_log import RunLog

# RL Zoo (hyperparams/ppo.yml): the MuJoCo entries share normalize=true, n_envs=1, policy MlpPolicy.
PPO_ZOO: dict[str, dict[str, Any]] = {
    "HalfCheetah": dict(batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05, ent_coef=0.000401762,
                        clip_range=0.1, n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8, vf_coef=0.58096,
                        policy_kwargs=dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256]))),
    "Hopper": dict(batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05, ent_coef=0.00229519,
                   clip_range=0.2, n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671,
                   policy_kwargs=dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256]))),
    "Walker2d": dict(batch_size=32, n_steps=512, gamma=0.99, learning_rate=5.05041e-05, ent_coef=0.000585045,
                     clip_range=0.1, n_epochs=20, gae_lambda=0.95, max_grad_norm=1.0, vf_coef=0.871923),
    "Reacher": dict(n_steps=512, gamma=0.9, learning_rate=0.000104019, ent_coef=7.52585e-08, clip_range=0.3,
                    n_epochs=5, gae_lambda=1.0, max_grad_norm=0.9, vf_coef=0.950368),
}  # fmt: skip
# RL Zoo (hyperparams/trpo.yml) for the MuJoCo envs.
TRPO_ZOO: dict[str, dict[str, Any]] = {
    name: dict(batch_size=128, n_steps=1024, gamma=0.99, gae_lambda=0.95, sub_sampling_factor=1, cg_max_steps=25,
               cg_damping=0.1, n_critic_updates=20, learning_rate=0.001)
    for name in ("HalfCheetah", "Hopper", "Walker2d", "Reacher")
}  # fmt: skip
ALGORITHMS = ("ppo", "trpo")


def run_baseline(algo: str, task: str, steps: int, seed: int, out: str | Path, *, eval_every: int = 5000, eval_episodes: int = 10, device: str = "cpu") -> list[dict[str, str]]:
    """Train ``algo`` on the real ``task`` for ``steps`` and log evaluations to ``out/progress.csv``."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown baseline {algo!r}; choose one of {ALGORITHMS}")
    try:
        import gymnasium as gym
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.logger import Logger
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    except ImportError as err:
        raise ImportError("baselines need Stable-Baselines3: pip install 'agd-envs[sb3]'") from err
    if algo == "ppo":
        from stable_baselines3 import PPO as Algorithm
    else:
        from sb3_contrib import TRPO as Algorithm
    spec = get_task(task)
    out = Path(out)
    if (out / "progress.csv").exists():
        raise FileExistsError(f"{out}: already holds a run (progress.csv); choose another --out (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    env = VecNormalize(DummyVecEnv([lambda: gym.make(spec.env_id)]), gamma=(PPO_ZOO if algo == "ppo" else TRPO_ZOO)[spec.name]["gamma"])
    env.seed(seed)
    hyper = dict((PPO_ZOO if algo == "ppo" else TRPO_ZOO)[spec.name])
    model = Algorithm("MlpPolicy", env, seed=seed, device=device, verbose=0, **hyper)
    model.set_logger(Logger(folder=None, output_formats=[]))  # progress.csv is ours; no empty /tmp/SB3-* dir per run
    log, start = RunLog(out), time.perf_counter()

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(env.normalize_obs(obs), deterministic=True)[0]

    def log_eval(real_steps: int) -> None:
        result = evaluate(spec, act, eval_episodes, seed=10_000 + seed)
        wall = time.perf_counter() - start
        log.append({"algo": algo, "task": spec.name, "seed": seed, "real_steps": real_steps, "wall_seconds": wall,
                    "steps_per_second": real_steps / max(wall, 1e-9), "eval_return_mean": result.mean,
                    "eval_return_std": result.std, "eval_return_stderr": result.stderr, "eval_episodes": eval_episodes})  # fmt: skip

    class EvalCallback(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every == 0:
                log_eval(self.num_timesteps)
            return True

    log_eval(0)
    model.learn(total_timesteps=steps, callback=EvalCallback())
    log.close()
    model.save(out / "model")
    env.save(str(out / "vecnormalize.pkl"))
    return log.rows()
