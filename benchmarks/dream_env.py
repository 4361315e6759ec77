"""Vector step rate of the dream vs the real env: env-steps/s of DreamVectorEnv and MuJoCo's SyncVectorEnv.

For each ``num_envs`` (1, 64, 1024; 4096 too with ``--device cuda``): ``DreamVectorEnv`` of a ``cpu``-preset
world model with guides ``none`` and ``eag`` (critic: an A2C agent's ``critic``, reference-sized
256x256), against a ``gymnasium.vector.SyncVectorEnv`` of the real ``<Task>-v5`` with the same
``num_envs``, in the same run (always on the CPU: MuJoCo). Uniform random actions drawn beforehand,
SAME_STEP autoreset for both, so resets are part of the cost. The world model's network is untrained
(its normalizer is fitted to the task's shipped dataset): the cost of a step does not depend on the
weights, only on how often dreams end, which the result records (``ended_per_step``).

Rate = num_envs x steps / seconds over ``--steps`` vector steps after 2 warm-up steps; the median of
``--repeats`` runs is reported, every run is kept.

Run (repo root): python3 benchmarks/dream_env.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.dream_env import CLOSED_LOOP_STEPS, DreamVectorEnv
from agd_envs.tasks import get_task
from agd_envs.world_model import WorldModel, WorldModelConfig
from agents.a2c import A2CAgent

try:
    from benchmarks._common import write_result
    from benchmarks.collect import raw_steps_per_second
except ImportError:  # run as a script from the repo root
    from _common import write_result
    from collect import raw_steps_per_second


def dream_steps_per_second(env: DreamVectorEnv, steps: int, seed: int) -> tuple[float, float]:
    """(env-steps/s over ``steps`` vector steps after 2 warm-up steps, fraction of member-steps that ended a dream)."""
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, size=(steps + 2, *env.action_space.shape)).astype(np.float32)
    for i in range(2):
        env.step(actions[i])
    ended = 0
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    start = time.perf_counter()
    for i in range(2, steps + 2):
        _, _, terminated, truncated, _ = env.step(actions[i])
        ended += int((terminated | truncated).sum())
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    return env.num_envs * steps / (time.perf_counter() - start), ended / (env.num_envs * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--num-envs", type=int, nargs="+", default=None,
                        help="default: 1 64 1024, plus 4096 on cuda")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="timed vector steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = args.num_envs or ([1, 64, 1024] + ([4096] if device.type == "cuda" else []))

    task = get_task(args.task)
    data = EpisodeDataset.open(default_dataset_path(task), task=task)
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig.preset("cpu", task)).eval()
    model.normalizer.fit(data.statistics())
    model = model.to(device)
    agent = A2CAgent(task.obs_dim, task.act_dim, device=device)
    stats = data.statistics()
    agent.set_obs_statistics(stats.obs_mean, stats.obs_std)

    rows = []
    for num_envs in sizes:
        dreams = {guide: DreamVectorEnv(task, num_envs, model=model, dataset=data, guide=guide, critic=agent.critic)
                  for guide in ("none", "eag")}  # fmt: skip
        runs: dict[str, list[float]] = {"real": [], "none": [], "eag": []}
        ended: dict[str, list[float]] = {"none": [], "eag": []}
        for r in range(args.repeats):  # interleaved, so machine noise hits all alike
            runs["real"].append(raw_steps_per_second(task.env_id, num_envs, num_envs * args.steps, seed=r))
            for guide, env in dreams.items():
                rate, frac = dream_steps_per_second(env, args.steps, seed=r)
                runs[guide].append(rate)
                ended[guide].append(frac)
        real = statistics.median(runs["real"])
        for env_name, rates in runs.items():
            row = {"num_envs": num_envs, "env": "real" if env_name == "real" else f"dream-{env_name}",
                   "steps_per_s": statistics.median(rates), "runs": rates,
                   "ratio_to_real": statistics.median(rates) / real}  # fmt: skip
            if env_name in ended:
                row["ended_per_step"] = statistics.mean(ended[env_name])
            rows.append(row)
            print(f"N={num_envs:<5} {row['env']:>10}: {row['steps_per_s']:10.0f} env-steps/s  "
                  f"x{row['ratio_to_real']:.3f} of real", flush=True)  # fmt: skip
    write_result(f"dream_env_{device.type}", {
        "task": task.name, "device": str(device), "preset": "cpu", "parameters": model.num_parameters(),
        "sampling_steps": CLOSED_LOOP_STEPS, "horizon": model.config.horizon,
        "critic": "A2CAgent(...).critic (256x256)", "steps": args.steps, "repeats": args.repeats, "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
