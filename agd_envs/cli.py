"""The ``agd`` command line: collect real data, fit world models, train and evaluate runs, plot, tabulate, baselines."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from agd_envs.sweep import ALGOS as SWEEP_ALGOS
from agd_envs.tasks import TASKS, get_task


def _collect(args: argparse.Namespace) -> None:
    from agd_envs.collector import RealEnvCollector
    from agd_envs.datasets import DatasetWriter

    writer = DatasetWriter(
        Path(args.out),
        args.task,
        policy=args.policy,
        description=f"agd collect --task {args.task} --steps {args.steps} --policy {args.policy} "
        f"--num-envs {args.num_envs} --seed {args.seed}",
    )
    with RealEnvCollector(args.task, writer, num_envs=args.num_envs, seed=args.seed) as collector:
        # "mixed": the first half uniform random, the second half perturbed sinusoids.
        plan = [("random", args.steps // 2), ("sine", args.steps - args.steps // 2)] if args.policy == "mixed" else [(args.policy, args.steps)]
        for policy, steps in plan:
            collector.collect(policy, steps)
    print(f"wrote {writer.num_episodes} episodes, {writer.num_steps} steps to {args.out}")


def _repair(args: argparse.Namespace) -> None:
    from agd_envs import _journal as J
    from agd_envs.datasets import repair, resolve_data_dir

    data_dir = resolve_data_dir(args.path)
    visible = J.read_metadata(data_dir)["total_episodes"]  # what Minari saw before
    total = repair(data_dir)
    print(f"{data_dir.parent}: {total} episodes in {J.MAIN_FILE} ({total - visible} committed from the journal, "
          f"Minari saw {visible}); it can be copied or shared now")


def _fit(args: argparse.Namespace) -> None:
    from agd_envs.distributed import distributed_from_env
    from agd_envs.training import fit_main
    from agd_envs.world_model import WorldModelConfig

    overrides = dict(parse_field_value(item, WorldModelConfig) for item in args.model_set or [])
    with distributed_from_env(args.device) as ranks:  # one process, or the ranks torchrun started
        out = fit_main(
            task=args.task, dataset=args.dataset, preset=args.preset, steps=args.steps, out=args.out, seed=args.seed,
            device=args.device, reward_head=args.reward_head, model_overrides=overrides, distributed=ranks,
        )  # fmt: skip
        if ranks.is_main:
            print(f"saved world model to {out}")


def _train(args: argparse.Namespace) -> None:
    from agd_envs.distributed import distributed_from_env
    from agents.trainer import AGDTrainer, TrainerConfig, config_from_run

    if args.resume:
        config = _resumed_config(config_from_run(args.out), args)
    else:
        if not args.task:
            raise ValueError("--task is required for a new run")
        overrides = _flag_overrides(args)
        guide = args.guide or ("none" if args.world_model == "oracle" else "eag")
        steps, seed = (DEFAULT_STEPS if args.steps is None else args.steps), (0 if args.seed is None else args.seed)
        config = TrainerConfig.for_task(args.task, guide=guide, steps=steps, seed=seed, **overrides)
    with distributed_from_env(config.device) as ranks:  # one process, or the ranks torchrun started
        rows = AGDTrainer(config, args.out, resume=args.resume, distributed=ranks).train()
        if not ranks.is_main:
            return  # rank 0 logs and reports
    first, last = rows[0], rows[-1]
    print(
        f"{config.task} {config.guide} seed {config.seed}: eval return {float(first['eval_return_mean']):.1f} -> "
        f"{float(last['eval_return_mean']):.1f} over {last['real_steps']} real steps in {float(last['wall_seconds']):.0f} s"
    )
    if args.plot:
        from agents.plotting import plot, read_runs

        print(f"learning curve: {plot(read_runs([args.out]), Path(args.out) / 'learning_curve.png')}")


DEFAULT_STEPS = 100_000
"""``agd train --steps`` of a new run when none is given."""
LABEL_HELP = "rename algos matching a shell pattern, e.g. 'agd-eag*=agd-eag' (repeatable; merges runs logged under different labels)"
"""``--label`` help of ``agd plot`` and ``agd table``."""
METRIC_HELP = ("the progress.csv column to show instead of the evaluation return, e.g. entropy (the policy's, per "
               "state) or rollout_return_mean (the stochastic policy's returns while collecting)")
"""``--metric`` help of ``agd plot`` and ``agd table``."""


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainerConfig fields the given ``agd train`` flags set (flags left out set nothing)."""
    overrides = {k: v for k, v in vars(args).items() if k in _TRAIN_OVERRIDES and v is not None}
    overrides |= _set_overrides(args)
    if overrides.get("warm_start") == "none":
        overrides["warm_start"] = None  # TrainerConfig: prefill with random steps
    from agd_envs.world_model import WorldModelConfig

    model = dict(parse_field_value(item, WorldModelConfig) for item in args.model_set or [])
    if args.reward_head:
        model["reward_head"] = True
    if model:
        overrides["model"] = model
    from agents.a2c import A2CConfig

    agent = dict(parse_field_value(item, A2CConfig) for item in args.agent_set or [])
    if agent:
        overrides["a2c"] = agent
    return overrides


