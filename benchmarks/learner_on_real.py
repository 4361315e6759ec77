"""The bundled learner on real on-policy rollouts, no model: does it learn a task as fast as PPO does?

Separates the learner's update scheme from what imagination changes (short H-step segments from buffer
states, bootstrapped from the critic). Each arm trains ``A2CAgent`` with ``update_from_transitions`` on
``--envs`` x ``--rollout`` real steps per batch (same-step autoreset, the true final observation at a
truncation) and evaluates the mean action every ``--eval-every`` real steps (agents/evaluation.py).
Arms: ``paper`` (one A2C step per batch), ``ppo`` (A2C_PRESETS: 4 clipped epochs x 4 minibatches) and
``ppo-sb3`` (SB3 PPO's schedule: 10 epochs x 32 minibatches, GAE lambda 0.95); SB3's PPO itself is in
``benchmarks/results/runs/<task>-ppo-s*`` (Hopper ~700 after 10k real steps, 1011 at 100k).

An arm may add A2CConfig overrides to a named one with ``+FIELD=JSON``, e.g. ``ppo-sb3+lr_log_std=null``.

Run (repo root):
    python3 benchmarks/learner_on_real.py --task Hopper --steps 50000 --arms paper ppo ppo-sb3
    python3 benchmarks/learner_on_real.py --task Hopper --arms ppo-sb3+target_ema=null ppo-sb3+lr_log_std=null --name learner_on_real_hopper_ablation
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agd_envs.tasks import get_task
from agents.a2c import A2C_PRESETS, A2CAgent, A2CConfig
from agents.evaluation import evaluate

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result

ARMS = {
    "paper": {},
    "ppo": A2C_PRESETS["ppo"],
    "ppo-sb3": {"epochs": 10, "minibatches": 32, "clip_ratio": 0.2, "gae_lambda": 0.95},
    # RL Zoo's Hopper PPO (A2C_PRESETS["zoo"]) at the default std 1.0; with --envs 1 --rollout 512 the batch (512)
    # and minibatch (32) match too.
    "sb3-zoo": A2C_PRESETS["zoo"],
}


def arm_config(arm: str) -> dict[str, Any]:
    """``NAME[+FIELD=JSON...]`` -> the A2CConfig overrides of that arm (a named arm of ``ARMS`` plus the fields)."""
    name, *extra = arm.split("+")
    if name not in ARMS:
        raise ValueError(f"arm {arm!r}: {name!r} is not one of {sorted(ARMS)}")
    fields = dict(ARMS[name])
    for item in extra:
        field, _, value = item.partition("=")
        fields[field] = json.loads(value)
    return fields


def rollout(envs: gym.vector.VectorEnv, agent: A2CAgent, obs: np.ndarray, steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``steps`` steps of every env under the agent's sampled actions -> time-major arrays and the next obs."""
    space = envs.single_action_space
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")}
    for _ in range(steps):
        with torch.no_grad():
            action = agent.actor(torch.as_tensor(obs, dtype=torch.float32)).sample().numpy()
        next_obs, reward, terminated, truncated, info = envs.step(np.clip(action, space.low, space.high))
        true_next = next_obs.copy()
        for i in np.flatnonzero(info.get("_final_obs", np.zeros(len(obs), bool))):
            true_next[i] = info["final_obs"][i]
        for key, value in zip(rows, (obs, action, reward, true_next, terminated, truncated)):
            rows[key].append(value)
        obs = next_obs
    return {k: np.stack(v) for k, v in rows.items()}, obs


def train_arm(task_name: str, arm: str, steps: int, envs_n: int, rollout_steps: int, eval_every: int, episodes: int, seed: int) -> list[dict[str, float]]:
    """One arm's evaluations: ``[{"real_steps", "eval_return", "seconds"}, ...]``."""
    task = get_task(task_name)
    torch.manual_seed(seed)
    envs = gym.make_vec(task.env_id, num_envs=envs_n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})  # fmt: skip
    agent = A2CAgent(task.obs_dim, task.act_dim, A2CConfig(**arm_config(arm)), action_low=task.action_low, action_high=task.action_high)
    obs, _ = envs.reset(seed=seed)
    done, rows, start, next_eval = 0, [], time.perf_counter(), eval_every
    while done < steps:
        batch, obs = rollout(envs, agent, obs, rollout_steps)
        agent.update_from_transitions(**batch)
        done += envs_n * rollout_steps
        if done >= next_eval:
            score = evaluate(task, lambda o: agent.act(o, deterministic=True), episodes, seed=10_000 + done).mean
            rows.append({"real_steps": done, "eval_return": score, "seconds": time.perf_counter() - start})
            print(arm, rows[-1], flush=True)
            next_eval += eval_every
    envs.close()
    return rows


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per-seed evaluations of one arm -> the mean over seeds at each evaluation and the mean over the whole curve."""
    curves = np.array([[row["eval_return"] for row in rows] for rows in runs.values()])
    steps = [row["real_steps"] for row in next(iter(runs.values()))]
    return {"real_steps": steps, "mean_return": curves.mean(0).round(1).tolist(), "area_mean": round(float(curves.mean()), 1),
            "final_mean": round(float(curves[:, -1].mean()), 1), "final_std": round(float(curves[:, -1].std()), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help=f"of {sorted(ARMS)}, each with optional +FIELD=JSON overrides")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--rollout", type=int, default=128, help="steps per env per batch (batch = envs x rollout)")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and arm")
    parser.add_argument("--name", default=None, help="result file (default learner_on_real_<task>)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {arm: {str(seed): train_arm(args.task, arm, args.steps, args.envs, args.rollout, args.eval_every, args.episodes, seed)
                     for seed in args.seeds} for arm in args.arms}  # fmt: skip
    write_result(args.name or f"learner_on_real_{args.task.lower()}", {
        "task": args.task, "seeds": args.seeds, "batch": args.envs * args.rollout, "arms": {a: arm_config(a) for a in args.arms},
        "summary": {arm: summarize(runs) for arm, runs in results.items()}, "evaluations": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
