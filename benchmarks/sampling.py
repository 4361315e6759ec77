"""Sampling throughput of the world model: imagined segments per second by guide, guide mode and batch.

Times ``agd_envs.sampling.imagine`` (paper Algorithm 2: joint H-step segments from s_0, policy-guided
actions, a value guide) and one closed-loop ``sample`` call (a DreamEnv step: half the segment known,
no actor) with an untrained world model of the chosen preset: the cost does not depend on the
weights. Actor and critic are reference-sized MLPs (in -> 256 -> 256 -> out, as PolyGRAD's polygrad/agent/a2c.py).

Run: python3 benchmarks/sampling.py --task Hopper --preset cpu --batch 256 1024 --device cpu
Sweep: python3 benchmarks/sampling.py --preset paper --batch 256 --steps 128 32 8 2 --guides none eag --modes x0
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.distributions import Independent, Normal

from agd_envs.sampling import Conditioning, imagine, sample
from agd_envs.world_model import WorldModel, WorldModelConfig

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, 256), nn.ELU(), nn.Linear(256, 256), nn.ELU(), nn.Linear(256, out_dim))


class _Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.net, self.log_std = _mlp(obs_dim, act_dim), nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> Independent:
        return Independent(Normal(torch.tanh(self.net(obs)), self.log_std.exp().expand(obs.shape[0], -1)), 1)


class _Critic(nn.Module):
    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.net = _mlp(obs_dim, 1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)[:, 0]


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="reverse steps, one or more (default: the preset's sampling_steps)")
    parser.add_argument("--guides", nargs="+", default=["none", "eag", "sag"])
    parser.add_argument("--modes", nargs="+", default=["x0", "dps"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="world-model compute dtype")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = WorldModelConfig.preset(args.preset, args.task, dtype=args.dtype)
    model = WorldModel(config).to(device).eval()
    task, horizon = model.task, config.horizon
    actor, critic = _Actor(task.obs_dim, task.act_dim).to(device), _Critic(task.obs_dim).to(device)
    rows = []
    for batch, steps in itertools.product(args.batch, args.steps or [config.sampling_steps]):
        s0 = torch.randn(batch, task.obs_dim, device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        for guide in args.guides:
            for mode in args.modes if guide != "none" else ["x0"]:
                seconds = _time(lambda: imagine(model, s0, actor, critic, guide=guide, guide_mode=mode, steps=steps,
                                                generator=generator), device, args.repeats)  # fmt: skip
                rows.append({"pattern": "joint+actor", "batch": batch, "guide": guide, "mode": mode, "steps": steps,
                             "seconds": seconds, "segments_per_s": batch / seconds})  # fmt: skip
        # One closed-loop DreamEnv step: s_0..s_k, r_0..r_{k-1}, a_0..a_k known, the rest masked.
        k = torch.full((batch,), horizon // 2 + 1, device=device)
        cond = Conditioning(
            states=torch.randn(batch, horizon + 1, task.obs_dim, device=device), num_known_states=k,
            actions=torch.randn(batch, horizon, task.act_dim, device=device), num_known_actions=k,
            rewards=torch.randn(batch, horizon, device=device),
        )  # fmt: skip
        for guide in ("none", "eag"):
            seconds = _time(lambda: sample(model, cond, steps=steps, guide=guide, critic=critic, generator=generator),
                            device, args.repeats)  # fmt: skip
            rows.append({"pattern": "closed-loop step", "batch": batch, "guide": guide, "mode": "x0", "steps": steps,
                         "seconds": seconds, "segments_per_s": batch / seconds})  # fmt: skip
    for row in rows:
        print(f"{row['pattern']:>16} B={row['batch']:<5} {row['guide']:>6} {row['mode']:>3} {row['steps']:>3} steps: "
              f"{1e3 * row['seconds']:8.1f} ms/call  {row['segments_per_s']:10.0f} segments/s")  # fmt: skip
    name = f"sampling_{args.task.lower()}_{args.preset}_{device.type}" + ("_bf16" if args.dtype == "bfloat16" else "")
    if args.steps and len(args.steps) > 1:  # a sweep over the number of reverse steps
        name += "_steps_" + "_".join(map(str, args.steps))
    write_result(name, {"task": task.name, "preset": args.preset, "device": str(device), "dtype": args.dtype,
                        "parameters": model.num_parameters(), "horizon": horizon, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
