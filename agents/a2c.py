"""Advantage actor-critic on imagined segments (paper Algorithm 1, line 6) or on dream-env rollouts.

One update = one batch: λ-returns and GAE(λ) from a (target) critic, a policy-gradient step on
normalized advantages and a critic regression step, each with its own optimizer and grad-norm clip.
Two entry points share every line of the loss code:

* :meth:`A2CAgent.update` takes joint imagined segments (batch-major ``B x H``, the sampler's output);
  every segment ends in a truncation (bootstrap from ``V(s_H)``), transitions after an imagined
  termination are masked out.
* :meth:`A2CAgent.update_from_transitions` takes closed-loop rollouts of a vector env (time-major
  ``T x N``, e.g. ``AGD-Dream-<Task>``), bootstrapping at truncation from the true next observation.

Deviations from the reference A2C (PolyGRAD's public code: polygrad/agent/a2c.py, agent/functions.py), each
because the reference is buggy there or because it learns faster on a short CPU budget:

* all H transitions of a segment are used (the reference drops the last reward/action and bootstraps
  from ``V(s_{H-1})``), and the terminating transition keeps its loss (the reference's mask zeroes it);
* no line search and no adaptive actor lr (the reference re-steps Adam with the same gradients, which
  corrupts its moments); fixed, higher actor and log-std lrs instead (see :class:`A2CConfig`);
* observations are z-scored inside the networks and the critic's output is PopArt-normalized, so one
  set of learning rates serves HalfCheetah (returns ~10²–10³) and Reacher (~1);
* plain Adam (no weight decay), advantage normalization over valid transitions only.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from agents.networks import GaussianActor, RunningMoments, ValueCritic
from agents.returns import alive_mask, explained_variance, gae

ArrayLike = np.ndarray | Tensor


class ImaginedSegments(Protocol):
    """Imagined segments in real units (e.g. ``agd_envs.batch.SegmentBatch``)."""

    states: Tensor
    """``B x (H+1) x S``: s_0..s_H."""
    actions: Tensor
    """``B x H x A``: a_t taken in s_t."""
    rewards: Tensor
    """``B x H``: r_t of the transition s_t -a_t-> s_{t+1}."""
    terminations: Tensor
    """``B x H`` bool: d_t = "s_{t+1} is terminal"."""


@dataclass
class A2CConfig:
    """Hyper-parameters of :class:`A2CAgent` (reference defaults unless a field says why not)."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """Widths of the actor's and the critic's hidden [Linear, LayerNorm, ELU] layers."""
    lr_actor: float = 3e-4
    """Adam lr of the actor's mean network. The reference starts at 3e-5 and lets a line search
    shrink it so that mean|Δlog π| stays ≈ 0.01 per update, over ~375k updates. A CPU budget allows a
    few thousand, so: no line search and the usual A2C/PPO lr; it keeps mean|Δlog π| at ~0.01-0.03
    (metric ``policy_change``). Measured (A2C on real HalfCheetah-v5, 300 updates of 16x32 steps, one
    seed, lr_log_std 3e-3): 1e-4 -> return -112, 3e-4 -> +151."""
    lr_log_std: float | None = 3e-3
    """Adam lr of the state-independent log-std (None: ``lr_actor``). Adam moves a parameter by ~lr
    per step, so at 3e-4 the std needs ~5k updates to go from 1.0 to 0.3; 3e-3 lets it adapt within a
    few hundred. Measured as above: HalfCheetah -> +151 vs +10 with 3e-4, Reacher-v5 (200 updates)
    -> -41 vs -59."""
    lr_critic: float = 3e-4
    """Adam lr of the critic."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.9
    """GAE λ."""
    entropy_weight: float = 1e-5
    """Weight of the policy-entropy bonus in the actor loss."""
    max_grad_norm_actor: float = 0.5
    """Global grad-norm clip of the actor's parameters (log-std included; the reference leaves it
    unclipped). The reference's 0.1 mostly rescales every step, which Adam undoes; 0.5 only trims
    outlier batches."""
    max_grad_norm_critic: float = 0.5
    """Global grad-norm clip of the critic's parameters (loss in PopArt-normalized units)."""
    target_ema: float | None = 0.98
    """EMA decay of the target critic that computes advantages and λ-returns; None uses the online
    critic. The reference's 0.995 (a ~200-update lag) is slow for the few thousand updates of a CPU
    budget. Critic MSE against Monte-Carlo values after 150 updates on the tests' linear system:
    0.995 -> 2.7, 0.98 -> 0.22, 0.95 -> 0.16, None -> 74."""
    actor_average: float | None = None
    """EMA decay of an averaged copy of the actor (Polyak averaging of its weights and observation statistics, one
    step per update; None: no copy). Evaluation acts with it (:meth:`A2CAgent.act` ``deterministic=True``), collection
    explores with the online actor, so the updates are unchanged. 0.995 averages over ~200 updates: 4k real steps at
    0.05 updates per real step. Meant for policies that find a gait and lose it again between two evaluations."""
    init_std: float = 1.0
    """Initial action std, in half-widths of the action box."""
    min_std: float = 0.1
    """Floor of the action std, in half-widths of the action box (std = exp(b) + min_std)."""
    normalize_advantages: bool = True
    """Standardize advantages over the valid transitions of each batch."""
    advantage_clip: float | None = None
    """Clip each batch's advantages to their median ± this many robust standard deviations (1.4826 x the median
    absolute deviation) before they are standardized; None: no clip. In late Hopper dreams 1% of the segments carry
    36-96% of the first action's ten-step advantage variance, and the dream's A_0 correlates 0.00-0.33 with the
    simulator's, 0.48-0.67 once both are clipped at 3 (benchmarks/results/oracle_gap_hopper_first_action_rank.json)."""
    obs_norm: str = "running"
    """Observation normalization inside both networks: "running" (mean/std over every observation
    passed to an update), "fixed" (only what :meth:`A2CAgent.set_obs_statistics` sets, e.g. the real
    dataset's statistics), or "none". Raw MuJoCo observations span ~0.1 to ~10 per dimension."""
    obs_min_std: float = 1e-2
    """Floor of the observation std, in observation units: Reacher-v5's last dimension is constant, and
    dividing a dream's tiny deviation there by a ~0 std would saturate that input."""
    obs_clip: float | None = 10.0
    """Clip of the z-scored observations (None: no clip)."""
    value_norm: bool = True
    """PopArt: the critic learns values in units of running return statistics (see ValueCritic)."""
    value_norm_rate: float = 0.05
    """EMA rate of the return mean/second moment per update (the first update sets them)."""
    value_norm_min_std: float = 1e-2
    """Floor of the return std, in reward units."""
    epochs: int = 1
    """Passes over each batch (1: the paper's A2C, one step per batch). More reuse each imagined batch,
    whose imagination costs far more than a step of these small networks."""
    minibatches: int = 1
    """Minibatches per pass (the valid transitions shuffled and split); each takes one actor and one
    critic step."""
    clip_ratio: float | None = None
    """PPO's clipped surrogate with this epsilon (e.g. 0.2) against the policy that the batch's first
    step started from; None: the plain policy gradient of A2C. Needed once ``epochs > 1``: it stops
    later steps on the same batch from moving the policy far from the one whose advantages they use."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_std < self.init_std:
            raise ValueError(f"need 0 <= min_std < init_std, got min_std={self.min_std}, init_std={self.init_std}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}")
        if self.target_ema is not None and not 0.0 <= self.target_ema < 1.0:
            raise ValueError(f"target_ema must be in [0, 1) or None (no target critic), got {self.target_ema}")
        if self.actor_average is not None and not 0.0 <= self.actor_average < 1.0:
            raise ValueError(f"actor_average must be an EMA decay in [0, 1) (e.g. 0.995) or None (no averaged actor), got {self.actor_average}")
        if self.obs_norm not in ("running", "fixed", "none"):
            raise ValueError(f"obs_norm must be 'running', 'fixed' or 'none', got {self.obs_norm!r}")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(f"epochs and minibatches must be >= 1, got {self.epochs} and {self.minibatches}")
        if self.clip_ratio is not None and not self.clip_ratio > 0.0:
            raise ValueError(f"clip_ratio must be > 0 or None (plain A2C), got {self.clip_ratio}")
        if self.advantage_clip is not None and not self.advantage_clip > 0.0:
            raise ValueError(f"advantage_clip must be > 0 robust standard deviations (e.g. 3) or None (no clip), got {self.advantage_clip}")
        self.hidden_sizes = tuple(self.hidden_sizes)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> "A2CConfig":
        """A named configuration (``paper``: the paper's A2C; ``ppo``: 4 clipped epochs x 4; ``zoo``: RL Zoo's Hopper PPO), then ``overrides``."""
        if name not in A2C_PRESETS:
            raise ValueError(f"unknown agent configuration {name!r}; choose one of {sorted(A2C_PRESETS)}")
        return cls(**{**A2C_PRESETS[name], **overrides})


A2C_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "ppo": {"epochs": 4, "minibatches": 4, "clip_ratio": 0.2},
    # RL Zoo's Hopper PPO (agents/baselines.py PPO_ZOO["Hopper"]) in these fields: 5 epochs of 16 minibatches (512 / 32),
    # its gamma / lambda / lr / entropy / clip, one online critic (no target) and one lr for the log-std too.
    # benchmarks/results/learner_on_real_hopper_loo.json: 877 on real Hopper at 20k steps (4 seeds) against the
    # ppo scheme's 254; the target critic and gamma / lambda account for most of the difference.
    "zoo": {"epochs": 5, "minibatches": 16, "clip_ratio": 0.2, "gamma": 0.999, "gae_lambda": 0.99, "target_ema": None,
            "lr_log_std": None, "lr_actor": 1e-4, "lr_critic": 1e-4, "max_grad_norm_actor": 0.7,
            "max_grad_norm_critic": 0.7, "entropy_weight": 0.0023, "min_std": 0.01},
}  # fmt: skip
"""Named agent update schemes; ``paper`` is the paper's A2C (every field at its default)."""


