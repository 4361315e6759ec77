"""AGDTrainer: the paper's Algorithm 1 — real data -> world model -> guided imagination -> A2C.

One iteration (``iteration_steps`` real steps):

1. collect real transitions with the current (stochastic) policy into the run's HDF5 dataset;
2. fit the world model on all data so far (``model_updates_per_step`` updates per real step);
3. imagine segments with the guide (``joint``: the paper's Algorithm 2, whole H-step segments with
   policy-guided actions; ``closed-loop``: the agent acts step by step in the DreamVectorEnv) and
   take ``agent_updates_per_step`` A2C updates per real step;
4. evaluate on the real env every ``eval_every`` steps (mean action) and log a CSV row;
5. checkpoint every ``checkpoint_every`` steps (resumable bit-identically on CPU).

PolyGRAD (guide ``none``) and Online Diffuser (guide ``reward``) are this same loop with another guide.
With ``world_model="oracle"`` the segments come from the real simulator (agd_envs.oracle): no model
is fitted (step 2 and the pretraining are skipped) and only guide ``none`` applies.

Under torchrun (``distributed`` spanning N processes, agd_envs.distributed): rank 0 alone collects real steps,
evaluates, logs and checkpoints, so the run's real data and its ``real_steps`` are those of a 1-process run;
every rank fits the world model on its share of each global batch and imagines its share of
``imagination_batch`` segments, with gradients averaged across ranks and the agent's weights and running
statistics taken from rank 0 after each update. The run directory must be on a filesystem every rank sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from agd_envs.batch import SegmentBatch
from agd_envs.collector import RealEnvCollector
from agd_envs.datasets import DatasetWriter, EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.distributed import Distributed
from agd_envs.guides import get_guide
from agd_envs.oracle import OracleConfig, OracleWorldModel
from agd_envs.sampling import default_guide_scale, imagine
from agd_envs.tasks import Task, get_task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig
from agents.a2c import A2C_PRESETS, A2CAgent, A2CConfig
from agents.checkpoint import RunCheckpoint
from agents.evaluation import Evaluation, evaluate
from agents.recent import RecentMix, critic_rows, recent_rows, recent_transitions
from agents.run_log import PHASES, RunLog

IMAGINATION_MODES = ("joint", "closed-loop")
WORLD_MODELS = ("diffusion", "oracle")
GUIDE_TARGETS = ("states", "actions")
IMAGINATION_DTYPES = ("float32", "bfloat16")


@dataclass
class TrainerConfig:
    """Everything that defines an AGD-MBRL run (written to ``<run>/config.json``)."""

    task: str = "Hopper"
    """Task short name."""
    guide: str = "eag"
    """``eag`` | ``sag`` | ``reward`` (Online Diffuser) | ``none`` (PolyGRAD)."""
    steps: int = 100_000
    """Online real environment steps to train for (after the warm start / prefill). The log's ``real_steps``
    column counts the warm-start or prefill transitions too, so ``steps`` = 95k with a 5k prefill logs
    100k real steps at the end (the Table I protocol, benchmarks/table1.py)."""
    seed: int = 0
    """Seeds torch, the real envs and imagination."""
    imagination: str = "joint"
    """``joint`` (paper Algorithm 2) or ``closed-loop`` (the agent steps the DreamVectorEnv)."""
    alpha: float | None = None
    """Guide scale (None: the task's default, ``Task.guide_scale``)."""
    guide_on: str = "states"
    """What the guide moves in joint imagination: ``states`` (the paper's) or ``actions`` (the policy's sampling noise
    is tilted by the guide, the states stay the model's: ``agd_envs.sampling._tilt_actions``)."""
    warm_start: str | None = "shipped"
    """Dataset to start from: ``shipped`` (the task's dataset in ``datasets/``), a path, or None
    (then ``prefill_steps`` uniform-random real steps, as the reference's prefill)."""
    prefill_steps: int = 5000
    """Random real steps when ``warm_start`` is None (not counted in ``steps``)."""
    num_envs: int = 1
    """Real sub-environments stepped together."""
    iteration_steps: int = 1000
    """Real steps per iteration (between model/agent phases)."""
    model_preset: str = "cpu"
    """World-model preset (``cpu`` or ``paper``)."""
    model_pretrain_updates: int = 2000
    """World-model updates on the warm-start/prefill data before the first iteration."""
    model_updates_per_step: float = 0.25
    """World-model updates per real step (reference: 1.0; CPU default lower, see README)."""
    agent_updates_per_step: float = 0.05
    """A2C updates per real step (reference: 0.25)."""
    imagination_batch: int = 256
    """Segments (joint) or dream envs (closed-loop) per A2C update (reference: 512)."""
    sampling_steps: int | None = None
    """Reverse diffusion steps (None: the model's default)."""
    eval_every: int = 5000
    """Real steps between evaluations."""
    eval_episodes: int = 10
    """Real episodes per evaluation (mean action)."""
    checkpoint_every: int = 5000
    """Real steps between checkpoints (a multiple of ``iteration_steps``)."""
    device: str = "cpu"
    """Torch device of the world model and the agent."""
    start_window: int | None = None
    """Imagination starts from states of the most recent ``start_window`` real transitions (whole episodes,
    newest first; at least the last one); None: from the whole dataset (the paper's). Recent states are
    where the current policy goes; the warm start's random-play states are where it no longer does."""
    agent: str = "paper"
    """The agent's update scheme, a name in ``agents.a2c.A2C_PRESETS`` (``paper``: the paper's A2C; ``zoo``: RL Zoo's
    Hopper PPO); ``a2c`` overrides its fields."""
    a2c: dict[str, Any] = field(default_factory=dict)
    """Overrides of the ``agent`` scheme's A2CConfig fields."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the world-model preset's WorldModelConfig fields (e.g. ``{"width": 256}``)."""
    critic_real_segments: int = 0
    """Real H-step segments of the dataset (from the same start window) on which the critic takes one more
    regression step after each agent update (``A2CAgent.update_critic``): λ-returns of real rewards and
    terminations, so the critic also learns what the real env pays where the model is wrong; 0: imagined only
    (the paper's)."""
    critic_real_steps: int = 0
    """After each agent update the critic also takes one regression step on λ-returns along the newest
    ``critic_real_steps`` real transitions (whole episodes laid end to end, ``A2CAgent.update_critic_from_transitions``):
    returns that run to each episode's real end instead of bootstrapping from the critic after H steps, so a
    long-horizon value (Hopper's alive bonus under γ = 0.999) reaches the critic in a few updates; 0: off."""
    lr_final_fraction: float = 1.0
    """The agent's learning rates fall linearly with the online steps, from their configured values at the start
    to this fraction of them at ``steps`` (1.0: constant, the paper's; 0.0: annealed to zero, as CleanRL's PPO).
    The schedule follows ``online_steps / steps``, so a resumed run keeps it and an extended one (a larger
    ``steps``) stretches it."""
    alpha_final_fraction: float = 1.0
    """The guide scale falls linearly with the online steps, from ``alpha`` (or the task's) at the start to this
    fraction of it at ``steps`` (or at ``alpha_anneal_steps``), on the lr schedule's clock (1.0: constant, the paper's;
    0.0: the dream ends unguided)."""
    alpha_anneal_steps: int | None = None
    """Online steps over which the guide scale falls to ``alpha_final_fraction`` of it, then stays there (None: ``steps``,
    the whole run); e.g. 45000 with a 5000-step prefill guides the dream for the first 50k real steps only."""
    imagination_dtype: str = "float32"
    """``float32``, or ``bfloat16``: joint imagination runs under ``torch.autocast`` (matmuls in bf16, the segments returned
    in float32). On one thread of a CPU with AVX512-BF16, Hopper EAG imagines 1.6x the transitions/s (~1.2x in a 2-thread run) at 0.015 z step-H deviation from
    float32 (benchmarks/imagination_cost.py --dtypes); on CPUs without native bf16 it is slower. Model and agent updates
    stay float32 (a bf16 world-model loss came out 10x higher)."""
    termination_margin: float = 0.0
    """Imagined segments (joint imagination) also end where a state comes within this fraction of a health bound
    (``Task.terminated``'s margin; Hopper at 0.15: |angle| >= 0.17 or height <= 0.805), so a dreamed near-fall is
    priced as a fall; 0: the real env's rule. Negative (down to -1): the segments end only where the loosened rule
    says (Hopper at -1: |angle| >= 0.4), so the learner sees few falls even on the oracle, a diagnostic of what falls
    are worth to it. Only tasks that terminate (Hopper, Walker2d) are affected."""
    update_horizon: int | None = None
    """The agent updates on the first ``update_horizon`` steps of each imagined segment (joint imagination), bootstrapping
    from the critic there; None: all H. On Hopper at 100k the dream's first-action advantage tracks the simulator's
    over 1-5 steps and loses it over 10 (docs/results.md, "The advantage the learner estimates")."""
    actor_real_steps: int = 0
    """After every ``actor_real_every`` imagined updates the agent also takes one update of its scheme (actor and critic)
    on the newest ``actor_real_steps`` real transitions (whole episodes laid end to end, ``A2CAgent.update_from_transitions``):
    GAE along the real episodes, so what the real env pays where the policy now goes, falls included, reaches the actor
    itself and not only the critic, as MBPO mixes real transitions into its policy's batches; 0: imagined segments only
    (the paper's)."""
    actor_real_every: int = 10
    """Imagined updates per real one when ``actor_real_steps`` is set (Hopper's 50 imagined updates per 1000-step
    iteration and 10: five real updates per iteration)."""
    model_recent_fraction: float = 0.0
    """The share of each world-model batch drawn from the newest ``start_window`` real transitions, where imagination
    starts and the current policy goes (agents.recent.RecentMix); the rest is drawn from all the data. 0: uniform over
    all of it (the paper's)."""
    world_model: str = "diffusion"
    """``diffusion`` (the learned WorldModel) or ``oracle`` (the real simulator, agd_envs.oracle: guide
    ``none`` and joint imagination only; ``model`` overrides other than ``horizon`` are ignored)."""

    def __post_init__(self) -> None:
        self.task = get_task(self.task).name
        get_guide(self.guide)  # raises with the valid names
        if self.imagination not in IMAGINATION_MODES:
            raise ValueError(f"imagination must be one of {IMAGINATION_MODES}, got {self.imagination!r}")
        if self.guide_on not in GUIDE_TARGETS:
            raise ValueError(f"guide_on must be one of {GUIDE_TARGETS}, got {self.guide_on!r}")
        if self.world_model not in WORLD_MODELS:
            raise ValueError(f"world_model must be one of {WORLD_MODELS}, got {self.world_model!r}")
        if self.world_model == "oracle":
            if get_guide(self.guide).name != "none":
                raise ValueError(f"guide {self.guide!r}: the oracle world model is not differentiable and serves only guide 'none'")
            if self.imagination != "joint":
                raise ValueError(f"imagination {self.imagination!r} is not supported with the oracle world model; use 'joint'")
        if not -1.0 <= self.termination_margin < 1.0:
            raise ValueError(f"termination_margin must be in [-1, 1) (a fraction of each health bound; 0: the real env's rule), got {self.termination_margin}")
        if self.termination_margin and self.imagination != "joint":
            raise ValueError("termination_margin applies to joint imagination only; use imagination='joint' or termination_margin=0")
        if self.update_horizon is not None and (self.update_horizon < 1 or self.imagination != "joint"):
            raise ValueError(f"update_horizon must be a positive number of steps with imagination='joint' (null: the whole segment), got {self.update_horizon}")
        if self.actor_real_steps < 0 or self.actor_real_every < 1:
            raise ValueError(
                f"actor_real_steps must be >= 0 (0: off) and actor_real_every >= 1 (imagined updates per real one), "
                f"got {self.actor_real_steps} and {self.actor_real_every}"
            )
        if not 0.0 <= self.model_recent_fraction <= 1.0:
            raise ValueError(f"model_recent_fraction must be in [0, 1] (0: model batches uniform over all data), got {self.model_recent_fraction}")
        if self.model_recent_fraction and self.start_window is None:
            raise ValueError("model_recent_fraction draws from the newest start_window transitions; set start_window (e.g. 5000) or model_recent_fraction=0")
        if self.agent not in A2C_PRESETS:
            raise ValueError(f"agent must be one of {sorted(A2C_PRESETS)} (agents/a2c.py A2C_PRESETS), got {self.agent!r}")
        if self.imagination_dtype not in IMAGINATION_DTYPES:
            raise ValueError(f"imagination_dtype must be one of {IMAGINATION_DTYPES}, got {self.imagination_dtype!r}")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be in [0, 1] (1.0: constant learning rates), got {self.lr_final_fraction}")
        if not 0.0 <= self.alpha_final_fraction <= 1.0:
            raise ValueError(f"alpha_final_fraction must be in [0, 1] (1.0: a constant guide scale), got {self.alpha_final_fraction}")
        if self.alpha_anneal_steps is not None and self.alpha_anneal_steps <= 0:
            raise ValueError(f"alpha_anneal_steps must be a positive number of online steps (or null: the whole run), got {self.alpha_anneal_steps}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) % self.iteration_steps:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of iteration_steps={self.iteration_steps}")
        if self.iteration_steps % self.num_envs:
            raise ValueError(f"iteration_steps={self.iteration_steps} must be a multiple of num_envs={self.num_envs}")

    def a2c_config(self) -> A2CConfig:
        """The agent's hyper-parameters: the ``agent`` scheme with the ``a2c`` overrides."""
        return A2CConfig.named(self.agent, **self.a2c)

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> "TrainerConfig":
        """Per-task defaults (the one place they live), then ``overrides``; ``model``/``a2c`` dicts are merged."""
        name = get_task(task).name
        defaults = TASK_DEFAULTS.get(name, {})
        fields = {**defaults, **overrides}
        for key in ("model", "a2c"):
            fields[key] = {**defaults.get(key, {}), **overrides.get(key, {})}
        return cls(task=name, **fields)


TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # Reacher is the CPU task (README quick start, tests/test_learning.py); measured on 1 thread:
    # - init_std 0.3: the reward is -|fingertip - target| - |a|^2, so std 1.0 exploration costs ~1.3 per
    #   step against a distance term of ~0.2 and the first 2k steps only learn to shrink the noise
    #   (return -12.2 -> -21 -> -12.6); with 0.3 the return is -9.0 after 500 steps and -7.1 after 4k;
    # - reward_weight 10: the 10 reward entries otherwise carry 1/12 of the loss and the reward
    #   prediction barely depends on the action;
    # - the cpu preset's 256x3 world model, 1500 pretraining updates on the shipped 40k steps (~20 s), then 0.2 model and
    #   0.1 agent updates per real step: ~13 s per 500-step iteration including a 20-episode evaluation;
    # - the s_0-anchored model, not the dynamics prior: the quick start must stay within its time (the prior costs
    #   2.5x per model update, 26 vs 66 updates/s on one thread) and it learns there without it
    #   (`--model-set dynamics_prior=true anchor_states=false` turns it on).
    "Reacher": {
        "eval_episodes": 20, "eval_every": 500, "checkpoint_every": 1000, "iteration_steps": 500,
        "model_pretrain_updates": 1500, "model_updates_per_step": 0.2, "agent_updates_per_step": 0.1,
        "model": {"reward_weight": 10.0, "dynamics_prior": False, "anchor_states": True}, "a2c": {"init_std": 0.3},
    },
    # Hopper: the learner that beats PPO at 100k real steps (docs/results.md, "Hopper EAG to 100k real steps"): RL Zoo's
    # Hopper PPO as the update, imagination from the newest 5k real transitions, the critic also fit on λ-returns of
    # the newest 5k real transitions, the agent's lr annealed to zero; the guide scale annealed from 0.1 to zero (EAG
    # ahead of the unguided dream at 100k on 4 of 4 seeds with it, behind over 80-100k on 4 of 4 without: docs/results.md,
    # "The guide annealed to zero"). The paper's setting: `agd train --agent paper --set start_window=null
    # critic_real_steps=0 lr_final_fraction=1.0 alpha_final_fraction=1.0`.
    "Hopper": {"agent": "zoo", "start_window": 5000, "critic_real_steps": 5000, "lr_final_fraction": 0.0, "alpha_final_fraction": 0.0},
    "Walker2d": {},
    # HalfCheetah: the paper's A2C; the guide scale annealed from 0.1 to zero, as on Hopper (docs/results.md, "The guide
    # annealed to zero on HalfCheetah": five seeds, +895 over the constant scale at 100k).
    "HalfCheetah": {"eval_episodes": 5, "alpha_final_fraction": 0.0},
}


