"""Fitting a WorldModel: the masked L2 denoising loss (paper eq. 6), the mask mix, Adam and EMA.

Each batch element gets one of two known/unknown patterns, exactly those used at sampling time, and the loss
is taken on the unknown entries only (a prototype measured before this package found both necessary):

- joint (fraction ``config.joint_fraction``): s_0 known, all H actions known — PolyGRAD/Algorithm 2;
- closed-loop prefix, k ~ U{0..H-1}: s_0..s_k, r_0..r_{k-1} and a_0..a_k known — a DreamEnv step
  after the caller gave a_k.

Known entries of x_t are replaced by their clean values before the network sees them (WorldModel.predict_x0).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from einops import rearrange
from tqdm.auto import tqdm

from agd_envs.batch import SegmentBatch
from agd_envs.diffusion import NoiseSchedule, q_sample
from agd_envs.distributed import Distributed
from agd_envs.normalization import HasStatistics
from agd_envs.reward_head import reward_head_loss
from agd_envs.segments import SegmentLayout, encode_segment
from agd_envs.tasks import get_task
from agd_envs.world_model import WorldModel, WorldModelConfig


class SegmentSource(Protocol):
    """What ``fit`` needs from a dataset (agd_envs.datasets.EpisodeDataset satisfies it)."""

    def statistics(self) -> HasStatistics: ...

    def sample_segments(
        self, batch_size: int, horizon: int, *, generator: torch.Generator | None = None, device: Any = None
    ) -> SegmentBatch: ...


def training_masks(
    layout: SegmentLayout, batch_size: int, joint_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mix of the joint and closed-loop prefix patterns -> (known ``B x Dx``, action ``B x H``) bool."""
    horizon = layout.horizon
    joint = torch.rand(batch_size, generator=generator) < joint_fraction
    k = torch.randint(0, horizon, (batch_size,), generator=generator)
    num_states = torch.where(joint, torch.ones_like(k), k + 1)
    num_actions = torch.where(joint, torch.full_like(k, horizon), k + 1)
    return layout.known_mask(num_states), layout.action_mask(num_actions)


def loss_weight(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor, config: WorldModelConfig) -> torch.Tensor:
    """Per-sample weight ``B x 1`` of the squared error: 1, or min-SNR-gamma for the chosen target."""
    if config.loss_weighting == "none":
        return torch.ones_like(like[:, :1])
    ab = schedule.at(t, like)
    snr = ab / (1.0 - ab).clamp_min(1e-12)
    clipped = snr.clamp_max(config.min_snr_gamma)
    # x0-target error = SNR x eps-target error, so min(SNR, g) on x0 equals min(SNR, g)/SNR on eps.
    if config.prediction == "eps":
        return clipped / snr.clamp_min(1e-12)
    return clipped / config.min_snr_gamma


