"""Compounding error over H, 2H and 3H steps: DreamEnv closed loop against an autoregressive MLP ensemble.

Same real dataset split, same wall-clock training budget and threads for both models. For held-out
windows of 3H real transitions without a real termination, the dream starts at the real s_0 and is
stepped with the real actions through a ``DreamVectorEnv`` (guide ``none``, the env's default one DDIM
step per env step); after every H steps the dream is truncated, so it is restarted from its own last
imagined state (``reset(options={"initial_state": ...})``) — an imagined rollout of 3H steps made of
three chained dreams. The ensemble (``--members`` MLPs predicting standardized state deltas and the
reward, ``benchmarks/model_fidelity.py``; ``--probabilistic``: Gaussian heads trained by NLL, as
MBPO's 7-member ensemble) rolls out for 3H steps the mean of its members ("ensemble") and, as MBPO,
a random member's sample per step ("ensemble_sampled").

Budget: ``--seconds`` per model. What a real 100k-step run spends on its world model with the CPU
defaults (``benchmarks/results/train_wallclock_hopper.json``): 3.07 s per 1,000 real steps plus the
2,000 pretraining updates, ~320 s on one thread.

Error at step t: MSE of z-scored states (training-split statistics), over dimensions and the windows
whose dream has not imagined a termination before t.

Run (repo root): python3 benchmarks/compounding_error.py --task Hopper --seconds 320 --threads 1 --members 7 --probabilistic
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.dream_env import DreamVectorEnv
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig

try:
    from benchmarks._common import write_result
    from benchmarks.model_fidelity import DeltaModel
except ImportError:  # run as a script from the repo root
    from _common import write_result
    from model_fidelity import DeltaModel


def held_out_windows(test: EpisodeDataset, length: int, count: int, seed: int):
    """``count`` real windows of ``length`` transitions without a real termination."""
    starts = test.segment_starts(length)
    every = test.sample_segments(len(starts), length, indices=np.arange(len(starts)))
    alive = np.flatnonzero(~every.terminations.any(1).numpy())
    if len(alive) == 0:
        raise SystemExit(f"no held-out window of {length} steps without a termination in {test.path}")
    rows = np.random.default_rng(seed).choice(alive, size=min(count, len(alive)), replace=False)
    return test.sample_segments(len(rows), length, indices=rows)


def dream_rollout(model: WorldModel, data: EpisodeDataset, s0: np.ndarray, actions: np.ndarray, seed: int):
    """Chained H-step dreams from ``s0`` with ``actions`` (``W x L x A``) -> (states ``W x L x S``, running ``W x L``)."""
    count, length = actions.shape[:2]
    env = DreamVectorEnv(data.task, count, model=model, dataset=data, guide="none", autoreset_mode=AutoresetMode.DISABLED)
    obs, _ = env.reset(seed=seed, options={"initial_state": s0})
    states = np.zeros((count, length, s0.shape[-1]), dtype=np.float32)
    running = np.ones((count, length), dtype=bool)
    alive = np.ones(count, dtype=bool)
    for t in range(length):
        obs, _, terminated, truncated, _ = env.step(actions[:, t])
        states[:, t], running[:, t] = obs, alive
        alive &= ~terminated
        ended = terminated | truncated
        if ended.any() and t < length - 1:  # continue every member from its own last imagined state
            obs, _ = env.reset(options={"initial_state": obs, "reset_mask": ended})
    return states, running


def per_step(pred: torch.Tensor, true: torch.Tensor, weight: torch.Tensor) -> list[float]:
    """Weighted per-step MSE of z-scored states ``W x L x S`` -> ``L`` floats."""
    err = (pred - true).square().mean(-1)
    return ((err * weight).sum(0) / weight.sum(0).clamp_min(1)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--seconds", type=float, default=120.0, help="training wall-clock per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--multiples", type=int, default=3, help="roll out multiples x H steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=5, help="ensemble members (MBPO: 7)")
    parser.add_argument("--probabilistic", action="store_true", help="Gaussian NLL heads, as MBPO")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = EpisodeDataset.open(default_dataset_path(args.task))
    train, test = data.split(0.9, seed=args.seed)

    model = WorldModel(WorldModelConfig.preset("cpu", data.task))
    log = WorldModelTrainer(model).fit(train, 10**9, generator=torch.Generator().manual_seed(args.seed),
                                       progress=False, max_seconds=args.seconds, log_every=200)  # fmt: skip
    fit_part, val = train.split(0.9, seed=args.seed + 2)
    ensemble = DeltaModel(fit_part, members=args.members, probabilistic=args.probabilistic)
    ensemble_info = ensemble.fit(fit_part, val, args.seconds, torch.Generator().manual_seed(args.seed))

    horizon = model.config.horizon
    length = args.multiples * horizon
    windows = held_out_windows(test, length, args.windows, args.seed)
    real, actions = windows.states.float(), windows.actions.float()
    start = time.perf_counter()
    dreamed, running = dream_rollout(model, train, real[:, 0].numpy(), actions.numpy(), args.seed)
    dream_seconds = time.perf_counter() - start
    ens_states, _ = ensemble.rollout(real[:, 0], actions)
    ens_sampled = ensemble.rollout_sampled(real[:, 0], actions, torch.Generator().manual_seed(args.seed))

    z = model.normalizer.normalize_states  # training-split statistics (fit refits the normalizer on train)
    true = z(real[:, 1:])
    weight = torch.as_tensor(running, dtype=torch.float32)
    ones = torch.ones_like(weight)
    curves = {
        "dream_closed_loop": per_step(z(torch.as_tensor(dreamed)), true, weight),
        "ensemble": per_step(z(ens_states * ensemble.s_std + ensemble.s_mean), true, ones),  # its z -> real -> ours
        "ensemble_sampled": per_step(z(ens_sampled * ensemble.s_std + ensemble.s_mean), true, ones),
        "constant": per_step(z(real[:, :1]).expand_as(true), true, ones),
        "dream_running": running.mean(0).tolist(),
    }
    marks = [m * horizon - 1 for m in range(1, args.multiples + 1)]
    summary = {name: [round(curves[name][i], 4) for i in marks] for name in ("dream_closed_loop", "ensemble", "ensemble_sampled", "constant")}
    summary["ratio_dream_to_ensemble"] = [round(curves["dream_closed_loop"][i] / curves["ensemble"][i], 2) for i in marks]
    print(f"steps {[i + 1 for i in marks]}: {summary}")
    suffix = f"_{args.members}{'p' if args.probabilistic else ''}_{args.seconds:g}s"
    write_result(f"compounding_error_{data.task.name.lower()}{suffix}", {
        "task": data.task.name, "horizon": horizon, "length": length, "windows": len(real),
        "seconds_per_model": args.seconds, "threads": args.threads, "members": args.members,
        "probabilistic": args.probabilistic,
        "diffusion": {"config": model.config.to_dict(), "updates": int(model.num_updates), "final_loss": log[-1]["loss"]},
        "ensemble": ensemble_info, "dream_seconds": dream_seconds, "at_multiples_of_H": summary, "curves": curves,
    })  # fmt: skip


if __name__ == "__main__":
    main()
