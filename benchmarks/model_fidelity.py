"""World-model fidelity: per-step state error of H-step predictions on held-out real segments.

Compares, on the same episode split of a real dataset and the same wall-clock training budget and
threads: the diffusion world model (joint sampling from the real s_0 with the real actions, guide
none, DDIM with several step counts), a one-step MLP and a 5-member MLP ensemble that predict
per-dimension standardized state deltas and the reward (autoregressive rollouts; the ensemble rolls
out the mean of its members), and "the state stays constant" (s_t = s_0).

Error: MSE of z-scored states (training-split statistics), averaged over dimensions and segments,
at each step t = 1..H; also the z-scored reward MSE and the sampling cost in ms per segment.

Run (repo root): python3 benchmarks/model_fidelity.py --dataset datasets/hopper-mixed --seconds 180
``--parallel`` trains the three models in three processes at once (each with ``--threads``): use it
only on a machine with at least 3 x threads free cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from agd_envs.datasets import EpisodeDataset
from agd_envs.sampling import Conditioning, sample
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result

METHODS = ("diffusion", "mlp", "ensemble")


class EnsembleMLP(nn.Module):
    """``E`` independent MLPs evaluated in one batched matmul: ``E x B x in`` -> ``E x B x out``."""

    def __init__(self, members: int, in_dim: int, out_dim: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [width] * depth + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            w = torch.empty(members, d_in, d_out)
            for m in range(members):
                nn.init.kaiming_uniform_(w[m].T, a=5**0.5)  # nn.Linear's default init, per member
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, d_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``E x B x in`` -> ``E x B x out``."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = nn.functional.silu(x)
        return x


class DeltaModel:
    """One-step model on z-scored (s, a) -> per-dim standardized (Δs, r); E members trained on separate batches.

    ``probabilistic``: each member also predicts a log-variance (soft-bounded to [-10, 0.5]) and is
    trained by Gaussian negative log-likelihood, as MBPO's ensemble; validation always uses the MSE of
    the mean. Rollouts use the mean over members (:meth:`rollout`) or, as MBPO, a random member's
    Gaussian sample per step (:meth:`rollout_sampled`).
    """

    def __init__(
        self, train: EpisodeDataset, members: int, lr: float = 1e-3, batch_size: int = 256, probabilistic: bool = False
    ) -> None:
        stats = train.statistics()
        t = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
        self.s_mean, self.s_std = t(stats.obs_mean), t(stats.obs_std)
        self.a_mean, self.a_std = t(stats.act_mean), t(stats.act_std)
        self.r_mean, self.r_std = t(stats.rew_mean), t(stats.rew_std)
        every = train.sample_segments(len(train.segment_starts(1)), 1, indices=range(len(train.segment_starts(1))))
        z = self._z(every.states[:, 0])
        dz = self._z(every.states[:, 1]) - z
        self.d_mean, self.d_std = dz.mean(0), dz.std(0).clamp_min(1e-6)  # the key to MLP precision (prototype)
        s, a = train.task.obs_dim, train.task.act_dim
        self.members, self.batch_size, self.probabilistic = members, batch_size, probabilistic
        self.out_dim = s + 1
        self.net = EnsembleMLP(members, s + a, self.out_dim * (2 if probabilistic else 1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def _z(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.s_mean) / self.s_std

    def _inputs(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, (a - self.a_mean) / self.a_std], dim=-1)

    def _targets(self, seg: Any) -> torch.Tensor:
        dz = (self._z(seg.states[..., 1, :]) - self._z(seg.states[..., 0, :]) - self.d_mean) / self.d_std
        return torch.cat([dz, ((seg.rewards[..., 0] - self.r_mean) / self.r_std)[..., None]], dim=-1)

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``E x B x in`` -> (mean ``E x B x out``, log-variance or None)."""
        out = self.net(x)
        if not self.probabilistic:
            return out, None
        mean, raw = out[..., : self.out_dim], out[..., self.out_dim :]
        log_var = 0.5 - nn.functional.softplus(0.5 - raw)
        return mean, -10.0 + nn.functional.softplus(log_var + 10.0)

    def loss(self, seg: Any, nll: bool = False) -> torch.Tensor:
        """Per-member MSE (or, with ``nll`` on a probabilistic model, Gaussian NLL) ``E`` on segments with a
        leading member axis (``E x B x ...``) or shared ones."""
        x = self._inputs(self._z(seg.states[..., 0, :]), seg.actions[..., 0, :])
        if x.dim() == 2:
            x = x.expand(self.members, -1, -1)
        mean, log_var = self._predict(x)
        err = (mean - self._targets(seg)).square()
        if nll and log_var is not None:
            return (err * torch.exp(-log_var) + log_var).mean(dim=(-1, -2))
        return err.mean(dim=(-1, -2))

    def fit(
        self, train: EpisodeDataset, val: EpisodeDataset, seconds: float, generator: torch.Generator
    ) -> dict[str, Any]:
        """Train for ``seconds``; keep each member's best-on-validation weights (checked every 250 updates)."""
        n_val = min(len(val.segment_starts(1)), 4096)
        val_seg = val.sample_segments(n_val, 1, indices=range(n_val))
        best = torch.full((self.members,), float("inf"))
        best_state = copy.deepcopy(self.net.state_dict())

        def keep_best() -> None:
            nonlocal best
            with torch.no_grad():
                v = self.loss(val_seg)
            for name, tensor in self.net.state_dict().items():
                better = (v < best).reshape(-1, *[1] * (tensor.dim() - 1))
                best_state[name] = torch.where(better, tensor, best_state[name]).clone()
            best = torch.minimum(best, v)

        start, updates = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            seg = train.sample_segments(self.members * self.batch_size, 1, generator=generator)
            seg = type(seg)(*(rearrange(v, "(e b) ... -> e b ...", e=self.members) for v in
                              (seg.states, seg.actions, seg.rewards, seg.terminations)))  # fmt: skip
            loss = self.loss(seg, nll=True).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            updates += 1
            if updates % 250 == 0:
                keep_best()
        keep_best()
        self.net.load_state_dict(best_state)
        return {"updates_per_member": updates, "train_seconds": time.perf_counter() - start,
                "best_val_loss": best.tolist()}  # fmt: skip

    @torch.no_grad()
    def rollout(self, s0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real s0 ``B x S``, actions ``B x H x A`` -> z-scored states ``B x H x S`` (s_1..s_H), z rewards ``B x H``."""
        z, states, rewards = self._z(s0), [], []
        for h in range(actions.shape[1]):
            out = self._predict(self._inputs(z, actions[:, h]).expand(self.members, -1, -1))[0].mean(0)
            z = z + out[:, :-1] * self.d_std + self.d_mean
            states.append(z)
            rewards.append(out[:, -1])
        return torch.stack(states, 1), torch.stack(rewards, 1)


    @torch.no_grad()
    def rollout_sampled(self, s0: torch.Tensor, actions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MBPO's rollout: each step a random member's Gaussian sample -> z-scored states ``B x H x S``."""
        z, states = self._z(s0), []
        rows = torch.arange(len(s0))
        for h in range(actions.shape[1]):
            mean, log_var = self._predict(self._inputs(z, actions[:, h]).expand(self.members, -1, -1))
            pick = torch.randint(self.members, (len(s0),), generator=generator)
            out = mean[pick, rows]
            if log_var is not None:
                out = out + torch.exp(0.5 * log_var[pick, rows]) * torch.randn(out.shape, generator=generator)
            z = z + out[:, :-1] * self.d_std + self.d_mean
            states.append(z)
        return torch.stack(states, 1)


def per_step_mse(pred: torch.Tensor, true: torch.Tensor) -> list[float]:
    """``B x H x S`` z-scores -> H per-step MSEs (mean over segments and dimensions)."""
    return (pred - true).square().mean(dim=(0, 2)).tolist()


def timed(fn: Any, segments: int) -> tuple[Any, float]:
    """Run ``fn()``; return its result and the ms per segment."""
    start = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - start) / segments


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one method within the budget and evaluate it on the held-out segments."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = EpisodeDataset.open(args.dataset)
    train, test = data.split(0.9, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    seg = test.sample_segments(args.segments, args.horizon, generator=torch.Generator().manual_seed(args.seed + 1))
    stats = train.statistics()
    mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in (stats.obs_mean, stats.obs_std))
    z_true = (seg.states - mean) / std
    r_true = (seg.rewards - float(stats.rew_mean)) / float(stats.rew_std)
    constant = z_true[:, :1].expand(-1, args.horizon, -1)
    out: dict[str, Any] = {"constant": {"state_mse": per_step_mse(constant, z_true[:, 1:])}}
    if method == "diffusion":
        overrides = json.loads(args.overrides)
        model = WorldModel(WorldModelConfig.preset(args.preset, data.task, horizon=args.horizon, **overrides))
        model.to(args.device)
        trainer = WorldModelTrainer(model)
        log = trainer.fit(train, 10**9, generator=gen, progress=False, max_seconds=args.seconds, log_every=200)
        out["diffusion"] = {"config": model.config.to_dict(), "updates": int(model.num_updates),
                            "train_seconds": log[-1]["seconds"], "final_loss": log[-1]["loss"]}  # fmt: skip
        for steps in args.sampling_steps:
            cond = Conditioning.from_start(seg.states[:, 0], seg.actions)
            g = torch.Generator(device=args.device).manual_seed(0)
            imagined, ms = timed(lambda: sample(model, cond, steps=steps, generator=g), args.segments)
            rewards = (imagined.rewards.cpu() - float(stats.rew_mean)) / float(stats.rew_std)
            out[f"diffusion_{steps}"] = {
                "state_mse": per_step_mse((imagined.states[:, 1:].cpu() - mean) / std, z_true[:, 1:]),
                "reward_mse": (rewards - r_true).square().mean().item(),
                "ms_per_segment": ms,
            }
    else:
        members = 1 if method == "mlp" else 5
        fit_part, val = train.split(0.9, seed=args.seed + 2)
        model_ = DeltaModel(fit_part, members)
        info = model_.fit(fit_part, val, args.seconds, gen)
        (states, rewards), ms = timed(lambda: model_.rollout(seg.states[:, 0], seg.actions), args.segments)
        out[method] = {**info, "state_mse": per_step_mse(states, z_true[:, 1:]),
                       "reward_mse": (rewards - r_true).square().mean().item(), "ms_per_segment": ms}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="datasets/hopper-mixed")
    parser.add_argument("--seconds", type=float, default=180.0, help="training wall-clock per method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--overrides", default="{}", help="JSON of WorldModelConfig field overrides")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[2, 4, 8, 32])
    parser.add_argument("--segments", type=int, default=1000, help="held-out segments evaluated")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", action="store_true", help="one process per method, at the same time")
    parser.add_argument("--name", default="model_fidelity", help="result file benchmarks/results/<name>.json")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: a --parallel child's output
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # also what the result file records

    results: dict[str, Any] = {}
    if args.parallel and args.part is None:
        with tempfile.TemporaryDirectory() as tmp:
            children = []
            for method in args.methods:
                part = Path(tmp) / f"{method}.json"
                rest = [a for a in sys.argv[1:] if a != "--parallel"]
                cmd = [sys.executable, __file__, *rest, "--methods", method, "--part", str(part)]
                children.append((subprocess.Popen(cmd), part))
            for child, part in children:
                if child.wait() != 0:
                    raise SystemExit(f"{part.stem} run failed (exit {child.returncode})")
                results.update(json.loads(part.read_text()))
    else:
        for method in args.methods:
            results.update(run_method(method, args))
        if args.part is not None:
            Path(args.part).write_text(json.dumps(results))
            return
    summary = {name: [round(v, 5) for v in r["state_mse"]] for name, r in results.items() if "state_mse" in r}
    print(json.dumps({"summary_state_mse_t1_to_H": summary}), file=sys.stderr)
    write_result(args.name, {"dataset": args.dataset, "overrides": json.loads(args.overrides), "seconds_per_method": args.seconds,
                                    "threads": args.threads, "parallel": args.parallel,
                                    "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