def _set_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainerConfig fields ``agd train --set FIELD=VALUE ...`` sets (its dict fields have their own flags)."""
    from agents.trainer import TrainerConfig

    fields = dict(parse_field_value(item, TrainerConfig) for item in args.set or [])
    clash = sorted(set(fields) & set(_DICT_FLAGS))
    if clash:
        raise ValueError(f"--set {clash[0]}=...: set {clash[0]} entries with {_DICT_FLAGS[clash[0]]} instead")
    return fields


_DICT_FLAGS = {"model": "--model-set/--reward-head", "a2c": "--agent-set"}
"""Flags that set entries of a TrainerConfig dict field rather than a field."""


def parse_field_value(item: str, config: type) -> tuple[str, Any]:
    """``FIELD=VALUE`` for a field of the dataclass ``config`` (VALUE read as JSON when it parses, e.g.
    ``true``, ``512``, else as a string); an unknown field raises naming the known ones."""
    known = {f.name for f in dataclasses.fields(config)} - {"task"}
    field, sep, value = item.partition("=")
    if not sep or field not in known:
        raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD a {config.__name__} field, one of {sorted(known)}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def _resumed_config(config: "TrainerConfig", args: argparse.Namespace) -> "TrainerConfig":
    """The saved config of a run to resume; ``--steps`` may extend it, any other flag must match what was saved."""
    given = {k: getattr(args, k) for k in ("task", "guide", "seed") if getattr(args, k) is not None} | _flag_overrides(args)
    set_fields = _set_overrides(args)
    for key, value in given.items():
        saved = getattr(config, key)
        if key in _DICT_FLAGS:
            shown = " ".join((args.agent_set if key == "a2c" else args.model_set) or [])
            differs, flag = any(saved.get(k) != v for k, v in value.items()), _DICT_FLAGS[key]
        elif key in set_fields:
            differs, flag, shown = saved != value, "--set", f"{key}={value}"
        else:
            differs, flag, shown = saved != value, "--" + key.replace("_", "-"), value
        if differs:
            raise ValueError(
                f"{f'{flag} {shown}'.rstrip()} differs from the run's saved {key} = {saved!r}; --resume continues a run with its "
                f"own config (only --steps may grow, to extend it): drop {flag}, or start a new run in another --out"
            )
    if args.steps is not None:
        config.steps = args.steps
    return config


_TRAIN_OVERRIDES = ("imagination", "alpha", "warm_start", "iteration_steps", "eval_every", "eval_episodes",
                    "checkpoint_every", "device", "num_envs", "model_preset", "sampling_steps", "world_model",
                    "prefill_steps", "start_window", "agent")  # fmt: skip


def _eval(args: argparse.Namespace) -> None:
    from agents.evaluation import evaluate
    from agents.trainer import agent_from_run

    config, agent = agent_from_run(args.run)
    task = get_task(config.task)
    result = evaluate(task, lambda obs: agent.act(obs, deterministic=True), args.episodes, seed=args.seed, video=args.video)
    print(f"{task.name}: return {result.mean:.1f} ± {result.stderr:.1f} (std {result.std:.1f}, {args.episodes} episodes)")


def _read_labelled(args: argparse.Namespace) -> list:
    """The runs given, algos renamed by ``--label``."""
    from agents.plotting import read_runs, relabel

    return relabel(read_runs(args.runs, args.metric), args.label or [])


def _plot(args: argparse.Namespace) -> None:
    from agents.plotting import plot

    print(f"wrote {plot(_read_labelled(args), args.out)}")


def _table(args: argparse.Namespace) -> None:
    from agents.plotting import paired, reach_table, table

    curves = _read_labelled(args)
    if args.reach is not None:
        print(reach_table(curves, args.reach))
    elif args.paired:
        print(paired(curves, *args.paired, last=args.last))
    else:
        print(table(curves, last=args.last))


def _baseline(args: argparse.Namespace) -> None:
    from agents.baselines import run_baseline

    rows = run_baseline(args.algo, args.task, args.steps, args.seed, args.out, eval_every=args.eval_every, device=args.device)
    print(f"{args.algo} {args.task} seed {args.seed}: eval return {float(rows[0]['eval_return_mean']):.1f} -> {float(rows[-1]['eval_return_mean']):.1f}")


def _sweep(args: argparse.Namespace) -> None:
    import shlex
    import signal

    from agd_envs.sweep import SweepConfig, run_sweep

    config = SweepConfig(
        tasks=tuple(args.tasks), algos=tuple(args.guides), seeds=tuple(args.seeds), steps=args.steps, out=Path(args.out),
        warm_start=args.warm_start, prefill_steps=args.prefill_steps, reward_head=args.reward_head,
        train_args=tuple(shlex.split(args.train_args)), baseline_args=tuple(shlex.split(args.baseline_args)),
        cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, address=args.address, num_cpus=args.num_cpus,
    )  # fmt: skip

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # as Ctrl-C: Ray shuts down (its runs stop) before the process ends

    signal.signal(signal.SIGTERM, interrupt)
    status = run_sweep(config, main, report=lambda job, line: print(f"{job.name}: {line}", flush=True))
    failed = sorted(name for name, line in status.items() if line.startswith("FAILED"))
    print(f"{len(status) - len(failed)} of {len(status)} runs finished in {config.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agd`` (one sub-command per stage)."""
    parser = argparse.ArgumentParser(prog="agd", description="Advantage-guided diffusion world models as Gymnasium envs.")
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = sorted(TASKS)

    collect = sub.add_parser("collect", help="collect real MuJoCo transitions into a Minari-layout HDF5 dataset")
    collect.add_argument("--task", required=True, choices=tasks)
    collect.add_argument("--steps", type=int, required=True, help="real environment steps in total")
    collect.add_argument("--policy", default="random", choices=["random", "sine", "mixed"])
    collect.add_argument("--out", required=True, help="dataset directory (created, or appended to)")
    collect.add_argument("--num-envs", type=int, default=1)
    collect.add_argument("--seed", type=int, default=0)
    collect.set_defaults(func=_collect)

    repair = sub.add_parser("repair", help="after a crash: commit a dataset's journal so Minari sees every episode")
    repair.add_argument("path", help="dataset directory (the one holding data/)")
    repair.set_defaults(func=_repair)

    fit = sub.add_parser("fit", help="fit a diffusion world model on a dataset and save a checkpoint")
    fit.add_argument("--task", required=True, choices=tasks)
    fit.add_argument("--dataset", required=True)
    fit.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    fit.add_argument("--steps", type=int, default=5000, help="gradient steps")
    fit.add_argument("--out", required=True)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="cpu")
    fit.add_argument("--reward-head", dest="reward_head", action="store_true",
                     help="add the per-transition reward head (WorldModelConfig.reward_head)")  # fmt: skip
    fit.add_argument("--model-set", dest="model_set", nargs="+", metavar="FIELD=VALUE",
                     help="world-model config overrides on the preset, e.g. width=256 batch_size=512")
    fit.set_defaults(func=_fit)

    train = sub.add_parser("train", help="AGD-MBRL training (paper Algorithm 1) on a real task")
    train.add_argument("--task", choices=tasks, help="required unless --resume")
    train.add_argument("--guide", choices=["eag", "sag", "reward", "none"], help="default: eag (none with --world-model oracle)")
    train.add_argument("--steps", type=int, help="online real steps (default 100000); with --resume: a larger value extends the run")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--out", required=True, help="run directory (config, dataset, logs, checkpoints)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--imagination", choices=["joint", "closed-loop"])
    train.add_argument("--alpha", type=float, help="guide scale (default: the task's)")
    train.add_argument("--warm-start", dest="warm_start",
                       help="dataset to start from (default: the shipped one); 'none': --prefill-steps uniform-random steps instead")
    train.add_argument("--agent", choices=["paper", "ppo", "zoo"],
                       help="agent update scheme (agents/a2c.py A2C_PRESETS; default: the task's, zoo on Hopper, paper elsewhere): paper = the paper's A2C, one step per batch, ppo = 4 clipped epochs x 4 minibatches, zoo = RL Zoo's Hopper PPO (5 x 16, gamma 0.999, no target critic)")
    train.add_argument("--agent-set", dest="agent_set", nargs="+", metavar="FIELD=VALUE",
                       help="A2CConfig overrides on --agent's scheme, e.g. gamma=0.999 target_ema=null")
    train.add_argument("--start-window", dest="start_window", type=int,
                       help="imagine from states of the last N real transitions (default: the whole dataset)")
    train.add_argument("--prefill-steps", dest="prefill_steps", type=int, help="random real steps with --warm-start none (default 5000)")
    train.add_argument("--iteration-steps", dest="iteration_steps", type=int)
    train.add_argument("--eval-every", dest="eval_every", type=int)
    train.add_argument("--eval-episodes", dest="eval_episodes", type=int)
    train.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    train.add_argument("--sampling-steps", dest="sampling_steps", type=int)
    train.add_argument("--num-envs", dest="num_envs", type=int)
    train.add_argument("--model-preset", dest="model_preset", choices=["cpu", "paper"])
    train.add_argument("--world-model", dest="world_model", choices=["diffusion", "oracle"],
                       help="diffusion (default) or oracle: imagine with the real simulator (guide none, joint imagination)")  # fmt: skip
    train.add_argument("--device")
    train.add_argument("--reward-head", dest="reward_head", action="store_true",
                       help="predict rewards with a per-transition head on (s, a, s') instead of the denoised entries")  # fmt: skip
    train.add_argument("--model-set", dest="model_set", nargs="+", metavar="FIELD=VALUE",
                       help="world-model config overrides on the preset, e.g. dynamics_prior=false anchor_states=true")
    train.add_argument("--set", nargs="+", metavar="FIELD=VALUE",
                       help="TrainerConfig fields without a flag of their own, e.g. model_pretrain_updates=500 imagination_batch=512")
    train.add_argument("--plot", action="store_true", help="write learning_curve.png into the run directory")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("eval", help="real-env return of a run's latest checkpoint")
    evaluate.add_argument("run")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--seed", type=int, default=20_000)
    evaluate.add_argument("--video", help="write an MP4 of the first episode (needs MuJoCo rendering)")
    evaluate.set_defaults(func=_eval)

    plot = sub.add_parser("plot", help="learning curves (mean ± standard error over seeds), one panel per task")
    plot.add_argument("runs", nargs="+")
    plot.add_argument("--out", default="learning_curves.png")
    plot.add_argument("--label", action="append", metavar="PATTERN=NAME", help=LABEL_HELP)
    plot.add_argument("--metric", default="eval_return_mean", metavar="COLUMN", help=METRIC_HELP)
    plot.set_defaults(func=_plot)

    table = sub.add_parser("table", help="final returns as a Markdown table (paper Table I layout)")
    table.add_argument("runs", nargs="+")
    table.add_argument("--last", type=int, default=1, metavar="K",
                       help="score each run by the mean of its last K evaluations (default 1: the final one)")
    table.add_argument("--label", action="append", metavar="PATTERN=NAME", help=LABEL_HELP)
    table.add_argument("--metric", default="eval_return_mean", metavar="COLUMN", help=METRIC_HELP)
    mode = table.add_mutually_exclusive_group()
    mode.add_argument("--paired", nargs=2, metavar=("ALGO_A", "ALGO_B"),
                      help="instead: ALGO_A minus ALGO_B seed by seed (mean ± s.e., t, exact sign-flip p), e.g. agd-eag agd-none")
    mode.add_argument("--reach", type=float, metavar="RETURN",
                      help="instead: real steps until each run first evaluates at RETURN or more (median over seeds), "
                           "e.g. PPO's 100k return")
    table.set_defaults(func=_table)

    baseline = sub.add_parser("baseline", help="model-free baseline (SB3 PPO / sb3-contrib TRPO, RL Zoo hyperparameters)")
    baseline.add_argument("algo", choices=["ppo", "trpo"])
    baseline.add_argument("--task", required=True, choices=tasks)
    baseline.add_argument("--steps", type=int, default=100_000)
    baseline.add_argument("--seed", type=int, default=0)
    baseline.add_argument("--out", required=True)
    baseline.add_argument("--eval-every", dest="eval_every", type=int, default=5000)
    baseline.add_argument("--device", default="cpu")
    baseline.set_defaults(func=_baseline)

    sweep = sub.add_parser("sweep", help="a grid of tasks x algorithms x seeds as Ray tasks (pip install 'agd-envs[ray]'); relaunch to continue")
    sweep.add_argument("--tasks", nargs="+", required=True, choices=tasks)
    sweep.add_argument("--guides", "--algos", dest="guides", nargs="+", required=True,
                       choices=SWEEP_ALGOS,
                       help="agd train guides, oracle (the real simulator as the model) and the ppo/trpo baselines")  # fmt: skip
    sweep.add_argument("--seeds", type=int, nargs="+", required=True)
    sweep.add_argument("--steps", type=int, required=True,
                       help="real steps per run, as logged in real_steps (with --warm-start none the prefill included)")
    sweep.add_argument("--out", required=True, help="sweep directory: one run directory per run (agd plot OUT/*)")
    sweep.add_argument("--address", help="Ray cluster to run on (e.g. auto, or HEAD_IP:6379 from a cluster node); default: a local Ray")
    sweep.add_argument("--num-cpus", dest="num_cpus", type=int, help="CPUs of the local Ray (default: all)")
    sweep.add_argument("--cpus-per-run", dest="cpus_per_run", type=float, default=1.0)
    sweep.add_argument("--gpus-per-run", dest="gpus_per_run", type=float, default=0.0, help="> 0: runs get --device cuda")
    sweep.add_argument("--warm-start", dest="warm_start", default="none",
                       help="none (default: --prefill-steps random steps, the Table I protocol), shipped, or a dataset path")
    sweep.add_argument("--prefill-steps", dest="prefill_steps", type=int, default=5000)
    sweep.add_argument("--reward-head", dest="reward_head", action="store_true", help="AGD runs with the reward head (<run>-rhead-s<seed>)")
    sweep.add_argument("--train-args", dest="train_args", default="", help="more agd train flags for new runs, one string")
    sweep.add_argument("--baseline-args", dest="baseline_args", default="", help="more agd baseline flags, one string")
    sweep.set_defaults(func=_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``agd`` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"agd {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
