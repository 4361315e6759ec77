"""Fewer network evaluations at equal fidelity: our K-step DDIM sampler against a reference-style 128-step one.

The task's default model (``agd_envs.defaults``: the ``cpu`` preset, 5000 updates, seed 0, the shipped
dataset). The reference sampler needs N = 128 diffusion steps, which the ``cpu`` preset now has; a
preset with another N is measured beside the same network trained with N = 128 ("n128"). Held-out
data: real episodes collected here with a seed the shipped data never used.

* fidelity: per-step z-scored state MSE over t = 1..H of joint segments sampled from the real s_0
  with the real actions (guide none), for the reference sampler (n128, all 128 steps, DDPM ancestral,
  eta = 1) and for ours with K deterministic DDIM steps on either model; the ratio of the step-H errors;
* throughput: imagined transitions/s (B x H per call) of paper Algorithm 2 (policy-guided actions and
  the advantage guide) -- ours is ``agd_envs.sampling.imagine(..., steps=K)``, the reference is the
  straightforward loop below (128 steps, one Python loop, fp32, PolyGRAD's one gradient step on the
  actions and AGD's c sigma_t^4 sigmoid-advantage step on the x0 states at every step) -- timed in
  the same run, so the ratio is what to read;
* achieved GEMM FLOP/s of our sampler's denoiser matmuls as a fraction of a plain ``torch.mm`` peak
  measured in the same run with the same threads.

Run (repo root): python3 benchmarks/sampler_efficiency.py --tasks HalfCheetah Hopper Walker2d Reacher
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.distributions import Distribution

from agd_envs.collector import RealEnvCollector
from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import DEFAULT_FIT_STEPS, cache_dir, default_dataset_path, default_model
from agd_envs.diffusion import step_to
from agd_envs.sampling import Conditioning, imagine, sample
from agd_envs.tasks import get_task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig

try:
    from benchmarks._common import write_result
    from benchmarks.model_fidelity import per_step_mse
    from benchmarks.sampling import _Actor, _Critic
except ImportError:  # run as a script from the repo root
    from _common import write_result
    from model_fidelity import per_step_mse
    from sampling import _Actor, _Critic

REFERENCE_STEPS = 128
REFERENCE_C = 4.0  # the reference's hard-coded guide constant (HEAD: sigmoid guide, c = 4)
REFERENCE_ACTION_SCALE = 0.005  # PolyGRAD's initial action-guidance scale


def reference_sample(
    model: WorldModel,
    s0: torch.Tensor,
    *,
    actions: torch.Tensor | None = None,
    actor: nn.Module | None = None,
    critic: nn.Module | None = None,
    gamma: float = 0.99,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reference-style sampling of ``B`` segments from real ``s0`` ``B x S``: real states ``B x (H+1) x S``.

    Every one of the N training steps: denoise; inpaint s_0; with an ``actor``, one gradient step of
    the actions on log pi (clamped to mean +- 3 std) plus sigma_t noise; with a ``critic``, the
    sigmoid-advantage gradient on the x0 states scaled by c sigma_t^4; then the DDPM posterior step.
    Without ``actor``, ``actions`` (``B x H x A`` real) are fixed. Unlike the reference, the critic sees
    real-unit states (its unit bug changes the numbers, not the cost).
    """
    layout, norm, schedule, task = model.layout, model.normalizer, model.schedule, model.task
    batch, device = s0.shape[0], s0.device
    known_mask = layout.known_mask(torch.ones(batch, dtype=torch.long, device=device))
    states0 = torch.zeros(batch, layout.horizon + 1, layout.obs_dim, device=device)
    states0[:, 0] = s0
    known_x = torch.where(known_mask, layout.pack(norm.normalize_states(states0), torch.zeros(batch, layout.horizon, device=device)), 0.0)
    action_mask = torch.ones(batch, layout.horizon, dtype=torch.bool, device=device)
    if actions is None:
        a_norm = torch.randn(batch, layout.horizon, layout.act_dim, generator=generator, device=device)
    else:
        a_norm = norm.normalize_actions(actions)
    x = torch.where(known_mask, known_x, torch.randn(batch, layout.x_dim, generator=generator, device=device))
    for t in reversed(range(schedule.num_steps)):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        with torch.no_grad():
            x0 = torch.where(known_mask, known_x, model.denoise(x, t_batch, a_norm, action_mask, known_x, known_mask))
        _, variance = step_to(schedule, x, t_batch, t_batch - 1, x0, 1.0, None)
        sigma2 = variance[:, :1]
        if actor is not None:
            states = norm.unnormalize_states(layout.unpack(x0)[0])[:, :-1]
            a = norm.unnormalize_actions(a_norm).detach().requires_grad_(True)
            policy: Distribution = actor(states.reshape(-1, layout.obs_dim))
            mean, std = policy.mean.reshape(a.shape), policy.stddev.reshape(a.shape)
            clamped = torch.minimum(torch.maximum(a, mean - 3 * std), mean + 3 * std)
            log_pi = torch.distributions.Normal(mean, std).log_prob(clamped).sum()
            (grad_a,) = torch.autograd.grad(log_pi, a)
            a_new = (clamped + REFERENCE_ACTION_SCALE * grad_a).detach()
            a_norm = norm.normalize_actions(a_new)
            if t > 0:
                a_norm = a_norm + sigma2.sqrt()[..., None] * torch.randn(a_norm.shape, generator=generator, device=device)
        if critic is not None and t > 0:
            z = x0.detach().requires_grad_(True)
            z_states, z_rewards = layout.unpack(z)
            states = norm.unnormalize_states(z_states)
            rewards = norm.unnormalize_rewards(z_rewards).detach()
            done = task.terminated(states[:, 1:].detach()).float()
            values = critic(states.reshape(-1, layout.obs_dim)).reshape(batch, layout.horizon + 1)
            adv = rewards + gamma * (1 - done) * values[:, 1:] - values[:, :-1]
            (grad,) = torch.autograd.grad(torch.nn.functional.logsigmoid(adv).sum(), z)
            grad = grad * layout.state_mask(device)
            x0 = torch.where(known_mask, known_x, x0 + REFERENCE_C * sigma2.square() * grad)
        noise = torch.randn(x.shape, generator=generator, device=device) if t > 0 else None
        x, _ = step_to(schedule, x, t_batch, t_batch - 1, x0.detach(), 1.0, noise)
        x = torch.where(known_mask, known_x, x)
    return norm.unnormalize_states(layout.unpack(x0.detach())[0])