def _time_major(x: Tensor) -> Tensor:
    """``B x H x ...`` -> ``H x B x ...`` (the loss code is time-major)."""
    return rearrange(x, "b h ... -> h b ...")


def next_state_values(critic: Callable[[Tensor], Tensor], obs: Tensor, next_obs: Tensor, values: Tensor) -> Tensor:
    """``T x N`` V(next_obs), reusing ``values`` = V(obs) where ``next_obs[t]`` is ``obs[t + 1]`` (inside a segment or
    an episode); the critic runs only on the rest (each row's last step, episode ends): half the forward rows."""
    follows = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    follows[:-1] = (next_obs[:-1] == obs[1:]).all(-1)
    next_values = torch.roll(values, -1, 0)
    rest = ~follows
    next_values[rest] = critic(next_obs[rest])
    return next_values


def clip_to_robust_range(x: Tensor, limit: float) -> Tensor:
    """``x`` clipped to its median ± ``limit`` robust standard deviations (1.4826 x the median absolute deviation).

    Unchanged when more than half the entries equal the median (a zero deviation scale)."""
    median = x.median()
    scale = 1.4826 * (x - median).abs().median()
    if not bool(scale > 0):
        return x
    return x.clamp(median - limit * scale, median + limit * scale)


def _as_tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(x, device=device).detach().to(dtype)


