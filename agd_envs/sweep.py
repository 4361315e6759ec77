"""``agd sweep``: a grid of tasks × algorithms × seeds run as Ray tasks, each run resumable, laid out for ``agd plot``.

Ray schedules the runs (``pip install 'agd-envs[ray]'``): a local Ray on this machine by default, an existing
cluster with ``address``. Each run is one Ray task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs,
in which the ``agd train`` / ``agd baseline`` command of the run executes. Layout of ``out``:

- ``out/<task>-<algo>[-rhead]-s<seed>/``: the run directory (``agd plot out/*`` and ``agd table out/*`` read it);
- ``out/.sweep/<run>.log``: the run's output (hidden, so ``out/*`` names run directories only).

Launching the same sweep again continues it: a finished run is skipped, an ``agd train`` run with a checkpoint
resumes from it (``--resume``, with ``--steps`` so a larger ``steps`` extends it), and a run that cannot resume
(a baseline, or a run killed before its first checkpoint) starts over. On a cluster ``out`` must be on a
filesystem every node sees, and every node needs agd-envs installed.

Protocol (benchmarks/table1.py's Table I): with ``warm_start="none"`` an ``agd train`` run starts from
``prefill_steps`` uniform-random real steps and collects ``steps - prefill_steps`` more, so its log's
``real_steps`` ends at ``steps``, as a baseline's does; with a warm-start dataset ``steps`` counts online steps.
``oracle`` is the unguided learner on the real simulator, ``ppo``/``trpo`` the SB3 baselines.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agd_envs.tasks import get_task

GUIDES = ("eag", "sag", "reward", "none")
"""Algorithms that are ``agd train --guide <name>`` runs."""
BASELINES = ("ppo", "trpo")
"""Algorithms that are ``agd baseline <name>`` runs."""
ALGOS = GUIDES + ("oracle",) + BASELINES
"""Every algorithm a sweep runs; ``oracle`` is ``agd train --world-model oracle --guide none``."""
LOG_DIR = ".sweep"
"""Folder of ``out`` holding the runs' output (a dot-folder: the shell's ``out/*`` skips it)."""


@dataclass(frozen=True)
class SweepConfig:
    """One sweep: the grid, the per-run budget and protocol, and where Ray runs it."""

    tasks: tuple[str, ...]
    algos: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    """Real steps per run (with ``warm_start="none"``: the random prefill included, as the log's ``real_steps``)."""
    out: Path
    warm_start: str = "none"
    """``none`` (a random prefill of ``prefill_steps``), ``shipped`` (the task's dataset) or a dataset path."""
    prefill_steps: int = 5000
    reward_head: bool = False
    """AGD runs with the per-transition reward head (run names gain ``-rhead``)."""
    train_args: tuple[str, ...] = ()
    """More ``agd train`` flags of every new AGD run (e.g. ``--iteration-steps 200``)."""
    baseline_args: tuple[str, ...] = ()
    """More ``agd baseline`` flags of every baseline run (e.g. ``--eval-every 1000``)."""
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    address: str | None = None
    """Ray address of an existing cluster (e.g. ``auto`` or ``HEAD_IP:6379``); None: start a local Ray."""
    num_cpus: int | None = None
    """CPUs of the local Ray (None: all of this machine's); ignored with ``address``."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.algos) - set(ALGOS))
        if unknown:
            raise ValueError(f"unknown algorithm(s) {unknown}; choose from {list(ALGOS)}")
        if not (self.tasks and self.algos and self.seeds):
            raise ValueError("a sweep needs at least one task, one algorithm (--guides) and one seed")
        if self.warm_start == "none" and self.steps <= self.prefill_steps and set(self.algos) - set(BASELINES):
            raise ValueError(f"steps={self.steps} must exceed prefill_steps={self.prefill_steps} (the random prefill counts "
                             "in a run's real steps); raise --steps or lower --prefill-steps")  # fmt: skip
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
            raise ValueError(f"need cpus_per_run > 0 and gpus_per_run >= 0, got {self.cpus_per_run} and {self.gpus_per_run}")
        object.__setattr__(self, "tasks", tuple(get_task(t).name for t in self.tasks))  # raises naming the known tasks
        object.__setattr__(self, "out", Path(self.out))

    def grid(self) -> list["Job"]:
        """Every run of the sweep, task by task, then algorithm, then seed."""
        return [Job(task, algo, seed, self.reward_head and algo not in BASELINES)
                for task in self.tasks for algo in self.algos for seed in self.seeds]  # fmt: skip

    def online_steps(self) -> int:
        """``agd train --steps`` of an AGD run: ``steps`` less the random prefill that its ``real_steps`` counts."""
        return self.steps - self.prefill_steps if self.warm_start == "none" else self.steps


@dataclass(frozen=True)
class Job:
    """One run of the grid."""

    task: str
    algo: str
    seed: int
    reward_head: bool = False

    @property
    def name(self) -> str:
        """The run directory's name, e.g. ``hopper-eag-s0`` (``hopper-eag-rhead-s0`` with a reward head)."""
        return run_name(self.task, self.algo, self.seed, self.reward_head)


def run_name(task: str, algo: str, seed: int, reward_head: bool = False) -> str:
    """The run directory name of ``task``/``algo``/``seed``, e.g. ``hopper-eag-s0``."""
    return f"{task.lower()}-{algo}{'-rhead' if reward_head else ''}-s{seed}"


def is_finished(job: Job, run_dir: Path, config: SweepConfig) -> bool:
    """True when the run in ``run_dir`` has done its steps: a baseline saved its model, a training run checkpointed them."""
    if job.algo in BASELINES:
        return (run_dir / "model.zip").is_file()  # agd baseline saves it after its last step
    state = run_dir / "checkpoint" / "state.json"
    return state.is_file() and json.loads(state.read_text())["online_steps"] >= config.online_steps()


def command(job: Job, config: SweepConfig, run_dir: Path) -> list[str]:
    """The ``agd`` arguments that run, or continue, ``job`` in ``run_dir`` (start over: see ``clear_unresumable``)."""
    device = ["--device", "cuda"] if config.gpus_per_run > 0 else []
    if job.algo in BASELINES:
        return ["baseline", job.algo, "--task", job.task, "--steps", str(config.steps), "--seed", str(job.seed),
                "--out", str(run_dir), *device, *config.baseline_args]  # fmt: skip
    steps = str(config.online_steps())
    if (run_dir / "checkpoint" / "state.json").is_file():
        return ["train", "--resume", "--out", str(run_dir), "--steps", steps]
    model = ["--world-model", "oracle", "--guide", "none"] if job.algo == "oracle" else ["--guide", job.algo]
    start = ["--warm-start", config.warm_start] + (["--prefill-steps", str(config.prefill_steps)] if config.warm_start == "none" else [])
    head = ["--reward-head"] if job.reward_head else []
    return ["train", "--task", job.task, *model, "--steps", steps, "--seed", str(job.seed), *start,
            "--out", str(run_dir), *head, *device, *config.train_args]  # fmt: skip


def clear_unresumable(job: Job, run_dir: Path) -> bool:
    """Delete a run directory that cannot continue (a baseline's, a training run's without a checkpoint); True if deleted."""
    if run_dir.exists() and (job.algo in BASELINES or not (run_dir / "checkpoint" / "state.json").is_file()):
        shutil.rmtree(run_dir)
        return True
    return False


AgdMain = Callable[[list[str]], None]
"""The ``agd`` command as a function of its arguments (``agd_envs.cli.main``; passed in, as the CLI imports this module)."""


def run_one(agd: AgdMain, argv: list[str], log_path: str, threads: int) -> tuple[int, float]:
    """Run ``agd <argv>`` in this process with its output appended to ``log_path``; (exit code, minutes)."""
    import torch

    torch.set_num_threads(max(1, threads))
    start = time.time()
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ agd {' '.join(argv)}", flush=True)
        try:
            agd(argv)
            code = 0
        except SystemExit as exit_:  # agd's errors exit 2 after printing what was wrong
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # a crash of the run: its traceback goes to the run's log, the sweep goes on
            traceback.print_exc()
            code = 1
    return code, (time.time() - start) / 60


def run_sweep(
    config: SweepConfig, agd: AgdMain, jobs: list[Job] | None = None,
    report: Callable[[Job, str], Any] = lambda job, status: None,
) -> dict[str, str]:
    """Run ``jobs`` (default: the whole grid) on Ray with ``agd`` (``agd_envs.cli.main``), skipping finished runs;
    {run name: status}, each ``report``-ed as it ends."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("agd sweep runs on Ray: pip install 'agd-envs[ray]'") from err
    logs = config.out / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    pending: dict[Any, Job] = {}
    todo = []
    for job in config.grid() if jobs is None else jobs:
        if is_finished(job, config.out / job.name, config):
            status[job.name] = "already finished"
            report(job, status[job.name])
        else:
            todo.append(job)
    if not todo:
        return status
    local = {} if config.address else {"num_cpus": config.num_cpus}
    ray.init(address=config.address, include_dashboard=False, **local)
    try:
        remote = ray.remote(num_cpus=config.cpus_per_run, num_gpus=config.gpus_per_run, max_retries=0)(run_one)
        for job in todo:
            run_dir = config.out / job.name
            clear_unresumable(job, run_dir)
            argv = command(job, config, run_dir)
            pending[remote.remote(agd, argv, str(logs / f"{job.name}.log"), int(config.cpus_per_run))] = job
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                code, minutes = ray.get(ref)
                ok = code == 0 and is_finished(job, config.out / job.name, config)
                status[job.name] = f"done in {minutes:.1f} min" if ok else f"FAILED (exit {code}) after {minutes:.1f} min"
            except ray.exceptions.RayError as err:  # the worker died (out of memory, node lost)
                status[job.name] = f"FAILED ({type(err).__name__})"
            if not status[job.name].startswith("done"):
                status[job.name] += f"; see {logs / (job.name + '.log')}"
            report(job, status[job.name])
    finally:
        ray.shutdown()
    return status
