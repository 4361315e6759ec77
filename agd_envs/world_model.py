"""The diffusion world model: configuration, the ``denoise`` contract, EMA weights, save and load.

A ``WorldModel`` holds everything needed to turn a noisy segment into an x0 estimate: the task, the
segment layout, the normalizer (buffers), the noise schedule, the denoiser network and its EMA copy.
Sampling (agd_envs/sampling.py) and training (agd_envs/training.py, whose ``WorldModelTrainer`` owns the
optimizer and the EMA update) live elsewhere and only use ``denoise`` and the attributes below.

Checkpoint directory: ``config.json`` (``format_version``, task, config fields, checksums) and ``weights.pt``
(a state_dict of plain tensors: network, EMA network, normalizer; loaded with ``weights_only=True``).
``weights_sha256`` is the sha256 of weights.pt's bytes and ``config_sha256`` that of the effective config
and the weights' digest, so flipped bits in either file raise CheckpointError instead of loading quietly.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from agd_envs.denoiser import SegmentDenoiser
from agd_envs.diffusion import NoiseSchedule, cosine_schedule, x0_from_eps
from agd_envs.dynamics_prior import DynamicsPrior, PriorResidualDenoiser
from agd_envs.normalization import Normalizer
from agd_envs.reward_head import RewardHead
from agd_envs.segments import SegmentLayout
from agd_envs.tasks import Task, get_task

FORMAT_VERSION = 2
"""Version written to ``config.json``; ``load`` refuses newer versions. 2: ``weights_sha256`` and
``config_sha256``, which ``load`` verifies (version 1 checkpoints load unverified)."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


class CheckpointError(ValueError):
    """A world-model checkpoint directory cannot be loaded; the message names the path and the fix."""


