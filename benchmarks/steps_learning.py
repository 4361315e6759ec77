"""Does learning suffer with fewer reverse-diffusion steps? The learning test's run with K sampling steps.

Runs the configuration of ``tests/test_learning.py`` (Reacher, EAG, CPU defaults, 3000 real steps,
50 evaluation episodes before and after) once per ``--sampling-steps`` value and seed, and reports
the real-return gain, its standard error and the wall clock spent imagining.

Run (repo root): python3 benchmarks/steps_learning.py --sampling-steps 4 32 --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
from pathlib import Path

import torch

from agents.trainer import AGDTrainer, TrainerConfig

try:
    from benchmarks._common import write_result
except ImportError:  # run as a script from the repo root
    from _common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for k, seed in itertools.product(args.sampling_steps, args.seeds):
        config = TrainerConfig.for_task("Reacher", guide="eag", steps=args.steps, seed=seed, eval_episodes=50,
                                        eval_every=args.steps, checkpoint_every=args.steps, sampling_steps=k)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            log = AGDTrainer(config, Path(tmp) / "run", progress=False).train()
        first, last = log[0], log[-1]
        gain = float(last["eval_return_mean"]) - float(first["eval_return_mean"])
        stderr = math.hypot(float(first["eval_return_stderr"]), float(last["eval_return_stderr"]))
        rows.append({"sampling_steps": k, "seed": seed, "before": float(first["eval_return_mean"]),
                     "after": float(last["eval_return_mean"]), "gain": gain, "gain_stderr": stderr,
                     "wall_seconds": float(last["wall_seconds"]), "seconds_imagine": float(last["seconds_imagine"])})  # fmt: skip
        print(f"K={k:>3} seed {seed}: gain {gain:.2f} +- {stderr:.2f}, imagination {rows[-1]['seconds_imagine']:.0f} s "
              f"of {rows[-1]['wall_seconds']:.0f} s")  # fmt: skip
    name = "steps_learning_reacher_" + "_".join(map(str, args.sampling_steps)) + "_seeds_" + "_".join(map(str, args.seeds))
    write_result(name, {"task": "Reacher", "guide": "eag", "steps": args.steps, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
