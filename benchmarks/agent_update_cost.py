"""What one agent update costs on CPU, by update scheme: epochs x minibatches x imagined segments.

The bundled agent (``agents/a2c.py``, its real [Linear, LayerNorm, ELU] networks) takes one ``update`` per imagined
batch of H = 10 step segments, and with ``critic_real_steps`` one ``update_critic_from_transitions`` on that many real
transitions. This times both on real Hopper-v5 transitions (the shipped ``datasets/hopper-mixed``, sampled as the trainer does), each
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

import torch

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agents.a2c import A2CAgent, A2CConfig
from agents.returns import alive_mask
from agents.trainer import recent_transitions

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


def main() -> None:
    """Time every scheme's update and the real-critic step; write ``benchmarks/results/<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", type=Scheme.parse, nargs="+", default=[Scheme(5, 16, 256), Scheme(5, 4, 256), Scheme(5, 16, 128)])
    parser.add_argument("--critic-real-steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="agent_update_cost_hopper")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    data = EpisodeDataset.open(default_dataset_path("Hopper"))
    batches = {s: data.sample_segments(s.segments, HORIZON, generator=generator) for s in args.schemes}
    agents = {s: A2CAgent(11, 3, A2CConfig.named("zoo", epochs=s.epochs, minibatches=s.minibatches)) for s in args.schemes}
    real = recent_transitions(data, args.critic_real_steps)  # what the trainer's real-critic step takes
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
