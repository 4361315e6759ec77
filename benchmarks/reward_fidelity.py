"""Does a world model's imagined reward respond to the actions as the real reward does?

From real states reached by uniform-random play, the real env (state restored with ``set_state``)
and the world model (joint segment with the same H actions, s_0 inpainted) each run H steps under four
action families: all zero, ±0.5 random signs, uniform in the box, ±1 random signs ("bang-bang").
Reported per family: the mean real reward per step, its control-cost part (``info["reward_ctrl"]``),
the mean imagined reward, and their correlation over the steps. The number that matters for an agent
is the *price of saturating*: reward(bang-bang) − reward(zero), real against imagined. An imagined
price much smaller than the real one makes saturated actions look cheap in the dream.

Run (repo root):
    python3 benchmarks/reward_fidelity.py --task HalfCheetah
    python3 benchmarks/reward_fidelity.py --task HalfCheetah --models runs/x/checkpoint/model --name reward_fidelity_x
    python3 benchmarks/reward_fidelity.py --task HalfCheetah --train-updates 2000 --name reward_fidelity_halfcheetah_head

``--train-updates K`` trains two ``cpu``-preset models on the shipped data with the same seed and K
updates, one with the per-transition reward head (``reward_head=True``) and one without, and measures both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path, default_model
from agd_envs.sampling import Conditioning, sample
from agd_envs.tasks import Task, get_task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result

Families = dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]]
FAMILIES: Families = {
    "zero": lambda rng, shape: np.zeros(shape),
    "half": lambda rng, shape: 0.5 * rng.choice([-1.0, 1.0], shape),
    "uniform": lambda rng, shape: rng.uniform(-1.0, 1.0, shape),
    "bang": lambda rng, shape: rng.choice([-1.0, 1.0], shape),
}


def start_states(task: Task, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` (qpos, qvel, obs) reached by 5-60 steps of uniform-random play (never terminal)."""
    env = gym.make(task.env_id).unwrapped
    rng = np.random.default_rng(seed)
    starts = []
    while len(starts) < count:
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        for _ in range(int(rng.integers(5, 60))):
            obs, _, terminated, _, _ = env.step(rng.uniform(task.action_low, task.action_high, task.act_dim))
            if terminated:
                break
        if not terminated:
            starts.append((env.data.qpos.copy(), env.data.qvel.copy(), obs.astype(np.float32)))
    env.close()
    return starts


def real_rewards(task: Task, starts: list, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real rewards, control-cost parts and a still-alive mask, each ``B x H``."""
    env = gym.make(task.env_id).unwrapped
    env.reset(seed=0)
    shape = actions.shape[:2]
    reward, ctrl, alive = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=bool)
    for b, (qpos, qvel, _) in enumerate(starts):
        env.set_state(qpos, qvel)
        for t in range(shape[1]):
            _, reward[b, t], terminated, _, info = env.step(actions[b, t])
            ctrl[b, t], alive[b, t] = info.get("reward_ctrl", 0.0), True
            if terminated:
                break
    env.close()
    return reward, ctrl, alive


def measure(model: WorldModel, task: Task, starts: list, seed: int, steps: int | None) -> dict[str, dict[str, float]]:
    """Per action family: real and imagined reward per step, the real control cost and their correlation."""
    rng = np.random.default_rng(seed)
    s0 = torch.as_tensor(np.stack([s[2] for s in starts]))
    shape = (len(starts), model.layout.horizon, task.act_dim)
    rows = {}
    for name, family in FAMILIES.items():
        actions = (task.action_high * family(rng, shape)).astype(np.float32)
        real, ctrl, alive = real_rewards(task, starts, actions)
        cond = Conditioning.from_start(s0, torch.as_tensor(actions))
        with torch.no_grad():
            imagined = sample(model, cond, steps=steps, generator=torch.Generator().manual_seed(seed)).rewards.numpy()
        rows[name] = {
            "real": float(real[alive].mean()), "real_ctrl": float(ctrl[alive].mean()),
            "imagined": float(imagined[alive].mean()), "corr": float(np.corrcoef(real[alive], imagined[alive])[0, 1]),
        }  # fmt: skip
    rows["price_of_saturating"] = {key: rows["bang"][key] - rows["zero"][key] for key in ("real", "real_ctrl", "imagined")}
    return rows


def paired_models(task: Task, updates: int, seed: int) -> dict[str, WorldModel]:
    """Two cpu-preset models trained alike on the shipped data: denoised reward entries vs the reward head."""
    data = EpisodeDataset.open(default_dataset_path(task))
    models = {}
    for name, head in (("denoised_rewards", False), ("reward_head", True)):
        torch.manual_seed(seed)
        model = WorldModel(WorldModelConfig.preset("cpu", task, reward_head=head))
        WorldModelTrainer(model).fit(data, updates, generator=torch.Generator().manual_seed(seed), progress=False)
        models[f"{name}_{updates}_updates"] = model
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="HalfCheetah")
    parser.add_argument("--models", nargs="*", default=[], help="WorldModel directories (default: the task's default model)")
    parser.add_argument("--train-updates", type=int, default=0, help="train paired models with/without a reward head")
    parser.add_argument("--starts", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None, help="result name (default reward_fidelity_<task>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    starts = start_states(task, args.starts, args.seed)
    models = {path: WorldModel.load(path) for path in args.models}
    if args.train_updates:
        models.update(paired_models(task, args.train_updates, args.seed))
    models = models or {"default": default_model(task)}
    results = {str(Path(name)): measure(model, task, starts, args.seed, args.steps) for name, model in models.items()}
    write_result(args.name or f"reward_fidelity_{task.name.lower()}", {"task": task.name, "starts": args.starts, "models": results})


if __name__ == "__main__":
    main()
