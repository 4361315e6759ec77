"""Stable-Baselines3 PPO learning in the dream, alternating with real data and world-model refits (MBRL).

Each iteration:

1. collect ``real_steps`` real transitions with the current PPO policy (``RealEnvCollector.collect``)
   into the run's dataset, which starts as a copy of the task's shipped dataset;
2. refit the world model in place on all of that data (``RealEnvCollector.refit``);
3. PPO learns ``dream_steps`` imagined transitions in ``AGD-Dream-<Task>`` (start states from all
   real data so far), guided by its own critic:
   ``gym.make("AGD-Dream-Hopper", critic=lambda obs: ppo.policy.predict_values(obs))``;
4. evaluate the deterministic policy on the REAL env (``agents.evaluation.evaluate``) and log it.

How SB3 fits the dream's protocols:

- ``policy.predict_values(obs)`` takes a float tensor in the observation space's units and applies
  only ``preprocess_obs`` (a float cast for a Box) before the value MLP, and returns ``B x 1`` with
  gradients: a critic in real units, as the env needs. Do not wrap the dream in ``VecNormalize``
  (the policy would then see normalized observations and the critic would need the same transform).
- A dream ends with ``truncated=True`` after H steps. ``DummyVecEnv`` turns that into
  ``info["TimeLimit.truncated"]`` and stores the last imagined observation in
  ``info["terminal_observation"]``; PPO adds gamma V(terminal_obs) to that step's reward
  (tests/test_external_agents.py checks the rollout buffer).
- A guided (``eag``) dream checks its critic when it is built, but PPO's critic exists only after PPO
  is built on an env; so PPO is built on an unguided dream (same spaces) and then handed the guided
  one with ``set_env``.

Run (repo root):  python examples/sb3_ppo_dream.py --iterations 5 --out runs/sb3-dream
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

import agd_envs  # noqa: F401  (registers AGD-Dream-<Task>)
from agd_envs.collector import RealEnvCollector
from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path, default_model
from agd_envs.tasks import get_task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel
from agents.evaluation import evaluate


@dataclass
class Args:
    """Configuration of one run; every field is also a ``--flag``."""

    task: str = "Hopper"
    """Task: real ``<Task>-v5`` for data and evaluation, ``AGD-Dream-<Task>`` for learning."""
    out: str = "runs/sb3-dream"
    """Run directory: the real dataset (``data/``), ``progress.csv`` and ``progress.json``."""
    model: str = ""
    """World-model checkpoint to start from; empty: the task's default model (trained once, cached)."""
    seed: int = 0
    """Seeds PPO, the dreams, the real envs and the evaluation episodes."""
    iterations: int = 5
    """Collect -> refit -> learn-in-dream cycles."""
    real_steps: int = 2000
    """Real transitions collected per iteration with the current PPO policy."""
    real_envs: int = 4
    """Real sub-environments of the collector."""
    refit_updates: int = 300
    """World-model updates per refit."""
    dream_steps: int = 20_000
    """Imagined transitions PPO learns from per iteration."""
    dream_envs: int = 8
    """DreamEnvs in PPO's DummyVecEnv."""
    guide: str = "eag"
    """Guide of the dreams (``eag``, ``sag``, ``reward``, ``none``)."""
    n_steps: int = 256
    """PPO rollout length per env (a rollout is n_steps x dream_envs transitions)."""
    batch_size: int = 64
    """PPO minibatch size."""
    learning_rate: float = 3e-4
    """PPO Adam learning rate."""
    net_width: int = 64
    """Width of the two hidden layers of PPO's policy and value networks."""
    eval_episodes: int = 5
    """Real evaluation episodes per iteration (deterministic actions)."""
    threads: int = 1
    """torch CPU threads. Each DreamEnv steps a batch of one, which is latency-bound: on a busy 2-core
    machine an eag step took 10 ms with 1 thread and 200+ ms with 2 (thread synchronisation)."""