@dataclass
class WorldModelConfig:
    """Everything that defines a world model's network, diffusion and training. JSON-serialisable."""

    task: str
    """Task short name (``Hopper``); fixes obs/action sizes through agd_envs.tasks."""
    horizon: int = 10
    """Segment length H: the model denoises s_0..s_H and r_0..r_{H-1} (paper and PolyGRAD: 10)."""
    diffusion_steps: int = 128
    """Training diffusion steps N of the cosine schedule (PolyGRAD: 128)."""
    sampling_steps: int = 8
    """Default number of reverse steps a sampler takes (a subset of the N steps)."""
    schedule_temperature: float = 1.0
    """tau of alpha_bar(u) = cos(u pi/2)^(2 tau); PolyGRAD uses 0.1 for Hopper, 1.0 elsewhere."""
    width: int = 1024
    """Hidden width of the residual MLP."""
    depth: int = 6
    """Number of residual blocks."""
    embed_dim: int = 128
    """Size of the diffusion-step embedding."""
    time_embedding: str = "learned"
    """``learned`` (nn.Embedding table + MLP) or ``fourier`` (fixed random features + MLP)."""
    time_injection: str = "block"
    """Where the step embedding enters: ``block`` (every residual block) or ``input`` (once)."""
    prediction: str = "x0"
    """Network target: ``x0`` (PolyGRAD) or ``eps``; ``denoise`` returns an x0 estimate either way."""
    anchor_states: bool = False
    """x0-prediction only: the network predicts every state as an offset from the first state s_0 (always
    known), so "the state stays constant" is the zero output. Offsets from the *latest* known state
    compound in a closed loop, where that state is imagined: measured on held-out Hopper windows
    (tests/test_fidelity.py), closed-loop MSE / open-loop MSE reached 4.7 at t=6 with latest-state
    anchors and stays <= 0.94 at every step with s_0 anchors (0.93 without anchors)."""
    delta_states: bool = False
    """Denoise each step's change s_t - s_{t-1}, z-scored with the changes' own statistics, instead of the
    z-scored states themselves (agd_envs/normalization.py; the states are the changes summed up from
    s_0). Mutually exclusive with ``anchor_states`` (zero change is already the "state stays" output)."""
    dynamics_prior: bool = False
    """Add a one-step dynamics MLP that the denoiser corrects: the x0 estimate is the MLP's rollout over the
    segment (from the known states, under the given actions) plus the denoiser's output, and the denoiser
    sees the rollout as input (agd_envs/dynamics_prior.py). Needs x0-prediction and the plain encoding.
    On in the ``cpu`` preset; the ``paper`` preset stays the paper's model."""
    prior_width: int = 256
    """Hidden width of the dynamics prior's three layers (with ``dynamics_prior``)."""
    prior_rollout_weight: float = 0.0
    """Weight of the prior's H-step rollout error in its loss, beside the teacher-forced one-step error
    (``DynamicsPrior.loss``; 0: one-step only, as trained before this field existed)."""
    loss_weighting: str = "none"
    """``none`` (plain L2 of paper eq. 6 on the chosen target) or ``min_snr`` (Hang et al. 2023)."""
    min_snr_gamma: float = 5.0
    """gamma of the min-SNR weighting (only with ``loss_weighting="min_snr"``)."""
    reward_weight: float = 1.0
    """Loss weight of each reward entry relative to a state entry. Rewards are H of the (H+1)*S + H
    entries (10 of 120 for Hopper), so with weight 1 the network all but ignores them."""
    lr: float = 3e-4
    """Adam learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    batch_size: int = 256
    """Segments per training step."""
    ema_decay: float = 0.999
    """Per-update EMA decay of the sampling weights (warmed up as min(decay, (1+n)/(10+n)))."""
    joint_fraction: float = 0.5
    """Fraction of each batch trained on the joint pattern (s_0 and all H actions known); the rest on
    the closed-loop prefix pattern (s_0..s_k, r_0..r_{k-1}, a_0..a_k known, k ~ U{0..H-1})."""
    dtype: str = "float32"
    """Compute dtype of the network: ``float32``, or ``bfloat16`` (autocast, CUDA only; weights stay float32)."""
    reward_head: bool = False
    """Predict each reward from its transition (s_t, a_t, s_{t+1}) with a separate MLP trained beside the
    denoiser (agd_envs/reward_head.py) instead of using the denoised reward entries. Off by default (the
    paper denoises rewards jointly); on, it restores the action's cost that the denoised rewards miss."""
    known_action_cost: bool = False
    """Model only the part of each reward that the action's control cost does not explain: the network
    (and a reward head) learns ``r_t - task.control_reward(a_t)``, and the sampler adds the exact term
    ``-c |clip(a_t)|^2`` of the actions it imagines back (``WorldModel.control_rewards``). The v5 rewards
    are ``(terms of the state) - c |a|^2`` with a known c, so nothing is lost; without it the denoised
    HalfCheetah rewards price a saturated action at -0.11 per step against the real -0.58
    (benchmarks/reward_fidelity.py) and policies learn to saturate in imagination. On in both presets."""

    def __post_init__(self) -> None:
        get_task(self.task)  # raises with a suggestion on a typo
        choices = {
            "time_embedding": ("learned", "fourier"),
            "time_injection": ("block", "input"),
            "prediction": ("x0", "eps"),
            "loss_weighting": ("none", "min_snr"),
            "dtype": ("float32", "bfloat16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"WorldModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 1 <= self.sampling_steps <= self.diffusion_steps:
            raise ValueError(
                f"sampling_steps must be in 1..diffusion_steps={self.diffusion_steps}, got {self.sampling_steps}"
            )
        if self.anchor_states and self.prediction != "x0":
            raise ValueError("anchor_states=True needs prediction='x0' (it offsets the x0 estimate)")
        if self.dynamics_prior and (self.prediction != "x0" or self.anchor_states or self.delta_states):
            raise ValueError(
                "dynamics_prior needs prediction='x0', anchor_states=False and delta_states=False (the prior's rollout "
                "is the anchor the network's output is added to)"
            )
        if self.anchor_states and self.delta_states:
            raise ValueError(
                "anchor_states and delta_states are exclusive: with delta_states the network already predicts "
                "changes from the previous state; pass anchor_states=False"
            )
        if self.reward_weight < 0:
            raise ValueError(f"reward_weight must be >= 0, got {self.reward_weight}")
        if not 0.0 <= self.joint_fraction <= 1.0:
            raise ValueError(f"joint_fraction must be in [0, 1], got {self.joint_fraction}")

    @classmethod
    def preset(cls, name: str, task: str | Task, **overrides: Any) -> "WorldModelConfig":
        """Named configurations: ``paper`` (PolyGRAD sizes) and ``cpu`` (fits usefully in ~3 min on 2 cores).

        ``paper``: H=10, N=128, residual MLP 1024 x 6 with LayerNorm, x0-prediction, batch 256, lr 3e-4,
        tau 0.1 for Hopper else 1.0 (PolyGRAD's config/base_config.py). ``cpu``: the measurements in the
        comment above ``_CPU_PRESET``.
        """
        task_name = get_task(task).name
        if name == "paper":
            fields: dict[str, Any] = dict(
                horizon=10, diffusion_steps=128, sampling_steps=8, width=1024, depth=6, embed_dim=128,
                schedule_temperature=0.1 if task_name == "Hopper" else 1.0, batch_size=256, lr=3e-4,
                known_action_cost=True,
            )  # fmt: skip
        elif name == "cpu":
            fields = dict(_CPU_PRESET)
        else:
            raise ValueError(f"unknown preset {name!r}; choose 'paper' or 'cpu'")
        fields.update(overrides)
        return cls(task=task_name, **fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorldModelConfig":
        """Inverse of ``to_dict``; unknown or missing keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown WorldModelConfig keys {unknown}; known keys: {sorted(names)}")
        data = {**_ADDED_LATER, **data}  # checkpoints written before these fields existed
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"WorldModelConfig is missing keys {missing}")
        return cls(**data)


_ADDED_LATER: dict[str, Any] = {"reward_head": False, "known_action_cost": False, "delta_states": False,
                                 "dynamics_prior": False, "prior_width": 256,
                                 "prior_rollout_weight": 0.0}
"""Fields added after format version 1, with the value that reproduces older checkpoints."""

# Chosen by measurement on hopper-mixed (held-out joint-sampling state error;
# benchmarks/results/model_floor_*.json): with 120 s of training on 1 thread, 256x3 (~66 updates/s,
# 7.9k updates) reached z-scored MSE .0042 at t=1 and .025 at t=10, 512x4 (~25 updates/s, 3.0k) .0050
# and .031 -- on a CPU budget more updates beat a wider net. Earlier sweeps (2 threads): lr 1e-3 beat
# 3e-4; N=32 with tau=1 beat PolyGRAD's Hopper schedule (N=128, tau=0.1) by 1.2-1.4x at t=1; s_0
# anchors cut the t=1 error by ~20%; x0-prediction, because eps-prediction with 1-4 DDIM steps divides
# by sqrt(alpha_bar) ~ 0 at the first step (MSE ~1e4); min-SNR weighting was 2-6x worse. N = 128 (the
# paper's; training cost does not depend on N, sampling cost only on the steps visited): its finer
# low-noise end keeps Reacher's fine arm geometry -- 4 steps ending at t = 0 reach 1.03x the 128-step
# reference's step-H error against 1.33x with N = 32 (benchmarks/sampler_efficiency.py).
# The dynamics prior replaces the s_0 anchor: on HalfCheetah (20k online steps after the shipped 40k,
# seed 0, docs/results.md) EAG evaluated -193 / 1394 at 5k / 10k with it and -357 / -291 without;
# the unguided dream 330 / 1824 against -296 / -276. Its dream's per-step advantages correlate 0.56
# with the simulator's, the anchored model's 0.04-0.07 (benchmarks/oracle_gap.py).
_CPU_PRESET: dict[str, Any] = dict(
    horizon=10, diffusion_steps=128, sampling_steps=4, width=256, depth=3, embed_dim=128,
    schedule_temperature=1.0, anchor_states=False, dynamics_prior=True, batch_size=256, lr=1e-3, ema_decay=0.995,
    known_action_cost=True,
)  # fmt: skip


class WorldModel(nn.Module):
    """Diffusion world model over H-step segments of one task (see module docstring).

    ``denoise`` always uses the EMA weights (they are the sampling weights); training
    (agd_envs.training.WorldModelTrainer) updates ``network`` and then the EMA copy.
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.config = config
        self.task = get_task(config.task)
        self.layout = SegmentLayout(self.task.obs_dim, self.task.act_dim, config.horizon)
        self.normalizer = Normalizer(self.task.obs_dim, self.task.act_dim, delta_states=config.delta_states)
        self.schedule: NoiseSchedule = cosine_schedule(config.diffusion_steps, config.schedule_temperature)
        denoiser = SegmentDenoiser(
            x_dim=self.layout.x_dim,
            act_dim=self.task.act_dim,
            horizon=config.horizon,
            num_steps=config.diffusion_steps,
            width=config.width,
            depth=config.depth,
            embed_dim=config.embed_dim,
            time_embedding=config.time_embedding,
            time_injection=config.time_injection,
            context_dim=self.layout.x_dim if config.dynamics_prior else 0,
        )
        self.network: nn.Module = denoiser
        if config.dynamics_prior:
            self.network = PriorResidualDenoiser(self.layout, denoiser, DynamicsPrior(self.layout, width=config.prior_width))
        self.ema_network = copy.deepcopy(self.network).requires_grad_(False)
        self.reward_head = RewardHead(self.task.obs_dim, self.task.act_dim) if config.reward_head else None
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.normalizer.obs_mean.device

    def predict_x0(
        self,
        network: nn.Module,
        x_t: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor,
        known: torch.Tensor,
        known_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``network`` (the trained one or the EMA copy); return (raw output, x0 estimate), both ``B x Dx``.

        Known entries of ``x_t`` are replaced by ``known`` before the network sees them, and in the x0 estimate.
        """
        x_in = torch.where(known_mask, known, x_t)
        with torch.autocast(x_in.device.type, dtype=torch.bfloat16, enabled=self._autocast(x_in)):
            raw = network(x_in, t, actions, action_mask, known_mask)
        raw = raw.to(x_in.dtype)
        if self.config.prediction == "eps":
            x0 = x0_from_eps(self.schedule, x_in, t, raw)
        elif self.config.anchor_states:
            x0 = raw + first_state_anchor(self.layout, known)
        else:
            x0 = raw
        return raw, torch.where(known_mask, known, x0)

    def denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor,
        known: torch.Tensor,
        known_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x0 estimate ``B x Dx`` (normalized) with EMA weights; known entries returned exactly.

        :param x_t: ``B x Dx`` noisy segment at step t (normalized).
        :param t: ``B`` long steps in 0..N-1.
        :param actions: ``B x H x A`` normalized actions (entries outside ``action_mask`` are ignored).
        :param action_mask: ``B x H`` bool, True where the action is known.
        :param known: ``B x Dx`` clean normalized values, used where ``known_mask``.
        :param known_mask: ``B x Dx`` bool.
        """
        return self.predict_x0(self.ema_network, x_t, t, actions, action_mask, known, known_mask)[1]

    @torch.no_grad()
    def prior_rollout(
        self, states: torch.Tensor, state_known: torch.Tensor, policy: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> torch.Tensor:
        """Real states ``B x (H+1) x S``: rows where ``state_known`` ``B x (H+1)`` as given, the others the dynamics
        prior's closed-loop prediction under ``a_t = policy(s_t, t)`` (real units, clipped to the bounds)."""
        if not self.config.dynamics_prior:
            raise ValueError("prior_rollout needs a model with WorldModelConfig(dynamics_prior=True)")
        norm, prior, task = self.normalizer, self.ema_network.prior, self.task
        rows = [states[:, 0]]
        ones = torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
        for t in range(self.layout.horizon):
            action = policy(rows[-1], t).clamp(task.action_low, task.action_high)
            z, _ = prior(norm.normalize_states(rows[-1]), norm.normalize_actions(action), ones)
            rows.append(torch.where(state_known[:, t + 1, None], states[:, t + 1], norm.unnormalize_states(z)))
        return torch.stack(rows, dim=1)

    def control_rewards(self, actions: torch.Tensor) -> torch.Tensor:
        """The known control term of each reward ``B x H`` of real actions ``B x H x A`` (zeros unless
        ``config.known_action_cost``): what the network's rewards leave out."""
        if not self.config.known_action_cost:
            return actions.new_zeros(actions.shape[:-1])
        return self.task.control_reward(actions)

    def head_rewards(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Real-unit rewards ``B x H`` of real states ``B x (H+1) x S`` and actions ``B x H x A`` from the reward head.

        Differentiable in the states; actions are clipped to the task's bounds first (what the env executes).
        With ``config.known_action_cost`` these leave out the control term (add ``control_rewards``).
        """
        if self.reward_head is None:
            raise ValueError("this world model has no reward head; build it with WorldModelConfig(reward_head=True)")
        norm = self.normalizer
        actions = actions.clamp(self.task.action_low, self.task.action_high)
        z = self.reward_head(norm.normalize_states(states), norm.normalize_actions(actions))
        return norm.unnormalize_rewards(z)

    def _autocast(self, x: torch.Tensor) -> bool:
        return self.config.dtype == "bfloat16" and x.device.type == "cuda"

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What ``WorldModelTrainer`` optimizes: the denoiser and, when configured, the reward head (not the EMA copy)."""
        head = [] if self.reward_head is None else list(self.reward_head.parameters())
        return list(self.network.parameters()) + head

    def num_parameters(self) -> int:
        """Trainable parameters (the EMA copy not counted)."""
        return sum(p.numel() for p in self.trainable_parameters())

    # ----------------------------------------------------------------------------------- checkpoints
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``weights.pt`` into ``directory`` (created); return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "task": self.task.name,
            "obs_dim": self.task.obs_dim,
            "act_dim": self.task.act_dim,
            "config": self.config.to_dict(),
        }
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        meta["config_sha256"] = _config_digest(self.config, meta["weights_sha256"])
        # Write to temporary names first so a crash never leaves a half-written checkpoint behind.
        tmp_weights, tmp_config = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
        tmp_weights.write_bytes(weights)
        tmp_config.write_text(json.dumps(meta, indent=2) + "\n")
        tmp_weights.replace(directory / WEIGHTS_FILE)
        tmp_config.replace(directory / CONFIG_FILE)
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, task: str | Task | None = None, device: str | torch.device = "cpu"
    ) -> "WorldModel":
        """Load a checkpoint written by ``save``; raise CheckpointError with the fix on any problem.

        :param task: if given, the checkpoint must be for this task.
        :param device: where to put the weights.
        """
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        hint = "pass a directory written by WorldModel.save or `agd fit --out DIR`"
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such checkpoint directory; {hint}")
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: missing; a checkpoint needs {CONFIG_FILE} and {WEIGHTS_FILE} — {hint}"
                )
        try:
            meta = json.loads(config_path.read_text())
            version = meta["format_version"]
            if isinstance(version, bool) or not isinstance(version, int):
                raise TypeError(f"format_version {version!r} is not an int")
            config = WorldModelConfig.from_dict(meta["config"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"{config_path}: corrupt or incomplete config ({type(err).__name__}: {err}); re-save the model "
                f"or re-run `agd fit`"
            ) from err
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{config_path}: format_version {version} is newer than this agd-envs supports "
                f"({FORMAT_VERSION}); upgrade agd-envs (pip install -U agd-envs)"
            )
        if task is not None and get_task(task).name != config.task:
            raise CheckpointError(
                f"{directory}: checkpoint is for task {config.task!r}, not {get_task(task).name!r}; "
                f"load the {get_task(task).name} model or pass task={config.task!r}"
            )
        weights = weights_path.read_bytes()
        try:
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises pickle, zip and runtime errors for damaged files
            raise CheckpointError(
                f"{weights_path}: cannot read the weights ({type(err).__name__}: {err}); the file is corrupt or "
                f"truncated — re-save the model or re-run `agd fit`"
            ) from err
        try:
            model = cls(config)
        except (TypeError, ValueError) as err:  # values of the right keys but the wrong kind, e.g. width "32"
            raise CheckpointError(
                f"{config_path}: corrupt config, the model cannot be built from it ({type(err).__name__}: {err}); "
                f"re-save the model or re-run `agd fit`"
            ) from err
        _fill_buffers_added_later(model, state)
        _check_state(model, state, weights_path)  # shape errors first: they say more than a checksum
        if version >= 2:
            _verify_checksums(meta, config, weights, config_path, weights_path)
        model.load_state_dict(state)
        return model.to(device)


def _config_digest(config: WorldModelConfig, weights_sha256: str) -> str:
    """sha256 of the effective config and the weights' digest; fields added later count only off their old default."""
    fields = {k: v for k, v in config.to_dict().items() if k not in _ADDED_LATER or v != _ADDED_LATER[k]}
    return hashlib.sha256(json.dumps([fields, weights_sha256], sort_keys=True).encode()).hexdigest()


def _verify_checksums(meta: dict[str, Any], config: WorldModelConfig, weights: bytes, config_path: Path,
                      weights_path: Path) -> None:
    """Raise CheckpointError naming the file whose bytes differ from what ``save`` wrote."""
    fix = "restore the checkpoint from a copy, or re-save the model (`agd fit`, WorldModel.save)"
    recorded = meta.get("weights_sha256")
    if not isinstance(recorded, str) or meta.get("config_sha256") != _config_digest(config, recorded):
        raise CheckpointError(
            f"{config_path}: its config or checksums differ from what WorldModel.save wrote (config_sha256 does "
            f"not match): the file is damaged or was edited; {fix}"
        )
    actual = hashlib.sha256(weights).hexdigest()
    if actual != recorded:
        raise CheckpointError(
            f"{weights_path}: sha256 {actual[:16]}... differs from the {recorded[:16]}... recorded in "
            f"{CONFIG_FILE}: the weights are corrupt or truncated (flipped bits, an interrupted copy); {fix}"
        )


BUFFERS_ADDED_LATER = ("prior.state_low", "prior.state_high")
"""Buffers a checkpoint written before them lacks; it loads with the new model's defaults (unbounded rollouts)."""


def _fill_buffers_added_later(model: WorldModel, state: Any) -> None:
    """Add to a state_dict the ``BUFFERS_ADDED_LATER`` that it lacks, with ``model``'s values (in place)."""
    if not isinstance(state, dict):
        return  # _check_state says what is wrong
    for key, value in model.state_dict().items():
        if key.endswith(BUFFERS_ADDED_LATER) and key not in state:
            state[key] = value


def _check_state(model: WorldModel, state: Any, path: Path) -> None:
    """Raise CheckpointError naming the first mismatching tensors between ``state`` and ``model``."""
    fix = f"weights.pt does not match config.json (task {model.task.name}); re-save both from one model"
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state_dict ({type(state).__name__}); {fix}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing[:3]}, unexpected {unexpected[:3]}; {fix}")
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape
    ]
    if bad:
        raise CheckpointError(f"{path}: tensor shapes differ (file vs config): {'; '.join(bad[:3])}; {fix}")



def first_state_anchor(layout: SegmentLayout, known: torch.Tensor) -> torch.Tensor:
    """``B x Dx``: every state row holds the known first state s_0; reward entries are 0."""
    states, rewards = layout.unpack(known)
    anchor = states[:, :1].expand_as(states)
    return layout.pack(anchor, torch.zeros_like(rewards))