class AGDTrainer:
    """Runs (or resumes) one AGD-MBRL training run in ``run_dir``."""

    def __init__(
        self, config: TrainerConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
        distributed: Distributed | None = None,
    ) -> None:
        self.config, self.run_dir, self.ranks = config, Path(run_dir), distributed or Distributed()
        self.progress = progress and self.ranks.is_main
        self.task = get_task(config.task)
        self.checkpoint = RunCheckpoint(self.run_dir)
        if self.ranks.is_main:
            self.checkpoint.prepare(dataclasses.asdict(config), resume)
        self.ranks.barrier()  # the run directory exists
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.generator = torch.Generator().manual_seed(self.ranks.seed(config.seed))
        self.log = RunLog(self.run_dir)
        self.agent = A2CAgent(
            self.task.obs_dim, self.task.act_dim, config.a2c_config(),
            action_low=self.task.action_low, action_high=self.task.action_high, device=config.device,
        )  # fmt: skip
        self.ranks.average_gradients([*self.agent.actor.parameters(), *self.agent.critic.parameters()])
        self.model = self._build_model()
        check_update_horizon(config.update_horizon, self.model.config.horizon)  # before the prefill and pretraining, not at the first update
        # The world model's optimizer and EMA update; the oracle has nothing to fit.
        self.model_trainer = WorldModelTrainer(self.model, self.ranks) if isinstance(self.model, WorldModel) else None
        self.online_steps, self.start_time, self.elapsed_before = 0, time.perf_counter(), 0.0
        self.initial_steps = 0  # real transitions in the dataset before the first iteration (warm start or prefill)
        self.last: dict[str, float] = {}
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)
        self._data: EpisodeDataset | None = None  # the last read of the run's dataset (_dataset re-reads what is new)
        self._rollouts_logged = 0  # episodes of collector.episode_returns already in a log row
        self.collector: RealEnvCollector | None = None  # the first evaluation, inside _start, comes before any agent episode
        self.collector = self._start(resume)

    # ---------------------------------------------------------------- setup
    def _build_model(self) -> WorldModel | OracleWorldModel:
        """The run's world model on ``config.device``: the oracle, or the preset's diffusion model."""
        cfg = self.config
        if cfg.world_model == "oracle":
            horizon = cfg.model.get("horizon", WorldModelConfig.preset(cfg.model_preset, self.task).horizon)  # the diffusion model's H
            return OracleWorldModel(self.task, OracleConfig(horizon=horizon), device=cfg.device)
        overrides = dict(cfg.model)
        if cfg.sampling_steps is not None:
            overrides["sampling_steps"] = cfg.sampling_steps
        return WorldModel(WorldModelConfig.preset(cfg.model_preset, self.task, **overrides)).to(cfg.device)

    def _fit_model(self, dataset: EpisodeDataset, updates: int, progress: bool) -> list[dict[str, float]]:
        """``updates`` world-model updates (timed as phase ``model``); nothing for the oracle."""
        if self.model_trainer is None:
            return []
        cfg = self.config
        source = RecentMix(dataset, cfg.start_window, cfg.model_recent_fraction) if cfg.model_recent_fraction else dataset
        with self._phase("model"):
            return self.model_trainer.fit(source, updates, generator=self.generator, progress=progress)

    def _start(self, resume: bool) -> RealEnvCollector | None:
        """Restore the checkpoint, or start the dataset and pretrain the model; rank 0's real-env collector (else None)."""
        main = self.ranks.is_main
        collector = (self._restore() if resume else self._new_dataset()) if main else None
        self.ranks.barrier()  # rank 0 has written (or rolled back) the dataset the other ranks read
        if resume:
            if not main:
                self._restore()
            self.ranks.barrier()  # rank 0 collects into the dataset only after every rank read it
            return collector
        self._fit_model(self._dataset(), self.config.model_pretrain_updates, self.progress)
        if main:
            self._evaluate_and_log({})
        return collector

    def _restore(self) -> RealEnvCollector | None:
        """Load the checkpoint into this rank; rank 0 also rolls the dataset and log back and returns its collector."""
        state = self.checkpoint.load(self.agent, self.model, self.model_trainer, self.generator)
        self.online_steps, self.elapsed_before = state["online_steps"] if "online_steps" in state else state["real_steps"], state["wall_seconds"]
        self.initial_steps = state.get("initial_steps", 0)  # 0: a checkpoint from before the count existed
        self.phase_seconds.update(state.get("phase_seconds", {}))
        if not self.ranks.is_main:  # the checkpoint holds rank 0's generator: continue on a stream of this rank's own
            self.generator.manual_seed(self.ranks.seed(self.config.seed, stream=self.online_steps))
            return None
        self.log.truncate(state["log_rows"])
        collector = self._collector(DatasetWriter(self.checkpoint.data_dir, self.task))
        collector.load_state_dict(state["collector"])
        return collector

    def _new_dataset(self) -> RealEnvCollector:
        """The run's dataset from the warm start or a random prefill, and the collector that appends to it."""
        cfg, data_dir = self.config, self.checkpoint.data_dir
        if cfg.warm_start is not None:
            source = default_dataset_path(self.task) if cfg.warm_start == "shipped" else Path(cfg.warm_start)
            self.checkpoint.copy_dataset(source, self.task)
            collector = self._collector(DatasetWriter(data_dir, self.task))
        else:
            collector = self._collector(DatasetWriter(data_dir, self.task, policy="agd-train"))
            collector.collect("random", cfg.prefill_steps)
        collector.writer.checkpoint()
        self.initial_steps = collector.writer.num_steps
        self._rollouts_logged = len(collector.episode_returns)  # the prefill's random episodes are not the agent's
        return collector

    def _collector(self, writer: DatasetWriter) -> RealEnvCollector:
        return RealEnvCollector(self.task, writer, num_envs=self.config.num_envs, seed=self.config.seed, progress=False)

    def _dataset(self) -> EpisodeDataset:
        """The run's dataset as on disk now; episodes read before are reused (EpisodeDataset.reopen)."""
        self._data = self._data.reopen() if self._data is not None else EpisodeDataset.open(self.checkpoint.data_dir, task=self.task)
        return self._data

    # ---------------------------------------------------------------- the loop
    def train(self) -> list[dict[str, str]]:
        """Run iterations until ``config.steps`` real steps; return the logged rows."""
        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.online_steps, desc=f"agd train {self.task.name} {cfg.guide}", unit="step", disable=not self.progress, dynamic_ncols=True)
        while self.online_steps < cfg.steps:
            metrics = self.iteration()
            bar.update(cfg.iteration_steps)
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("eval_return_mean", "model_loss", "steps_per_second")})
        bar.close()
        # Release the dataset's lock: the run can be resumed (extended) or reopened in this process. The episode in
        # flight stays in the checkpoint's collector state, not in the dataset, exactly as after a crash.
        if self.collector is not None:
            self.collector.close(keep_partial=False)
        self.log.close()
        return self.log.rows() if self.ranks.is_main else []

    def iteration(self) -> dict[str, float]:
        """One pass of Algorithm 1 over ``iteration_steps`` real steps; returns the latest metrics."""
        cfg, main = self.config, self.ranks.is_main
        if self.collector is not None:
            with self._phase("env"):
                self.collector.collect(lambda obs: self.agent.act(obs), cfg.iteration_steps)
                self.collector.writer.checkpoint()  # the reader below sees every finished episode
        self.ranks.barrier()  # every rank reads what rank 0 collected
        self.online_steps += cfg.iteration_steps
        dataset = self._dataset()
        model_log = self._fit_model(dataset, round(cfg.model_updates_per_step * cfg.iteration_steps), False)
        metrics: dict[str, float] = {"model_loss": model_log[-1]["loss"], "model_skipped": model_log[-1]["skipped"]} if model_log else {}
        critic_real = critic_rows(recent_transitions(dataset, cfg.critic_real_steps)) if cfg.critic_real_steps else None
        actor_real = recent_transitions(dataset, cfg.actor_real_steps) if cfg.actor_real_steps else None
        self.agent.set_lr_scale(self.lr_scale())
        for update in range(1, round(cfg.agent_updates_per_step * cfg.iteration_steps) + 1):
            metrics.update(self._agent_update(dataset))
            with self._phase("agent"):
                if critic_real is not None:
                    metrics.update(self.agent.update_critic_from_transitions(**critic_real))
                if actor_real is not None and update % cfg.actor_real_every == 0:
                    self.agent.update_from_transitions(**actor_real)  # its metrics would overwrite the imagined update's
        self.last.update(metrics)
        if main and self.online_steps % cfg.eval_every == 0:
            self._evaluate_and_log(self.last)
        if main and (self.online_steps % cfg.checkpoint_every == 0 or self.online_steps >= cfg.steps):
            self.checkpoint.save(self._state(), self.agent, self.model, self.model_trainer, self.generator)
        return {**self.last, "steps_per_second": self.online_steps / max(self._wall(), 1e-9)}

    def _annealed(self, final_fraction: float, over_steps: int | None = None) -> float:
        """A linear schedule's multiplier, 1 -> ``final_fraction`` over ``over_steps`` online steps (None: ``steps``), for
        the iteration that has just collected its real steps."""
        progress = min((self.online_steps - self.config.iteration_steps) / (over_steps or self.config.steps), 1.0)
        return 1.0 - (1.0 - final_fraction) * max(progress, 0.0)

    def lr_scale(self) -> float:
        """The agent's learning-rate multiplier for the iteration that has just collected its real steps."""
        return self._annealed(self.config.lr_final_fraction)

    def guide_scale(self) -> float | None:
        """The guide scale imagination uses in this iteration (None: the sampler's default, unannealed)."""
        cfg = self.config
        if cfg.alpha_final_fraction == 1.0:
            return cfg.alpha
        base = default_guide_scale(self.task, cfg.guide_on) if cfg.alpha is None else cfg.alpha
        return base * self._annealed(cfg.alpha_final_fraction, cfg.alpha_anneal_steps)

    def _agent_update(self, dataset: EpisodeDataset) -> dict[str, float]:
        cfg = self.config
        s0 = self._real_segments(dataset, self.ranks.share(cfg.imagination_batch, "imagination_batch")).states[:, 0].to(self.model.device)
        if cfg.imagination == "joint":
            with self._phase("imagine"), self._imagination_autocast():
                segments = imagine(self.model, s0, self.agent.actor, self.agent.critic, guide=cfg.guide, alpha=self.guide_scale(),
                                  gamma=self.agent.config.gamma, generator=self._device_generator(), guide_on=cfg.guide_on)  # fmt: skip
            segments = first_steps(with_termination_margin(segments, self.task, cfg.termination_margin), cfg.update_horizon)
            with self._phase("agent"):
                stats = self.agent.update(segments)
        else:
            segments, stats = self._closed_loop_update(dataset, s0)
        if cfg.critic_real_segments:
            with self._phase("agent"):
                stats |= self.agent.update_critic(self._real_segments(dataset, cfg.critic_real_segments))
        agent = self.agent  # the ranks' statistics (and PopArt's rescale) came from their own shards: keep rank 0's
        self.ranks.broadcast_modules(agent.actor, agent.critic, agent.target_critic, agent.obs_moments, agent.averaged_actor)
        stats["imagined_reward"] = float(segments.rewards.mean())
        if segments.advantages is not None:
            stats["imagined_advantage"] = float(segments.advantages.mean())
        return stats

    def _real_segments(self, dataset: EpisodeDataset, count: int) -> SegmentBatch:
        """``count`` real H-step segments of the dataset, from the start window (``config.start_window``) or all of it."""
        cfg, horizon = self.config, self.model.config.horizon
        rows = None if cfg.start_window is None else recent_rows(dataset, horizon, cfg.start_window, count, self.generator)
        return dataset.sample_segments(count, horizon, generator=self.generator, indices=rows)

    def _closed_loop_update(self, dataset: EpisodeDataset, s0: torch.Tensor) -> tuple[SegmentBatch, dict[str, float]]:
        """The agent acts step by step in a DreamVectorEnv batch started at ``s0``; one A2C update."""
        with self._phase("imagine"):
            arrays = self._dream_rollout(dataset, s0)
        with self._phase("agent"):
            stats = self.agent.update_from_transitions(**arrays)
        states = np.concatenate([arrays["obs"], arrays["next_obs"][-1:]], axis=0)
        imagined = SegmentBatch(
            states=torch.as_tensor(states).transpose(0, 1), actions=torch.as_tensor(arrays["actions"]).transpose(0, 1),
            rewards=torch.as_tensor(arrays["rewards"]).transpose(0, 1), terminations=torch.as_tensor(arrays["terminated"]).transpose(0, 1),
            advantages=None,
        )  # fmt: skip
        return imagined, stats

    def _dream_rollout(self, dataset: EpisodeDataset, s0: torch.Tensor) -> dict[str, np.ndarray]:
        """H steps of the current policy in a DreamVectorEnv batch from ``s0``: time-major ``T x N x ...`` arrays."""
        from agd_envs.dream_env import DreamVectorEnv

        cfg = self.config
        critic = self.agent.critic if cfg.guide in ("eag", "sag") else None
        env = DreamVectorEnv(self.task, num_envs=len(s0), model=self.model, critic=critic, guide=cfg.guide, alpha=self.guide_scale(), dataset=dataset, device=cfg.device, sampling_steps=cfg.sampling_steps, gamma=self.agent.config.gamma)
        obs, _ = env.reset(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)), options={"initial_state": s0.cpu().numpy()})
        rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")}
        for _ in range(self.model.config.horizon):
            with torch.no_grad():
                actions = self.agent.actor(torch.as_tensor(obs, device=cfg.device)).sample().cpu().numpy()
            next_obs, rewards, terminated, truncated, info = env.step(actions)
            true_next = next_obs.copy()
            if "final_obs" in info:
                ended = info["_final_obs"]
                true_next[ended] = np.stack(info["final_obs"][ended])
            for key, value in zip(rows, (obs, actions, rewards, true_next, terminated, truncated)):
                rows[key].append(value)
            obs = next_obs
        env.close()
        return {k: np.stack(v) for k, v in rows.items()}

    def _imagination_autocast(self) -> torch.autocast:
        """Autocast to ``config.imagination_dtype`` on the model's device (disabled for float32)."""
        dtype = getattr(torch, self.config.imagination_dtype)
        return torch.autocast(torch.device(self.config.device).type, dtype=dtype, enabled=dtype != torch.float32)

    def _device_generator(self) -> torch.Generator:
        """A generator on the model's device, seeded from the trainer's CPU generator (reproducible)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.Generator(device=self.model.device).manual_seed(seed)

    # ---------------------------------------------------------------- logging and state
    @property
    def real_steps(self) -> int:
        """Every real transition the run has learned from: the warm-start data or prefill plus the online steps
        (the ``real_steps`` column; ``online_steps`` counts only what the run collected after its start)."""
        return self.initial_steps + self.online_steps

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the block to ``phase_seconds[name]`` (logged as ``seconds_<name>``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - start

    def _wall(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def _evaluate_and_log(self, metrics: dict[str, float]) -> None:
        cfg = self.config
        def run_episodes(averaged: bool | None) -> Evaluation:
            return evaluate(self.task, lambda obs: self.agent.act(obs, deterministic=True, averaged=averaged), cfg.eval_episodes, seed=10_000 + cfg.seed)

        with self._phase("eval"):
            result = run_episodes(None)
            # With an averaged actor (A2CConfig.actor_average) the online one is evaluated too, on the same starts.
            online = run_episodes(False) if self.agent.averaged_actor is not None else None
        row = {
            "algo": run_label(cfg), "task": self.task.name, "seed": cfg.seed, "real_steps": self.real_steps,
            "online_steps": self.online_steps,
            "wall_seconds": self._wall(), "steps_per_second": self.online_steps / max(self._wall(), 1e-9),
            "eval_return_mean": result.mean, "eval_return_std": result.std, "eval_return_stderr": result.stderr,
            "eval_episodes": cfg.eval_episodes, **({"eval_online_return_mean": online.mean} if online is not None else {}),
            **self._rollout_stats(),
            **{k: metrics[k] for k in ("model_loss", "model_skipped", "actor_loss", "critic_loss", "entropy", "imagined_reward", "imagined_advantage") if k in metrics},
            **{f"seconds_{phase}": seconds for phase, seconds in self.phase_seconds.items()},
        }  # fmt: skip
        self.log.append(row)
        self.last["eval_return_mean"] = result.mean

    def _rollout_stats(self) -> dict[str, float]:
        """Mean return and count of the real episodes the exploring policy finished since the last call (none: {})."""
        returns = self.collector.episode_returns[self._rollouts_logged:] if self.collector is not None else []
        self._rollouts_logged += len(returns)
        return {"rollout_return_mean": float(np.mean(returns)), "rollout_episodes": len(returns)} if returns else {}

    def _state(self) -> dict[str, Any]:
        return {
            "online_steps": self.online_steps,
            "initial_steps": self.initial_steps,
            "wall_seconds": self._wall(),
            "phase_seconds": dict(self.phase_seconds),
            "log_rows": len(self.log.rows()),
            "num_episodes": self.collector.writer.num_episodes,
            "collector": self.collector.state_dict(),
            "config": dataclasses.asdict(self.config),
        }


def with_termination_margin(segments: SegmentBatch, task: Task, margin: float) -> SegmentBatch:
    """``segments`` whose terminations are ``task.terminated(s_{t+1}, margin)``: added to their own where ``margin`` > 0,
    in place of them where it is < 0 (a looser rule hides falls); unchanged at 0."""
    if not margin:
        return segments
    rule = task.terminated(segments.states[:, 1:], margin).to(segments.terminations.device)
    return dataclasses.replace(segments, terminations=segments.terminations | rule if margin > 0 else rule)


def check_update_horizon(steps: int | None, horizon: int) -> None:
    """Raise if ``update_horizon`` ``steps`` is longer than imagined segments of ``horizon`` steps."""
    if steps is not None and steps > horizon:
        raise ValueError(f"update_horizon={steps} is longer than the imagined segments ({horizon} steps); "
                         "use at most the world model's horizon, or null")


def first_steps(segments: SegmentBatch, steps: int | None) -> SegmentBatch:
    """The first ``steps`` transitions of each segment (all of them for None)."""
    if steps is None:
        return segments
    check_update_horizon(steps, segments.actions.shape[1])
    cut = lambda x: None if x is None else x[:, :steps]  # noqa: E731
    return dataclasses.replace(segments, states=segments.states[:, :steps + 1], actions=cut(segments.actions), rewards=cut(segments.rewards),
                               terminations=cut(segments.terminations), advantages=cut(segments.advantages))


def run_label(config: TrainerConfig) -> str:
    """A run's ``algo`` label: ``agd-<guide>``, plus ``-alpha<α>`` when the guide scale is not the task's default,
    ``-anneal<f>`` when the guide scale is annealed to f of it (``alpha_final_fraction``; ``-anneal<f>by<n>k`` when it gets
    there after n thousand online steps, ``alpha_anneal_steps``), and ``-rhead`` when the world
    model predicts rewards with a reward head; ``agd-oracle`` for oracle runs;
    ``-ppo`` when the agent takes PPO's clipped update (``agd train --agent ppo|zoo``, Hopper's default); ``-margin<m>``
    when imagined segments end at near-falls (``termination_margin``) and ``-first<k>`` when the agent updates on their
    first k steps (``update_horizon``), and ``-recent<f>`` when f of each model batch is recent data
    (``model_recent_fraction``), and ``-real<n>e<k>`` when the agent also updates on the newest n real transitions after
    every k imagined updates (``actor_real_steps``, ``actor_real_every``), then ``-<field><value>`` for each agent field
    set away from the task's scheme (``--agent-set init_std=0.135``: ``-init_std0.135``), last."""
    agent = ("-ppo" if config.a2c_config().clip_ratio is not None else "") + (
        f"-margin{config.termination_margin:g}" if config.termination_margin else "") + (
        f"-first{config.update_horizon}" if config.update_horizon is not None else "") + (
        f"-recent{config.model_recent_fraction:g}" if config.model_recent_fraction else "") + (
        f"-real{config.actor_real_steps}e{config.actor_real_every}" if config.actor_real_steps else "") + _agent_overrides(config)
    if config.world_model == "oracle":
        return "agd-oracle" + agent
    alpha = config.alpha
    custom = config.guide != "none" and alpha is not None and alpha != get_task(config.task).guide_scale
    head = bool(config.model.get("reward_head", False))
    annealed = ""
    if config.guide != "none" and config.alpha_final_fraction != 1.0:
        by = f"by{config.alpha_anneal_steps / 1000:g}k" if config.alpha_anneal_steps else ""
        annealed = f"-anneal{config.alpha_final_fraction:g}{by}"
    return f"agd-{config.guide}" + (f"-alpha{alpha:g}" if custom else "") + annealed + ("-rhead" if head else "") + agent