class A2CAgent:
    """Gaussian actor and state-value critic trained by A2C; all inputs and outputs in real units.

    ``agent.actor(states)`` -> ``torch.distributions.Distribution`` (the policy the diffusion sampler
    guides actions with); ``agent.critic(obs)`` -> ``B`` values (an ``nn.Module``, the critic protocol:
    ``gym.make("AGD-Dream-HalfCheetah", critic=agent.critic)``); ``agent.act(obs)`` for real envs.
    Sampling in :meth:`act` uses torch's global RNG: seed it for reproducible actions.

    :param obs_dim: observation size S.
    :param act_dim: action size A.
    :param config: hyper-parameters (defaults: :class:`A2CConfig`).
    :param action_low: lower action bound (scalar or ``A``); actions are clipped to it in :meth:`act`.
    :param action_high: upper action bound (scalar or ``A``).
    :param device: where the networks live; inputs on any device are moved there.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: A2CConfig | None = None,
        *,
        action_low: float | ArrayLike = -1.0,
        action_high: float | ArrayLike = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config = config if config is not None else A2CConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        low = torch.as_tensor(action_low, dtype=torch.float32).expand(act_dim).clone()
        high = torch.as_tensor(action_high, dtype=torch.float32).expand(act_dim).clone()
        if not bool((low < high).all() and low.isfinite().all() and high.isfinite().all()):
            raise ValueError(
                f"need finite action_low < action_high per dimension, got {low.tolist()} and {high.tolist()}; "
                "for an unbounded action space pass the range the policy should cover"
            )
        self.action_low, self.action_high = low.to(self.device), high.to(self.device)
        obs_clip = config.obs_clip if config.obs_norm != "none" else None
        self.actor = GaussianActor(
            obs_dim,
            act_dim,
            hidden_sizes=config.hidden_sizes,
            init_std=config.init_std,
            min_std=config.min_std,
            action_low=low,
            action_high=high,
            obs_clip=obs_clip,
        ).to(self.device)
        self.critic = ValueCritic(obs_dim, hidden_sizes=config.hidden_sizes, obs_clip=obs_clip).to(self.device)
        self.target_critic: ValueCritic | None = None
        if config.target_ema is not None:
            self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.obs_moments = RunningMoments(obs_dim).to(self.device)
        self.averaged_actor: AveragedModel | None = None
        if config.actor_average is not None:  # buffers too: the observation statistics the averaged weights go with
            self.averaged_actor = AveragedModel(self.actor, multi_avg_fn=get_ema_multi_avg_fn(config.actor_average), use_buffers=True)
        lr_log_std = config.lr_log_std if config.lr_log_std is not None else config.lr_actor
        groups = [
            {"params": list(self.actor.mean_net.parameters())},
            {"params": [self.actor.log_std], "lr": lr_log_std},
        ]
        # fused: one kernel per parameter group instead of ~10 per tensor (the same Adam, to float rounding);
        # benchmarks/results/agent_update_cost_hopper_fused.json
        self.actor_optim = torch.optim.Adam(groups, lr=config.lr_actor, eps=1e-5, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic, eps=1e-5, fused=True)
        self._base_lrs = [[group["lr"] for group in optim.param_groups] for optim in self._optimizers()]
        self.num_updates = 0

    def _optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.actor_optim, self.critic_optim

    def set_lr_scale(self, scale: float) -> None:
        """Set every learning rate (actor mean, log-std, critic) to ``scale`` times its configured value."""
        if not 0.0 <= scale <= 1.0:
            raise ValueError(f"lr scale must be in [0, 1], got {scale}")
        for optim, base in zip(self._optimizers(), self._base_lrs):
            for group, lr in zip(optim.param_groups, base):
                group["lr"] = lr * scale

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: ArrayLike, deterministic: bool = False, averaged: bool | None = None) -> np.ndarray:
        """``N x S`` (or ``S``) observations -> ``N x A`` (or ``A``) float32 actions clipped to the bounds.

        ``deterministic=True`` returns the (clipped) mean action, for evaluation. ``averaged``: act with the averaged
        actor (``config.actor_average``) or the online one; None: the averaged one when deterministic and kept.
        """
        if averaged and self.averaged_actor is None:
            raise ValueError("averaged=True needs an averaged actor: build the agent with A2CConfig(actor_average=0.995)")
        use_average = (deterministic and self.averaged_actor is not None) if averaged is None else averaged
        actor = self.averaged_actor.module if use_average else self.actor
        x = _as_tensor(obs, self.device, torch.float32)
        single = x.ndim == 1
        dist = actor(x[None] if single else x)
        action = dist.mean if deterministic else dist.sample()
        action = torch.clamp(action, self.action_low, self.action_high)
        return (action[0] if single else action).cpu().numpy()

    def set_obs_statistics(self, mean: ArrayLike, std: ArrayLike) -> None:
        """Set the networks' observation normalization (``S`` each), e.g. from the real dataset.

        Meant for ``obs_norm="fixed"``; with ``"running"`` the next update overwrites it.
        """
        mean_t = _as_tensor(mean, self.device, torch.float32).reshape(self.obs_dim)
        std_t = _as_tensor(std, self.device, torch.float32).reshape(self.obs_dim).clamp_min(self.config.obs_min_std)
        for net in self._networks():
            net.obs_norm.set(mean_t, std_t)

    # ------------------------------------------------------------------ updates
    def update(self, segments: ImaginedSegments) -> dict[str, float]:
        """One A2C update on imagined segments (batch-major, see :class:`ImaginedSegments`) -> metrics.

        Metrics: ``actor_loss``, ``critic_loss`` (PopArt-normalized units), ``value_mse`` (real units),
        ``explained_variance``, ``entropy``, ``std`` (mean action std), ``advantage_mean`` (before
        normalization), ``return_mean``, ``value_mean``, ``actor_grad_norm``/``critic_grad_norm``
        (before clipping), ``policy_change`` (mean |Δ log π(a|s)| of the step).
        """
        return self._update(**self._segment_rows(segments))

    def update_critic(self, segments: ImaginedSegments) -> dict[str, float]:
        """One critic regression step on λ-returns of segments (e.g. real ones from the dataset); the actor is untouched.

        The returns come from the segments' own rewards and terminations with the target critic's bootstraps, as in
        :meth:`update` (which alone moves the target critic towards the online one). Metrics carry a ``real_`` prefix: ``real_critic_loss``, ``real_value_mse``,
        ``real_explained_variance``, ``real_critic_grad_norm``, ``real_value_mean``.
        """
        rows = self._segment_rows(segments)
        return self._critic_update(rows["obs"], rows["rewards"], rows["next_obs"], rows["terminated"], rows["episode_end"], rows["valid"])

    def update_critic_from_transitions(
        self, obs: ArrayLike, rewards: ArrayLike, next_obs: ArrayLike, terminated: ArrayLike, truncated: ArrayLike
    ) -> dict[str, float]:
        """One critic regression step on λ-returns of ``T x N`` time-major transitions (as :meth:`update_from_transitions`
        takes them, e.g. whole real episodes laid end to end); the actor is untouched. Metrics as :meth:`update_critic`."""
        term = _as_tensor(terminated, self.device, torch.bool)
        end = term | _as_tensor(truncated, self.device, torch.bool)
        obs_t, next_t, rewards_t = (_as_tensor(x, self.device, torch.float32) for x in (obs, next_obs, rewards))
        return self._critic_update(obs_t, rewards_t, next_t, term, end, torch.ones_like(term))

    def _critic_update(self, obs: Tensor, rewards: Tensor, next_obs: Tensor, terminated: Tensor, episode_end: Tensor, valid: Tensor) -> dict[str, float]:
        """λ-returns from the target (or online) critic, then one regression step on the valid rows; ``real_`` metrics."""
        _, returns = self.value_targets(obs, rewards, next_obs, terminated, episode_end)
        metrics = self._critic_step(obs[valid], returns[valid])
        return {f"real_{k}": v for k, v in metrics.items()}

    def _segment_rows(self, segments: ImaginedSegments) -> dict[str, Tensor]:
        """Batch-major segments -> the time-major ``T x N`` tensors of :meth:`_update` (shapes checked)."""
        states = _as_tensor(segments.states, self.device, torch.float32)
        actions = _as_tensor(segments.actions, self.device, torch.float32)
        rewards = _as_tensor(segments.rewards, self.device, torch.float32)
        terminated = _as_tensor(segments.terminations, self.device, torch.bool)
        b, h = rewards.shape
        expected = {"states": (b, h + 1, self.obs_dim), "actions": (b, h, self.act_dim), "terminations": (b, h)}
        for name, tensor in (("states", states), ("actions", actions), ("terminations", terminated)):
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(
                    f"segments.{name} has shape {tuple(tensor.shape)}; with rewards B x H = {b} x {h} "
                    f"it must be {expected[name]} (states hold s_0..s_H)"
                )
        tm = _time_major
        return dict(
            obs=tm(states[:, :-1]),
            actions=tm(actions),
            rewards=tm(rewards),
            next_obs=tm(states[:, 1:]),
            terminated=tm(terminated),
            episode_end=tm(terminated),  # the segment's last step is a truncation by construction
            valid=tm(alive_mask(terminated)),  # what a model imagines after a terminal state is not data
        )

    def update_from_transitions(
        self,
        obs: ArrayLike,
        actions: ArrayLike,
        rewards: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        truncated: ArrayLike,
        valid: ArrayLike | None = None,
    ) -> dict[str, float]:
        """One A2C update on ``T x N`` vector-env rollouts (time-major) -> metrics.

        Row t of env n is the transition ``obs[t] -actions[t]-> (rewards[t], next_obs[t])``;
        ``next_obs[t]`` is the true next observation, i.e. the final observation when the episode
        ended at t (Gymnasium ``info["final_obs"]`` with same-step autoreset), so a truncation
        bootstraps from ``V(next_obs[t])`` and a termination from 0. The last row is treated as a
        truncation. ``valid`` (``T x N`` bool) drops rows from the loss, e.g. the reset steps of
        next-step autoreset, whose action is ignored by the env.

        :param obs: ``T x N x S`` observations.
        :param actions: ``T x N x A`` actions as sampled (before the env's clipping).
        :param rewards: ``T x N``.
        :param next_obs: ``T x N x S``.
        :param terminated: ``T x N`` bool.
        :param truncated: ``T x N`` bool.
        :param valid: ``T x N`` bool or None (all rows valid).
        """
        terminated_t = _as_tensor(terminated, self.device, torch.bool)
        truncated_t = _as_tensor(truncated, self.device, torch.bool)
        valid_t = torch.ones_like(terminated_t) if valid is None else _as_tensor(valid, self.device, torch.bool)
        return self._update(
            obs=_as_tensor(obs, self.device, torch.float32),
            actions=_as_tensor(actions, self.device, torch.float32),
            rewards=_as_tensor(rewards, self.device, torch.float32),
            next_obs=_as_tensor(next_obs, self.device, torch.float32),
            terminated=terminated_t,
            episode_end=terminated_t | truncated_t,
            valid=valid_t,
        )

    @torch.no_grad()
    def value_targets(
        self, obs: Tensor, rewards: Tensor, next_obs: Tensor, terminated: Tensor, episode_end: Tensor
    ) -> tuple[Tensor, Tensor]:
        """GAE advantages and λ-returns (``T x N`` each) from the target (or online) critic.

        ``obs``/``next_obs`` ``T x N x S``; ``rewards``/``terminated``/``episode_end`` ``T x N`` (see :func:`gae`).
        """
        critic = self.target_critic if self.target_critic is not None else self.critic
        values = critic(obs)
        cfg = self.config
        return gae(rewards, values, next_state_values(critic, obs, next_obs, values), terminated, episode_end, cfg.gamma, cfg.gae_lambda)

    def _update(
        self,
        *,
        obs: Tensor,
        actions: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        terminated: Tensor,
        episode_end: Tensor,
        valid: Tensor,
    ) -> dict[str, float]:
        """The shared update on time-major ``T x N`` tensors already on the device."""
        cfg = self.config
        if not bool(valid.any()):
            raise ValueError("the batch has no valid transition to learn from")
        if cfg.obs_norm == "running":
            self.obs_moments.update(obs[valid])
            self.set_obs_statistics(self.obs_moments.mean, self.obs_moments.std(cfg.obs_min_std))
        advantages, returns = self.value_targets(obs, rewards, next_obs, terminated, episode_end)
        obs, actions, advantages, returns = obs[valid], actions[valid], advantages[valid], returns[valid]
        if cfg.value_norm:
            self._update_value_statistics(returns)
        summary = {"advantage_mean": float(advantages.mean()), "return_mean": float(returns.mean())}
        if cfg.advantage_clip is not None:
            advantages = clip_to_robust_range(advantages, cfg.advantage_clip)
        if cfg.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        with torch.no_grad():
            old_log_prob = self.actor(obs).log_prob(actions)
        steps = [rows for _ in range(cfg.epochs) for rows in self._minibatches(len(obs), obs.device)]
        for rows in steps:
            report = self._minibatch_step(obs[rows], actions[rows], advantages[rows], old_log_prob[rows], returns[rows])
        metrics = report()  # the last step's metrics, computed once
        metrics["policy_change"] = self._policy_change(obs, actions, old_log_prob)
        if self.target_critic is not None:
            with torch.no_grad():
                for target, online in zip(self.target_critic.parameters(), self.critic.parameters()):
                    target.lerp_(online, 1.0 - cfg.target_ema)
        if self.averaged_actor is not None:
            self.averaged_actor.update_parameters(self.actor)
        self.num_updates += 1
        return metrics | summary

    def _minibatches(self, n: int, device: torch.device) -> list[slice] | tuple[Tensor, ...]:
        """Row selections of one pass over ``n`` transitions: the whole batch (no shuffle, no draw from torch's
        RNG) or ``config.minibatches`` shuffled parts."""
        if self.config.minibatches == 1:
            return [slice(None)]
        return torch.randperm(n, device=device).tensor_split(min(self.config.minibatches, n))

    def _minibatch_step(
        self, obs: Tensor, actions: Tensor, adv: Tensor, old_log_prob: Tensor, returns: Tensor
    ) -> Callable[[], dict[str, float]]:
        """One actor and one critic step on a minibatch -> a thunk that computes the step's metrics.

        ``N x S`` obs, ``N x A`` actions, ``N`` (normalized) advantages, the ``N`` log-probs of the policy before the
        batch's first step (for the clipped surrogate) and ``N`` λ-returns. The two networks share no parameter, so
        one backward pass through the summed losses gives each exactly its own gradient; each is clipped and stepped
        with its own optimizer."""
        cfg = self.config
        dist = self.actor(obs)
        log_prob = dist.log_prob(actions)
        entropy = dist.entropy().mean()
        if cfg.clip_ratio is None:
            surrogate = log_prob * adv
        else:
            ratio = torch.exp(log_prob - old_log_prob)
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - cfg.clip_ratio, 1.0 + cfg.clip_ratio) * adv)
        actor_loss = -surrogate.mean() - cfg.entropy_weight * entropy
        critic_loss, values = self._critic_loss(obs, returns)
        for optim in self._optimizers():
            optim.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        actor_norm = self._clipped_step(self.actor_optim, self.actor.parameters(), cfg.max_grad_norm_actor)
        critic_norm = self._clipped_step(self.critic_optim, self.critic.parameters(), cfg.max_grad_norm_critic)

        def report() -> dict[str, float]:
            return {
                "actor_loss": float(actor_loss.detach()),
                "entropy": float(entropy.detach()),
                "std": float(dist.stddev.detach().mean()),
                "actor_grad_norm": float(actor_norm),
            } | self._critic_metrics(critic_loss, values, returns, critic_norm)

        return report

    @staticmethod
    def _clipped_step(optim: torch.optim.Optimizer, params: Iterable[Tensor], max_norm: float) -> Tensor:
        """Clip the gradients of ``params`` to ``max_norm`` (global norm), step ``optim`` -> the norm before clipping."""
        grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
        optim.step()
        return grad_norm

    @torch.no_grad()
    def _policy_change(self, obs: Tensor, actions: Tensor, old_log_prob: Tensor) -> float:
        """Mean |Δ log π(a|s)| over the whole update, the reference's line-search target."""
        return float((self.actor(obs).log_prob(actions) - old_log_prob).abs().mean())

    def _critic_loss(self, obs: Tensor, returns: Tensor) -> tuple[Tensor, Tensor]:
        """Regression loss of the online critic on ``N`` λ-returns (PopArt-normalized units) and its ``N`` real-unit values."""
        mean, std = self.critic.value_mean, self.critic.value_std
        prediction = self.critic.normalized(obs)
        loss = 0.5 * ((returns - mean) / std - prediction).square().mean()
        return loss, prediction.detach() * std + mean

    @staticmethod
    def _critic_metrics(loss: Tensor, values: Tensor, returns: Tensor, grad_norm: Tensor) -> dict[str, float]:
        return {
            "critic_loss": float(loss.detach()),
            "value_mse": float((returns - values).square().mean()),  # real units, before the step
            "explained_variance": explained_variance(values, returns),
            "critic_grad_norm": float(grad_norm),
            "value_mean": float(values.mean()),
        }

    def _critic_step(self, obs: Tensor, returns: Tensor) -> dict[str, float]:
        """Regression step of the online critic alone on ``N`` λ-returns -> metrics."""
        loss, values = self._critic_loss(obs, returns)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self._clipped_step(self.critic_optim, self.critic.parameters(), self.config.max_grad_norm_critic)
        return self._critic_metrics(loss, values, returns, grad_norm)

    @torch.no_grad()
    def _update_value_statistics(self, returns: Tensor) -> None:
        """EMA of the return mean and second moment -> PopArt rescale of the critic (and its target)."""
        cfg = self.config
        rate = 1.0 if self.num_updates == 0 else cfg.value_norm_rate
        mean_old, std_old = self.critic.value_mean, self.critic.value_std
        mean = torch.lerp(mean_old, returns.mean(), rate)
        second = torch.lerp(std_old.square() + mean_old.square(), returns.square().mean(), rate)
        std = (second - mean.square()).clamp_min(0.0).sqrt().clamp_min(cfg.value_norm_min_std)
        for critic in self._critics():
            critic.set_value_statistics(mean, std)

    # ------------------------------------------------------------------ checkpoints
    def _critics(self) -> list[ValueCritic]:
        return [self.critic] + ([self.target_critic] if self.target_critic is not None else [])

    def _networks(self) -> list[nn.Module]:
        return [self.actor, *self._critics()]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, target, optimizers, statistics, update count, config."""
        return {
            "config": asdict(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": None if self.target_critic is None else self.target_critic.state_dict(),
            "obs_moments": self.obs_moments.state_dict(),
            "averaged_actor": None if self.averaged_actor is None else self.averaged_actor.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (tensors may come from another device)."""
        if (state["target_critic"] is None) != (self.target_critic is None):
            raise ValueError(
                "checkpoint and agent disagree on the target critic: build the agent with the "
                f"checkpoint's config (target_ema={state['config'].get('target_ema')})"
            )
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.target_critic is not None:
            self.target_critic.load_state_dict(state["target_critic"])
        self.obs_moments.load_state_dict(state["obs_moments"])
        if self.averaged_actor is not None:
            if state.get("averaged_actor") is None:
                raise ValueError(
                    "the checkpoint has no averaged actor to restore: build the agent with the checkpoint's config "
                    f"(actor_average={state['config'].get('actor_average')})"
                )
            self.averaged_actor.load_state_dict(state["averaged_actor"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.num_updates = int(state["num_updates"])
