"""What one agent update costs on CPU, by update scheme: epochs x minibatches x imagined segments.

The bundled agent (``agents/a2c.py``, its real [Linear, LayerNorm, ELU] networks) takes one ``update`` per imagined
batch of H = 10 step segments, and with ``critic_real_steps`` one ``update_critic_from_transitions`` on that many real
transitions. This times both on real Hopper-v5 transitions (the shipped ``datasets/hopper-mixed``, sampled as the trainer does), each
setting interleaved with the others round by round so that load from other processes hits all of them alike, and
reports the median seconds per call (rows after a termination inside a segment are
not learned from, as in imagination: ``valid_fraction``) and the ratio to the reference setting (the first ``--schemes`` entry).
Beside the real-critic step, ``critic_real_loop`` times the same step computed as it was before the λ-returns became
a parallel scan (agents/returns.py ``discounted_suffix_sums``) that reuses V(obs) for V(next_obs)
(agents/a2c.py ``next_state_values``): the critic on obs and next_obs both, and the step-by-step recursion.

``--reference-rev REV`` also times the first scheme with ``agents/a2c.py`` as it was at git revision REV (loaded from
``git show``), interleaved with today's, so a change to the update is measured against its predecessor in one run.

Run (repo root):
    OMP_NUM_THREADS=1 python3 benchmarks/agent_update_cost.py --schemes 5x16x256 5x8x256 5x4x256 2x16x256 5x16x128 --name agent_update_cost_hopper
    OMP_NUM_THREADS=1 PYTHONPATH=. python3 benchmarks/agent_update_cost.py --schemes 5x16x256 --reference-rev 2070187 --name agent_update_cost_hopper_fused
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agents.a2c import A2CAgent, A2CConfig
from agents.returns import alive_mask
from torch import Tensor
from agents.recent import critic_rows, recent_transitions

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result  # type: ignore[no-redef]

HORIZON = 10


@dataclass(frozen=True)
class Scheme:
    """One update scheme: passes over the batch, minibatches per pass, imagined segments per batch."""

    epochs: int
    minibatches: int
    segments: int

    @classmethod
    def parse(cls, text: str) -> "Scheme":
        """``"5x16x256"`` -> Scheme(5, 16, 256)."""
        try:
            epochs, minibatches, segments = (int(x) for x in text.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"scheme {text!r} must be EPOCHSxMINIBATCHESxSEGMENTS, e.g. 5x16x256") from None
        return cls(epochs, minibatches, segments)

    def __str__(self) -> str:
        return f"{self.epochs}x{self.minibatches}x{self.segments}"


def loop_gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, episode_end: Tensor,
             gamma: float, lam: float) -> Tensor:
    """``T x N`` GAE advantages by the step-by-step backward recursion (what the scan replaced)."""
    deltas = rewards + gamma * (~terminated) * next_values - values
    carry = gamma * lam * (~(terminated | episode_end))
    advantages, running = torch.empty_like(deltas), torch.zeros_like(deltas[0])
    for t in reversed(range(len(deltas))):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages


def critic_real_loop(agent: A2CAgent, real: dict[str, np.ndarray]) -> None:
    """The real-critic step with both critic passes and the loop recursion (the reference of ``critic_real``)."""
    obs, next_obs, rewards = (torch.as_tensor(real[k], dtype=torch.float32) for k in ("obs", "next_obs", "rewards"))
    terminated = torch.as_tensor(real["terminated"], dtype=torch.bool)
    end = terminated | torch.as_tensor(real["truncated"], dtype=torch.bool)
    with torch.no_grad():
        values, next_values = agent.critic(torch.cat([obs, next_obs])).chunk(2)
        returns = loop_gae(rewards, values, next_values, terminated, end, agent.config.gamma, agent.config.gae_lambda) + values
    agent._critic_step(obs, returns)


def module_at_revision(rev: str, path: str = "agents/a2c.py") -> ModuleType:
    """The module in ``path`` as it was at git revision ``rev``, imported under a name of its own."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    name = f"{Path(path).stem}_at_{rev}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def main() -> None:
    """Time every scheme's update and the real-critic step; write ``benchmarks/results/<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", type=Scheme.parse, nargs="+", default=[Scheme(5, 16, 256), Scheme(5, 4, 256), Scheme(5, 16, 128)])
    parser.add_argument("--critic-real-steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="agent_update_cost_hopper")
    parser.add_argument("--reference-rev", help="also time the first scheme with agents/a2c.py at this git revision")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    data = EpisodeDataset.open(default_dataset_path("Hopper"))
    batches = {str(s): data.sample_segments(s.segments, HORIZON, generator=generator) for s in args.schemes}
    agents = {str(s): A2CAgent(11, 3, A2CConfig.named("zoo", epochs=s.epochs, minibatches=s.minibatches)) for s in args.schemes}
    first = args.schemes[0]
    if args.reference_rev:
        old = module_at_revision(args.reference_rev)
        key = f"{first}@{args.reference_rev}"
        agents[key] = old.A2CAgent(11, 3, old.A2CConfig.named("zoo", epochs=first.epochs, minibatches=first.minibatches))
        batches[key] = batches[str(first)]
    real = critic_rows(recent_transitions(data, args.critic_real_steps))  # what the trainer's real-critic step takes
    seconds: dict[str, list[float]] = {key: [] for key in agents} | {"critic_real": [], "critic_real_loop": []}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is dropped
        for scheme, agent in agents.items():
            start = time.perf_counter()
            agent.update(batches[scheme])
            if round_:
                seconds[scheme].append(time.perf_counter() - start)
        agent = agents[str(first)]
        for name, step in (("critic_real", lambda: agent.update_critic_from_transitions(**real)), ("critic_real_loop", lambda: critic_real_loop(agent, real))):
            start = time.perf_counter()
            step()
            if round_:
                seconds[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    reference = median[str(first)]
    result = {
        "reference": str(first),
        "critic_real_steps": args.critic_real_steps,
        "valid_fraction": {key: float(alive_mask(b.terminations).float().mean()) for key, b in batches.items()},
        "median_seconds": median,
        "ratio_to_reference": {k: v / reference for k, v in median.items()},
        "critic_real_speedup_over_loop": median["critic_real_loop"] / median["critic_real"],
        **({"speedup_over_reference_rev": median[f"{first}@{args.reference_rev}"] / reference} if args.reference_rev else {}),
        "raw_seconds": seconds,
    }
    write_result(args.name, result)


if __name__ == "__main__":
    main()