def _agent_overrides(config: TrainerConfig) -> str:
    """``-<field><value>`` for each ``a2c`` override whose value differs from the task's scheme, in field order."""
    task_a2c = TASK_DEFAULTS.get(get_task(config.task).name, {}).get("a2c", {})
    scheme, actual = A2CConfig.named(config.agent, **task_a2c), config.a2c_config()
    changed = [f.name for f in dataclasses.fields(A2CConfig) if f.name in config.a2c and getattr(actual, f.name) != getattr(scheme, f.name)]
    return "".join(f"-{name}{_label_value(getattr(actual, name))}" for name in changed)


def _label_value(value: Any) -> str:
    """A config value as a label fragment: numbers in ``%g`` form, sequences joined by ``x``, anything else as ``str``."""
    if isinstance(value, (list, tuple)):
        return "x".join(_label_value(item) for item in value)
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def agent_from_run(run_dir: str | Path) -> tuple[TrainerConfig, A2CAgent]:
    """A run's config and its agent with the weights of the run's last checkpoint (CPU)."""
    config = config_from_run(run_dir)
    task = get_task(config.task)
    agent = A2CAgent(task.obs_dim, task.act_dim, config.a2c_config(), action_low=task.action_low, action_high=task.action_high)
    path = Path(run_dir) / "checkpoint" / "agent.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the run has no checkpoint yet")
    agent.load_state_dict(torch.load(path, weights_only=True))
    return config, agent


def config_from_run(run_dir: str | Path) -> TrainerConfig:
    """The TrainerConfig saved in a run directory."""
    path = Path(run_dir) / "config.json"
    try:
        return TrainerConfig(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; {run_dir} is not an `agd train` run directory") from None