def held_out(task: str, steps: int, seed: int, count: int, horizon: int) -> Any:
    """``count`` real H-step segments from episodes collected now (sine policy, a seed the shipped data never used)."""
    with tempfile.TemporaryDirectory() as tmp:
        collector = RealEnvCollector(task, f"{tmp}/held-out", num_envs=4, seed=seed, policy_name="sine", progress=False)
        collector.collect("sine", steps)
        collector.close()
        data = EpisodeDataset.open(f"{tmp}/held-out", task=task)
        n = min(count, len(data.segment_starts(horizon)))
        return data.sample_segments(n, horizon, indices=range(n))


def state_errors(model: WorldModel, pred: torch.Tensor, true: torch.Tensor) -> list[float]:
    """Real states ``B x (H+1) x S`` -> H per-step MSEs of z-scores (model statistics), t = 1..H."""
    z = model.normalizer.normalize_states
    return per_step_mse(z(pred[:, 1:]), z(true[:, 1:]))


def seconds_per_call(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall seconds of ``fn`` over ``repeats`` calls after one warm-up (best: the machine is shared)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of a plain fp32 ``size x size`` matmul on this machine and thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = seconds_per_call(lambda: torch.mm(a, b), repeats)
    return 2 * size**3 / seconds


def denoiser_flops(model: WorldModel, batch: int) -> float:
    """Multiply-add FLOPs of the Linear layers of one denoiser call on ``batch`` segments."""
    return sum(2.0 * batch * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def reference_model(name: str) -> WorldModel:
    """The default recipe with N = 128 diffusion steps (cached beside the default models)."""
    target = cache_dir() / "models" / f"{name.lower()}-cpu-n128-benchmark"
    if (target / "config.json").is_file():
        return WorldModel.load(target, task=name)
    model = WorldModel(WorldModelConfig.preset("cpu", name, diffusion_steps=REFERENCE_STEPS))
    data = EpisodeDataset.open(default_dataset_path(name), task=name)
    WorldModelTrainer(model).fit(data, DEFAULT_FIT_STEPS, generator=torch.Generator().manual_seed(0), progress=False)
    model.save(target)
    return model


def run_task(name: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """Fidelity and throughput rows of one task."""
    models = {"default": default_model(name, progress=False).eval()}
    if models["default"].schedule.num_steps != REFERENCE_STEPS:
        models["n128"] = reference_model(name).eval()
    reference = models.get("n128", models["default"])
    task, horizon = get_task(name), models["default"].config.horizon
    seg = held_out(name, args.held_out_steps, args.seed, args.segments, horizon)
    s0, true = seg.states[:, 0], seg.states
    g = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
    ref = reference_sample(reference, s0, actions=seg.actions, generator=g())
    fidelity = {"reference": state_errors(reference, ref, true)}
    with torch.no_grad():
        for (label, model), k in itertools.product(models.items(), args.steps):
            if k <= model.schedule.num_steps:
                out = sample(model, Conditioning.from_start(s0, seg.actions), steps=k, eta=0.0, generator=g())
                fidelity[f"{label}-ddim{k}"] = state_errors(model, out.states, true)
    torch.manual_seed(args.seed)
    actor, critic = _Actor(task.obs_dim, task.act_dim), _Critic(task.obs_dim)
    start = s0[torch.randint(len(s0), (args.batch,), generator=g())]
    ref_s = seconds_per_call(lambda: reference_sample(reference, start, actor=actor, critic=critic, generator=g()), args.repeats)
    transitions = args.batch * horizon
    rows = [{"sampler": "reference", "steps": REFERENCE_STEPS, "seconds": ref_s, "transitions_per_s": transitions / ref_s,
             "speedup": 1.0, "error_H": fidelity["reference"][-1], "error_H_ratio": 1.0}]  # fmt: skip
    for k in args.steps:  # the cost does not depend on N: time on the N = 128 model, which allows every k
        secs = seconds_per_call(lambda: imagine(reference, start, actor, critic, guide="eag", steps=k, generator=g()), args.repeats)
        flops = k * denoiser_flops(reference, args.batch)
        timing = {"seconds": secs, "transitions_per_s": transitions / secs, "speedup": ref_s / secs,
                  "denoiser_gflops_per_s": flops / secs / 1e9, "fraction_of_matmul_peak": flops / secs / peak}  # fmt: skip
        for label in models:
            if f"{label}-ddim{k}" in fidelity:
                error = fidelity[f"{label}-ddim{k}"][-1]
                rows.append({"sampler": f"{label}-ddim{k}", "steps": k, **timing, "error_H": error,
                             "error_H_ratio": error / fidelity["reference"][-1]})  # fmt: skip
    for row in rows:
        print(f"{name:>11} {row['sampler']:>16}: {row['transitions_per_s']:9.0f} transitions/s ({row['speedup']:5.1f}x), "
              f"error at H {row['error_H']:.4f} ({row['error_H_ratio']:.2f}x the reference)")  # fmt: skip
    return {"task": name, "segments": len(s0), "horizon": horizon, "parameters": models["default"].num_parameters(),
            "per_step_error": fidelity, "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["HalfCheetah", "Hopper", "Walker2d", "Reacher"])
    parser.add_argument("--steps", type=int, nargs="+", default=[128, 32, 16, 8, 4, 2, 1])
    parser.add_argument("--batch", type=int, default=256, help="segments per timed call")
    parser.add_argument("--segments", type=int, default=500, help="held-out segments for the error curves")
    parser.add_argument("--held-out-steps", type=int, default=8000, help="real steps collected for the held-out set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    peak = matmul_peak()
    tasks = [run_task(name, args, peak) for name in args.tasks]
    write_result("sampler_efficiency_cpu", {"matmul_peak_gflops_per_s": peak / 1e9, "batch": args.batch, "tasks": tasks})


if __name__ == "__main__":
    main()