def diffusion_loss(
    model: WorldModel, batch: SegmentBatch, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Masked L2 denoising loss of ``model.network`` on one batch of real-unit segments (scalar).

    With a reward head, its MSE on the batch's real transitions is added (one optimizer for both).
    """
    config, layout, norm = model.config, model.layout, model.normalizer
    device = model.device
    real_states, real_actions = batch.states.to(device), batch.actions.to(device)
    actions = norm.normalize_actions(real_actions)
    x0 = encode_segment(layout, norm, real_states, batch.rewards.to(device) - model.control_rewards(real_actions))
    rewards = layout.unpack(x0)[1]  # normalized, for the reward head and the dynamics prior
    b = x0.shape[0]
    known_mask, action_mask = (m.to(device) for m in training_masks(layout, b, config.joint_fraction, generator))
    t = torch.randint(0, config.diffusion_steps, (b,), generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    x_t = q_sample(model.schedule, x0, t, noise)
    raw, x0_hat = model.predict_x0(model.network, x_t, t, actions, action_mask, x0, known_mask)
    prediction, target = (x0_hat, x0) if config.prediction == "x0" else (raw, noise)
    unknown = (~known_mask).to(x0.dtype)
    weight = loss_weight(model.schedule, t, x0, config) * entry_weights(layout, config.reward_weight, x0)
    loss = (weight * unknown * (prediction - target).square()).sum() / unknown.sum().clamp_min(1.0)
    if model.reward_head is not None:
        loss = loss + reward_head_loss(model.reward_head, norm.normalize_states(real_states), actions, rewards)
    if config.dynamics_prior:
        loss = loss + model.network.prior.loss(norm.normalize_states(real_states), actions, rewards,
                                                  config.prior_rollout_weight)
    return loss


MOMENT_SEGMENTS = 4096
"""Segments sampled to estimate the moments the dataset's statistics do not hold (see ``fit_segment_moments``)."""


@torch.no_grad()
def fit_segment_moments(model: WorldModel, dataset: SegmentSource, generator: torch.Generator | None) -> None:
    """Fit the normalizer moments that only segments give: the modelled rewards' and the per-step changes'.

    Under ``known_action_cost`` the reward moments become those of ``r - control_reward(a)``, the rewards
    the network models: the dataset's statistics describe r, and z-scoring the residual with them would
    shrink it where the control cost carries most of the spread (Reacher: r's std is several times the
    residual's). Under ``delta_states`` the change moments are those of s_{t+1} - s_t; under ``dynamics_prior``
    the prior's, of the normalized states' one-step changes. None of these: no-op
    (and ``generator`` is left untouched).
    """
    config, norm = model.config, model.normalizer
    if not (config.known_action_cost or config.delta_states or config.dynamics_prior):
        return
    size = config.batch_size  # in training-sized batches: a source may serve no larger ones
    batches = [dataset.sample_segments(size, config.horizon, generator=generator)
               for _ in range(-(-MOMENT_SEGMENTS // size))]  # fmt: skip
    if config.known_action_cost:
        residual = torch.cat([(b.rewards - model.control_rewards(b.actions)).double().flatten() for b in batches])
        norm.rew_mean.copy_(residual.mean())
        norm.rew_std.copy_(residual.std().clamp_min(norm.min_std))
    if config.delta_states:
        changes = torch.cat([b.states[:, 1:] - b.states[:, :-1] for b in batches], dim=0)
        norm.fit_deltas(rearrange(changes, "b h s -> (b h) s"))
    if config.dynamics_prior:
        z = norm.normalize_states(torch.cat([b.states for b in batches]))
        changes = rearrange(z[:, 1:] - z[:, :-1], "b h s -> (b h) s")
        for network in (model.network, model.ema_network):
            network.prior.fit_moments(changes, norm.min_std, states=z)


def entry_weights(layout: SegmentLayout, reward_weight: float, like: torch.Tensor) -> torch.Tensor:
    """``Dx`` loss weight per entry of x: 1 on states, ``reward_weight`` on rewards."""
    state = layout.state_mask(like.device).to(like.dtype)
    return state + (1.0 - state) * reward_weight


@dataclass(frozen=True)
class SpikeGuard:
    """When ``WorldModelTrainer.step`` refuses an update: its loss is not finite, or above ``factor`` times the
    median of the last ``window`` accepted losses (once ``min_history`` of them exist).

    A refused update changes nothing (no gradient step, no EMA update, ``num_updates`` unchanged) and is
    counted in ``WorldModelTrainer.skipped_updates``. Why: one update on a batch whose loss is 1e9 times the
    usual (a HalfCheetah run's loss went from 0.095 to 8.8e7 for one refit, agd_envs/dynamics_prior.py)
    leaves Adam's moments and the EMA weights that imagination samples from damaged for hundreds of updates;
    ``grad_clip`` bounds the step's size but not its direction. ``factor=inf`` turns the guard off.
    """

    factor: float = 100.0
    window: int = 200
    min_history: int = 20


class WorldModelTrainer:
    """The training state of one WorldModel: its AdamW optimizer and the EMA update of its sampling weights.

    The model holds only what sampling needs (network, EMA network, normalizer, config); whatever updates
    the weights lives here, so repeated ``fit`` calls on one trainer continue the optimizer's moments
    (periodic refits, ``RealEnvCollector.refit``) and a run checkpoint saves ``state_dict()`` beside the model.

    With ``distributed`` spanning several processes (agd_envs.distributed), ``fit``'s batch is the global one:
    each rank draws its share with its own generator, gradients are averaged across ranks before clipping,
    and rank 0's weights and normalizer are broadcast at the start and after every normalizer refit.
    """

    def __init__(self, model: WorldModel, distributed: Distributed | None = None, spike_guard: SpikeGuard | None = None) -> None:
        self.model = model
        self.distributed = distributed or Distributed()
        self.spike_guard = spike_guard or SpikeGuard()
        self.skipped_updates = 0
        self._accepted: deque[float] = deque(maxlen=self.spike_guard.window)
        self.optimizer = torch.optim.AdamW(  # fused: one kernel for all tensors (1.1x per model update on CPU)
            model.trainable_parameters(), lr=model.config.lr, weight_decay=model.config.weight_decay, fused=True
        )
        self.distributed.broadcast_modules(model)
        self._gradient_hooks = self.distributed.average_gradients(model.trainable_parameters())

    def fit(
        self,
        dataset: SegmentSource,
        steps: int,
        *,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        log_every: int = 100,
        callback: Callable[[dict[str, float]], bool | None] | None = None,
        max_seconds: float | None = None,
        update_normalizer: bool = True,
    ) -> list[dict[str, float]]:
        """Train the model for ``steps`` updates (or until ``max_seconds``); return the loss log.

        Normalization: with ``update_normalizer`` (default) the normalizer is refit from
        ``dataset.statistics()`` — all of the dataset's data — at the start of every call, as PolyGRAD
        refits on all data; the network then adapts during the updates that follow.

        :param batch_size: segments per update (default ``config.batch_size``).
        :param generator: CPU generator for segments, masks, steps and noise (reproducible fits).
        :param log_every: updates per log record ``{"step", "loss", "seconds", "skipped"}`` (loss averaged over
            them, ``skipped`` the trainer's refused updates so far: ``SpikeGuard``).
        :param callback: called with each log record; returning True stops training.
        :param max_seconds: wall-clock budget; training stops at the first update past it.
        """
        model, config, ranks = self.model, self.model.config, self.distributed
        if ranks.enabled and (callback is not None or max_seconds is not None):
            raise ValueError("callback and max_seconds stop ranks at different updates; a distributed fit takes a fixed number of steps")
        batch_size = ranks.share(batch_size or config.batch_size, "batch_size")
        if update_normalizer:
            model.normalizer.fit(dataset.statistics())
            if ranks.is_main:  # the other ranks receive rank 0's moments; their generators stay untouched
                fit_segment_moments(model, dataset, generator)
            ranks.broadcast_modules(model)
        self._move_optimizer_state()
        model.network.train()
        log: list[dict[str, float]] = []
        start, running, count = time.perf_counter(), 0.0, 0
        bar = tqdm(range(steps), desc="fit world model", disable=not (progress and ranks.is_main), dynamic_ncols=True)
        for i in bar:
            batch = dataset.sample_segments(batch_size, config.horizon, generator=generator, device=model.device)
            running, count = running + self.step(batch, generator), count + 1
            elapsed = time.perf_counter() - start
            out_of_time = max_seconds is not None and elapsed >= max_seconds
            if count == log_every or i == steps - 1 or out_of_time:
                record = {"step": float(int(model.num_updates)), "loss": running / count, "seconds": elapsed,
                          "skipped": float(self.skipped_updates)}
                log.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                running, count = 0.0, 0
                if (callback is not None and callback(record)) or out_of_time:
                    break
        bar.close()
        model.network.eval()
        return log

    def step(self, batch: SegmentBatch, generator: torch.Generator | None = None) -> float:
        """One update on ``batch``: loss, clipped gradient step, EMA update; returns the loss (averaged over ranks).

        An update whose loss ``SpikeGuard`` refuses is skipped (counted in ``skipped_updates``) and its loss is
        returned all the same, so a log shows the spike.
        """
        model = self.model
        loss = diffusion_loss(model, batch, generator)
        value = self.distributed.mean(loss.item())  # every rank takes the same decision
        if self._refuses(value):
            self.skipped_updates += 1
            return value
        self._accepted.append(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if model.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), model.config.grad_clip)
        self.optimizer.step()
        self.update_ema()
        model.num_updates += 1
        return value

    def _refuses(self, loss: float) -> bool:
        """Whether ``SpikeGuard`` refuses an update with this loss."""
        guard = self.spike_guard
        if not math.isfinite(loss):
            return True
        return len(self._accepted) >= guard.min_history and loss > guard.factor * statistics.median(self._accepted)

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of the network weights with warm-up: decay = min(config.ema_decay, (1+n)/(10+n))."""
        model = self.model
        n = int(model.num_updates)
        decay = min(model.config.ema_decay, (1.0 + n) / (10.0 + n))
        ema = list(model.ema_network.parameters())
        torch._foreach_lerp_(ema, list(model.network.parameters()), 1.0 - decay)
        for e, p in zip(model.ema_network.buffers(), model.network.buffers()):
            e.copy_(p)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state and the refused-update count (the EMA's step count is the model's ``num_updates``, saved with its weights)."""
        return {"optimizer": self.optimizer.state_dict(), "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.skipped_updates = int(state.get("skipped_updates", 0))  # absent from checkpoints of older versions

    def _move_optimizer_state(self) -> None:
        """Moments created before a ``model.to(device)`` stay behind; move them along with the parameters."""
        device = self.model.device
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.device != device and key != "step":
                    state[key] = value.to(device)


def fit_main(
    task: str, dataset: str, preset: str, steps: int, out: str, seed: int, device: str, reward_head: bool = False,
    model_overrides: dict[str, Any] | None = None, distributed: Distributed | None = None,
) -> Path:
    """``agd fit``: train a ``preset`` world model for ``task`` on the dataset at ``dataset``, save to ``out``.

    ``model_overrides`` set ``WorldModelConfig`` fields of the preset; under ``distributed`` every rank fits
    its share of each global batch and rank 0 saves.
    """
    from agd_envs.datasets import EpisodeDataset

    data = EpisodeDataset.open(dataset)
    wanted, found = get_task(task), get_task(data.task)
    if wanted.name != found.name:
        raise ValueError(f"dataset {dataset} holds {found.name} data, not {wanted.name}; pass --task {found.name}")
    ranks = distributed or Distributed()
    torch.manual_seed(seed)
    config = WorldModelConfig.preset(preset, wanted, **{"reward_head": reward_head, **(model_overrides or {})})
    model = WorldModel(config).to(device)
    generator = torch.Generator().manual_seed(ranks.seed(seed))
    log = WorldModelTrainer(model, ranks).fit(data, steps, generator=generator)
    path = Path(out)
    if ranks.is_main:
        model.save(out)
        print(f"saved {path} after {int(model.num_updates)} updates, final loss {log[-1]['loss']:.4f}")
    ranks.barrier()  # every rank returns once the checkpoint exists
    return path
