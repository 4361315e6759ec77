"""How saturated is a trained run's deterministic policy, and where does its real return come from?

For each run directory (`agd train --out DIR`, with its ``checkpoint/agent.pt``): one real episode of
the mean action from env seed 20000, the fraction of steps with |a| > 0.95 (over action entries),
and the episode's summed forward reward and control cost (``info["reward_forward"]``, ``info["reward_ctrl"]``).

Run (repo root): python3 benchmarks/policy_saturation.py runs/rhead/halfcheetah-eag-rhead-s0 --name policy_saturation_x
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

from agd_envs.tasks import get_task
from agents.trainer import agent_from_run

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def saturation(run: str, seed: int = 20_000) -> dict[str, float]:
    """Saturated fraction, forward reward and control cost of one deterministic episode of ``run``'s policy."""
    config, agent = agent_from_run(run)
    task = get_task(config.task)
    env = gym.make(task.env_id)
    obs, _ = env.reset(seed=seed)
    actions, forward, ctrl, steps = [], 0.0, 0.0, 0
    for steps in range(1, 1001):
        action = agent.act(obs[None].astype(np.float32), deterministic=True)[0]
        obs, _, terminated, truncated, info = env.step(action)
        actions.append(np.clip(action, task.action_low, task.action_high))
        forward, ctrl = forward + info.get("reward_forward", 0.0), ctrl + info.get("reward_ctrl", 0.0)
        if terminated or truncated:
            break
    env.close()
    saturated = float(np.mean(np.abs(np.array(actions)) > 0.95))
    return {"saturated_fraction": saturated, "forward_reward": float(forward), "ctrl_reward": float(ctrl), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--name", default="policy_saturation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    write_result(args.name, {"runs": {run: saturation(run) for run in args.runs}})


if __name__ == "__main__":
    main()
