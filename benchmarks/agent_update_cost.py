"""What one agent update costs on CPU, by update scheme: epochs x minibatches x imagined segments.

The bundled agent (``agents/a2c.py``, its real [Linear, LayerNorm, ELU] networks) takes one ``update`` per imagined
batch of H = 10 step segments, and with ``critic_real_steps`` one ``update_critic_from_transitions`` on that many real
transitions. This times both on real Hopper-v5 transitions (a uniform-random policy, laid out as segments), each
setting interleaved with the others round by round so that load from other processes hits all of them alike, and
reports the median seconds per call (rows after a termination inside a segment are
not learned from, as in imagination: ``valid_fraction``) and the ratio to the reference setting (the first ``--schemes`` entry).

Run (repo root):
    OMP_NUM_THREADS=1 python3 benchmarks/agent_update_cost.py --schemes 5x16x256 5x8x256 5x4x256 2x16x256 5x16x128 --name agent_update_cost_hopper
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from einops import rearrange

from agents.a2c import A2CAgent, A2CConfig
from agents.returns import alive_mask

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


@dataclass(frozen=True)
class RealSegments:
    """Real transitions cut into H-step segments, in the shape ``A2CAgent.update`` takes."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminations: torch.Tensor
    advantages: None = None


def random_transitions(steps: int, seed: int) -> dict[str, np.ndarray]:
    """``steps`` Hopper-v5 transitions of a uniform-random policy (reset on every episode end)."""
    env = gym.make("Hopper-v5")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")}
    for _ in range(steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, next_obs, terminated, truncated)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return {k: np.asarray(v, dtype=np.float32 if k not in ("terminated", "truncated") else bool) for k, v in rows.items()}


def segments_of(data: dict[str, np.ndarray], count: int) -> RealSegments:
    """The first ``count`` H-step windows of the transitions (episode ends inside a window count as terminations)."""
    n = count * HORIZON
    if len(data["obs"]) < n:
        raise ValueError(f"need {n} transitions for {count} segments, have {len(data['obs'])}; raise --steps")
    obs = rearrange(torch.from_numpy(data["obs"][:n]), "(b h) s -> b h s", h=HORIZON)
    last = rearrange(torch.from_numpy(data["next_obs"][:n]), "(b h) s -> b h s", h=HORIZON)[:, -1:]
    return RealSegments(
        states=torch.cat([obs, last], dim=1),
        actions=rearrange(torch.from_numpy(data["actions"][:n]), "(b h) a -> b h a", h=HORIZON),
        rewards=rearrange(torch.from_numpy(data["rewards"][:n]), "(b h) -> b h", h=HORIZON),
        terminations=rearrange(torch.from_numpy(data["terminated"][:n] | data["truncated"][:n]), "(b h) -> b h", h=HORIZON),
    )


def main() -> None:
    """Time every scheme's update and the real-critic step; write ``benchmarks/results/<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", type=Scheme.parse, nargs="+", default=[Scheme(5, 16, 256), Scheme(5, 4, 256), Scheme(5, 16, 128)])
    parser.add_argument("--critic-real-steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="agent_update_cost_hopper")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    need = max(max(s.segments for s in args.schemes) * HORIZON, args.critic_real_steps)
    data = random_transitions(need, args.seed)
    batches = {s: segments_of(data, s.segments) for s in args.schemes}
    agents = {s: A2CAgent(11, 3, A2CConfig.named("zoo", epochs=s.epochs, minibatches=s.minibatches)) for s in args.schemes}
    real = {k: data[k][: args.critic_real_steps, None] for k in ("obs", "rewards", "next_obs", "terminated", "truncated")}
    seconds: dict[str, list[float]] = {str(s): [] for s in args.schemes} | {"critic_real": []}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is dropped
        for scheme, agent in agents.items():
            start = time.perf_counter()
            agent.update(batches[scheme])
            if round_:
                seconds[str(scheme)].append(time.perf_counter() - start)
        agent = agents[args.schemes[0]]
        start = time.perf_counter()
        agent.update_critic_from_transitions(**real)
        if round_:
            seconds["critic_real"].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    reference = median[str(args.schemes[0])]
    result = {
        "reference": str(args.schemes[0]),
        "critic_real_steps": args.critic_real_steps,
        "valid_fraction": {str(s): float(alive_mask(b.terminations).float().mean()) for s, b in batches.items()},
        "median_seconds": median,
        "ratio_to_reference": {k: v / reference for k, v in median.items()},
        "raw_seconds": seconds,
    }
    write_result(args.name, result)


if __name__ == "__main__":
    main()