def dream_env(args: Args, world_model: WorldModel, dataset: Any, *, guide: str, critic: Any = None) -> VecEnv:
    """``args.dream_envs`` AGD-Dream envs of ``world_model`` in SB3's DummyVecEnv (with Monitor)."""
    # render_mode=None: make_vec_env asks for "rgb_array" by default, and a dream cannot render.
    kwargs = dict(model=world_model, dataset=dataset, guide=guide, critic=critic, render_mode=None)
    return make_vec_env(get_task(args.task).dream_id, n_envs=args.dream_envs, seed=args.seed, env_kwargs=kwargs)


def build_ppo(args: Args, world_model: WorldModel, dataset: Any) -> PPO:
    """PPO on the dream, its env guided by PPO's own critic (see the module docstring for the order)."""
    ppo = PPO("MlpPolicy", dream_env(args, world_model, dataset, guide="none"), n_steps=args.n_steps,
              batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed, device="cpu",
              policy_kwargs=dict(net_arch=[args.net_width, args.net_width]))  # fmt: skip
    use_dataset(ppo, args, world_model, dataset)
    return ppo


def use_dataset(ppo: PPO, args: Args, world_model: WorldModel, dataset: Any) -> None:
    """Give ``ppo`` fresh guided dreams whose start states come from ``dataset``."""
    critic = lambda obs: ppo.policy.predict_values(obs)  # noqa: E731  (the current PPO critic, looked up per call)
    ppo.set_env(dream_env(args, world_model, dataset, guide=args.guide, critic=critic))


def main(args: Args, world_model: WorldModel | None = None) -> list[dict[str, float]]:
    """Run the loop; return (and write to ``args.out``) one record per iteration (iteration 0: before learning)."""
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    if not data_dir.exists():  # the real data grows from the shipped dataset
        shutil.copytree(default_dataset_path(task), data_dir)
    if world_model is None:
        world_model = WorldModel.load(args.model, task=task) if args.model else default_model(task)
    trainer = WorldModelTrainer(world_model)  # one optimizer across the refits
    torch.manual_seed(args.seed)
    ppo = build_ppo(args, world_model, EpisodeDataset.open(data_dir, task=task))
    act = lambda obs: ppo.predict(obs, deterministic=True)[0]  # noqa: E731
    explore = lambda obs: ppo.predict(obs, deterministic=False)[0]  # noqa: E731

    log: list[dict[str, float]] = []
    start = time.perf_counter()
    with RealEnvCollector(task, data_dir, num_envs=args.real_envs, seed=args.seed, policy_name="sb3-ppo-dream",
                          progress=False) as collector:  # fmt: skip
        for iteration in range(args.iterations + 1):
            if iteration > 0:
                collector.collect(explore, args.real_steps)
                fit_log = collector.refit(trainer, args.refit_updates,
                                          generator=torch.Generator().manual_seed(args.seed + iteration))
                use_dataset(ppo, args, world_model, EpisodeDataset.open(data_dir, task=task))
                ppo.learn(args.dream_steps, reset_num_timesteps=False)
            real = evaluate(task, act, args.eval_episodes, seed=10_000 + args.seed)
            dream_returns = [info["r"] for info in ppo.ep_info_buffer or []]
            record = {
                "iteration": iteration,
                "real_steps": collector.total_steps,
                "dream_steps": ppo.num_timesteps,
                "model_loss": fit_log[-1]["loss"] if iteration > 0 else float("nan"),
                "dream_return": float(np.mean(dream_returns)) if dream_returns else float("nan"),
                "real_return": real.mean,
                "real_return_stderr": real.stderr,
                "real_length": float(np.mean(real.lengths)),
                "seconds": time.perf_counter() - start,
            }
            log.append(record)
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()), flush=True)
            write_progress(out, args, log)
    return log


def write_progress(out: Path, args: Args, log: list[dict[str, float]]) -> None:
    """``progress.csv`` (one row per iteration) and ``progress.json`` (the args too)."""
    with open(out / "progress.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    (out / "progress.json").write_text(json.dumps({"args": asdict(args), "log": log}, indent=2) + "\n")


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Args()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return Args(**vars(parser.parse_args()))


if __name__ == "__main__":
    main(parse_args())
