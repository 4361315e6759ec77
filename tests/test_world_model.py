"""The world model (world_model.py, denoiser.py, training.py): contract, checkpoints, training, fidelity.

The last test is the issue's criterion (d): a ``cpu``-preset model fitted for at most ~3 minutes on
2 cores on the shipped real Hopper dataset predicts held-out segments (joint sampling from the real
s_0 with the real actions) with a per-step z-scored state MSE <= 0.1 x that of "the state stays
constant", at every step 1..H.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FittedModel, tiny_model_config

from agd_envs.segments import SegmentLayout
from agd_envs.tasks import get_task
from agd_envs.training import SpikeGuard, WorldModelTrainer, diffusion_loss, fit_main, training_masks
from agd_envs.world_model import (
    FORMAT_VERSION,
    CheckpointError,
    WorldModel,
    WorldModelConfig,
    first_state_anchor,
)

DATASET = Path(__file__).resolve().parents[1] / "datasets" / "hopper-mixed"


@dataclass
class Stats:
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_mean: torch.Tensor
    act_std: torch.Tensor
    rew_mean: float
    rew_std: float


@dataclass
class Batch:
    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor


class LinearToyData:
    """Noise-free linear dynamics s' = s A + a B, r = s c with Hopper's sizes; a fixed pool of segments."""

    def __init__(self, horizon: int = 10, pool: int = 512, fixed: bool = False, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        task = get_task("Hopper")
        s_dim, a_dim = task.obs_dim, task.act_dim
        a_mat = torch.eye(s_dim) * 0.9 + 0.05 * torch.randn(s_dim, s_dim, generator=g)
        b_mat = 0.3 * torch.randn(a_dim, s_dim, generator=g)
        c = torch.randn(s_dim, generator=g)
        states = [torch.randn(pool, s_dim, generator=g)]
        actions = torch.rand(pool, horizon, a_dim, generator=g) * 2 - 1
        for h in range(horizon):
            states.append(states[-1] @ a_mat + actions[:, h] @ b_mat)
        self.states = torch.stack(states, 1) * 2.0 + 1.0  # not already z-scored
        self.actions, self.rewards = actions, self.states[:, :-1] @ c
        self.fixed, self.pool, self.task = fixed, pool, task

    def statistics(self) -> Stats:
        s, a = self.states.reshape(-1, self.states.shape[-1]), self.actions.reshape(-1, self.actions.shape[-1])
        r = self.rewards.reshape(-1)
        return Stats(s.mean(0), s.std(0), a.mean(0), a.std(0), float(r.mean()), float(r.std()))

    def sample_segments(self, batch_size, horizon, *, generator=None, device=None) -> Batch:
        rows = torch.arange(batch_size) if self.fixed else torch.randint(self.pool, (batch_size,), generator=generator)
        return Batch(self.states[rows], self.actions[rows], self.rewards[rows])


def tiny_model(**overrides) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(tiny_model_config("Hopper", **overrides))
    model.normalizer.fit(LinearToyData().statistics())
    return model


def random_inputs(model: WorldModel, batch: int = 6, seed: int = 1):
    """A denoise() call with mixed prefix patterns: (x_t, t, actions, action_mask, known, known_mask)."""
    g = torch.Generator().manual_seed(seed)
    layout, n = model.layout, model.config.diffusion_steps
    known_mask, action_mask = training_masks(layout, batch, 0.5, g)
    return (
        torch.randn(batch, layout.x_dim, generator=g),
        torch.randint(0, n, (batch,), generator=g),
        torch.randn(batch, layout.horizon, layout.act_dim, generator=g),
        action_mask,
        torch.randn(batch, layout.x_dim, generator=g),
        known_mask,
    )


# ------------------------------------------------------------------------------------------- config
def test_config_json_round_trip_and_key_errors() -> None:
    config = WorldModelConfig.preset("cpu", "Walker2d", width=96, prediction="eps", dynamics_prior=False)
    data = json.loads(json.dumps(config.to_dict()))
    assert WorldModelConfig.from_dict(data) == config
    with pytest.raises(ValueError, match=r"unknown WorldModelConfig keys \['colour'\]"):
        WorldModelConfig.from_dict({**data, "colour": "red"})
    del data["width"]
    with pytest.raises(ValueError, match=r"missing keys \['width'\]"):
        WorldModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="prediction must be one of"):
        WorldModelConfig(task="Hopper", prediction="v")
    with pytest.raises(ValueError, match="Did you mean 'Hopper'"):
        WorldModelConfig(task="Hoper")
    with pytest.raises(ValueError, match="anchor_states=True needs prediction='x0'"):
        WorldModelConfig(task="Hopper", prediction="eps", anchor_states=True)


def test_presets_have_the_stated_sizes() -> None:
    paper = WorldModelConfig.preset("paper", "Hopper")
    assert (paper.horizon, paper.diffusion_steps, paper.width, paper.depth) == (10, 128, 1024, 6)
    assert (paper.prediction, paper.batch_size, paper.lr, paper.schedule_temperature) == ("x0", 256, 3e-4, 0.1)
    assert WorldModelConfig.preset("paper", "HalfCheetah").schedule_temperature == 1.0
    cpu = WorldModelConfig.preset("cpu", "Hopper")
    assert (cpu.horizon, cpu.diffusion_steps, cpu.sampling_steps, cpu.width, cpu.depth) == (10, 128, 4, 256, 3)
    assert cpu.dynamics_prior and not cpu.anchor_states and cpu.prediction == "x0"
    # Residual MLP 1024 x 6 (one Linear per block) + I/O layers + step embedding: ~7.6M parameters for Hopper.
    assert 7.0e6 < WorldModel(paper).num_parameters() < 8.0e6
    with pytest.raises(ValueError, match="choose 'paper' or 'cpu'"):
        WorldModelConfig.preset("gpu", "Hopper")


# ------------------------------------------------------------------------------------------ denoise
@pytest.mark.parametrize("overrides", [{}, {"dynamics_prior": False}, {"dynamics_prior": False, "anchor_states": True},
                                       {"prediction": "eps", "dynamics_prior": False}])  # fmt: skip
def test_known_entries_are_returned_exactly(overrides: dict) -> None:
    model = tiny_model(**overrides)
    x_t, t, actions, action_mask, known, known_mask = random_inputs(model)
    x0 = model.denoise(x_t, t, actions, action_mask, known, known_mask)
    assert x0.shape == x_t.shape and torch.isfinite(x0).all()
    assert torch.equal(x0[known_mask], known[known_mask])
    # Unknown actions and the noisy values at known entries do not matter.
    garbage = torch.where(known_mask, torch.randn_like(x_t) * 100, x_t)
    scrambled = torch.where(action_mask[..., None], actions, torch.randn_like(actions) * 100)
    assert torch.equal(model.denoise(garbage, t, scrambled, action_mask, known, known_mask), x0)


def test_anchor_is_the_first_state_for_every_row() -> None:
    layout = SegmentLayout(obs_dim=2, act_dim=1, horizon=3)
    states = torch.arange(8.0).reshape(1, 4, 2).repeat(2, 1, 1) + 1
    anchor_states, anchor_rewards = layout.unpack(first_state_anchor(layout, layout.pack(states, torch.full((2, 3), 9.0))))
    assert anchor_states.tolist() == [[[1, 2]] * 4] * 2  # s_0, never an imagined later state (no compounding)
    assert anchor_rewards.abs().sum() == 0


# -------------------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip_is_bit_identical(tmp_path: Path) -> None:
    model = tiny_model()
    WorldModelTrainer(model).fit(LinearToyData(), 3, progress=False, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(model.network.denoiser.input.weight, model.ema_network.denoiser.input.weight)  # EMA really differs
    model.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["task"] == "Hopper"
    loaded = WorldModel.load(tmp_path / "ckpt", task="Hopper")
    inputs = random_inputs(model)
    assert torch.equal(loaded.denoise(*inputs), model.denoise(*inputs))
    assert loaded.config == model.config and int(loaded.num_updates) == 3
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def _corrupt(case: str, ckpt: Path, tmp_path: Path) -> tuple[Path, dict, str, str]:
    """Damage a saved checkpoint; return (directory, load kwargs, path expected in the message, hint)."""
    config, weights = ckpt / "config.json", ckpt / "weights.pt"
    meta = json.loads(config.read_text())
    if case == "no directory":
        return tmp_path / "nowhere", {}, str(tmp_path / "nowhere"), "WorldModel.save"
    if case == "missing weights":
        weights.unlink()
        return ckpt, {}, str(weights), "a checkpoint needs config.json and weights.pt"
    if case == "missing config":
        config.unlink()
        return ckpt, {}, str(config), "a checkpoint needs config.json and weights.pt"
    if case == "corrupt weights":
        weights.write_bytes(b"definitely not a torch file")
        return ckpt, {}, str(weights), "re-save the model or re-run `agd fit`"
    if case == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
        return ckpt, {}, str(weights), "corrupt or truncated"
    if case == "corrupt config":
        config.write_text(config.read_text()[:40])
        return ckpt, {}, str(config), "corrupt or incomplete config"
    if case == "unknown config key":
        meta["config"]["colour"] = "red"
        config.write_text(json.dumps(meta))
        return ckpt, {}, str(config), "colour"
    if case == "newer format":
        meta["format_version"] = FORMAT_VERSION + 1
        config.write_text(json.dumps(meta))
        return ckpt, {}, str(config), "upgrade agd-envs"
    if case == "task mismatch":
        return ckpt, {"task": "HalfCheetah"}, str(ckpt), "pass task='Hopper'"
    if case == "other obs dims":  # HalfCheetah config beside Hopper weights
        meta["config"]["task"] = meta["task"] = "HalfCheetah"
        config.write_text(json.dumps(meta))
        return ckpt, {}, str(weights), "tensor shapes differ"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["no directory", "missing weights", "missing config", "corrupt weights", "truncated weights", "corrupt config",
     "unknown config key", "newer format", "task mismatch", "other obs dims"],
)  # fmt: skip
def test_bad_checkpoints_raise_checkpoint_error_with_path_and_fix(case: str, tmp_path: Path) -> None:
    ckpt = tiny_model().save(tmp_path / "ckpt")
    directory, kwargs, path, hint = _corrupt(case, ckpt, tmp_path)
    with pytest.raises(CheckpointError) as info:
        WorldModel.load(directory, **kwargs)
    assert path in str(info.value) and hint in str(info.value)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------------------- training
def test_training_masks_mix_joint_and_closed_loop_prefixes() -> None:
    layout = SegmentLayout(obs_dim=3, act_dim=2, horizon=5)
    known, acts = training_masks(layout, 4000, 0.5, torch.Generator().manual_seed(0))
    states, rewards = layout.unpack(known)
    k_states, k_rewards, k_actions = states.all(-1).sum(1), rewards.sum(1), acts.sum(1)
    joint = (k_states == 1) & (k_actions == 5)
    assert 0.45 < joint.float().mean() < 0.55
    prefix = ~joint
    # Closed loop after the caller gave a_k: s_0..s_k, r_0..r_{k-1}, a_0..a_k known, k ~ U{0..H-1}.
    assert torch.equal(k_actions[prefix], k_states[prefix]) and torch.equal(k_rewards[prefix], k_states[prefix] - 1)
    assert torch.equal(k_rewards[joint], torch.zeros_like(k_rewards[joint]))
    counts = torch.bincount(k_states[prefix], minlength=6)[1:]
    assert counts.min() > 0.15 * prefix.sum() and counts.max() < 0.25 * prefix.sum()
    assert torch.equal(states.any(-1), states.all(-1))  # whole state rows only


def test_fit_decreases_the_loss_on_a_fixed_batch_and_continues() -> None:
    data = LinearToyData(pool=256, fixed=True)
    model = tiny_model(width=128, joint_fraction=1.0)  # closed-loop masks add irreducible loss (unknown future actions)

    def fixed_loss() -> float:
        with torch.no_grad():
            return diffusion_loss(model, data.sample_segments(256, 10), torch.Generator().manual_seed(5)).item()

    model.normalizer.fit(data.statistics())
    before = fixed_loss()
    gen = torch.Generator().manual_seed(0)
    trainer = WorldModelTrainer(model)
    log = trainer.fit(data, 300, batch_size=64, progress=False, log_every=100, generator=gen)
    after = fixed_loss()
    assert [r["step"] for r in log] == [100, 200, 300]
    assert after < before / 4, (before, after)  # measured: 1.06 -> 0.19
    optimizer = trainer.optimizer
    trainer.fit(data, 10, batch_size=64, progress=False)
    assert trainer.optimizer is optimizer and int(model.num_updates) == 310
    assert int(next(iter(optimizer.state.values()))["step"]) == 310


def test_a_loss_spike_or_nan_changes_nothing_and_is_counted() -> None:
    """SpikeGuard: a batch 1e4 times off the data, or with a NaN, leaves weights, EMA, Adam and num_updates alone."""
    data = LinearToyData()
    model = tiny_model()
    trainer = WorldModelTrainer(model)
    log = trainer.fit(data, 30, batch_size=32, progress=False, log_every=30, generator=torch.Generator().manual_seed(0))
    assert log[-1]["skipped"] == 0.0 and int(model.num_updates) == 30
    snapshot = [t.clone() for t in [*model.state_dict().values(), *trainer.optimizer.state_dict()["state"][0].values()]]
    batch = data.sample_segments(32, 10, generator=torch.Generator().manual_seed(1))
    spike = dataclasses.replace(batch, states=batch.states * 1e4)
    nan = dataclasses.replace(batch, rewards=torch.where(torch.arange(10) == 3, torch.nan, batch.rewards))
    assert trainer.step(spike) > 100 * log[-1]["loss"]
    assert math.isnan(trainer.step(nan))
    after = [*model.state_dict().values(), *trainer.optimizer.state_dict()["state"][0].values()]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after)) and int(model.num_updates) == 30
    assert trainer.skipped_updates == 2 and trainer.state_dict()["skipped_updates"] == 2
    trainer.step(batch)
    assert int(model.num_updates) == 31 and trainer.skipped_updates == 2  # an ordinary batch is taken
    unguarded = WorldModelTrainer(tiny_model(), spike_guard=SpikeGuard(factor=math.inf))
    unguarded.fit(data, 30, batch_size=32, progress=False)
    unguarded.step(spike)
    assert unguarded.skipped_updates == 0 and int(unguarded.model.num_updates) == 31


@pytest.mark.parametrize("overrides", [{"prediction": "eps", "dynamics_prior": False}, {"loss_weighting": "min_snr"}])
def test_other_objectives_train(overrides: dict) -> None:
    model = tiny_model(**overrides)
    log = WorldModelTrainer(model).fit(LinearToyData(), 20, batch_size=32, progress=False, log_every=10)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log) and log[1]["loss"] < log[0]["loss"]


def test_fit_stops_at_max_seconds_and_callback() -> None:
    model = tiny_model()
    trainer = WorldModelTrainer(model)
    log = trainer.fit(LinearToyData(), 10**6, batch_size=16, progress=False, max_seconds=0.5)
    assert int(model.num_updates) < 10**6 and log[-1]["seconds"] >= 0.5
    log = trainer.fit(LinearToyData(), 100, batch_size=16, progress=False, log_every=5, callback=lambda r: True)
    assert len(log) == 1 and log[0]["step"] == int(model.num_updates)


@pytest.mark.skipif(not (DATASET / "data").is_dir(), reason="shipped dataset datasets/hopper-mixed not present")
def test_fit_main_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = fit_main("Hopper", str(DATASET), "cpu", 3, str(tmp_path / "model"), seed=0, device="cpu")
    model = WorldModel.load(out, task="Hopper")
    assert int(model.num_updates) == 3 and model.config == WorldModelConfig.preset("cpu", "Hopper")
    with pytest.raises(ValueError, match="holds Hopper data, not HalfCheetah"):
        fit_main("HalfCheetah", str(DATASET), "cpu", 3, str(tmp_path / "other"), seed=0, device="cpu")


# ------------------------------------------------------------------------- criterion (d): fidelity
FIT_SECONDS = 120.0
"""CPU budget of the fidelity fit (the issue allows 3 minutes on 2 cores; 2 minutes keep the suite short). The fit is
the session's ``fitted_hopper`` (tests/conftest.py: 1500 updates, ~60 s on one free core); measured ratio 0.047 at t=1
and 0.017 at t=10 after 800 updates, 0.029 and 0.008 after 1928."""


def test_fidelity_joint_sampling_beats_constant_state_tenfold(fitted_hopper: FittedModel) -> None:
    from agd_envs.sampling import Conditioning, sample

    model, test, seconds = fitted_hopper.model, fitted_hopper.test, fitted_hopper.seconds
    seg = test.sample_segments(1000, model.config.horizon, generator=torch.Generator().manual_seed(1))
    cond = Conditioning.from_start(seg.states[:, 0], seg.actions)
    imagined = sample(model, cond, generator=torch.Generator().manual_seed(2))
    z = model.normalizer.normalize_states
    true = z(seg.states)
    model_mse = (z(imagined.states) - true)[:, 1:].square().mean(dim=(0, 2))
    constant_mse = (true[:, :1] - true[:, 1:]).square().mean(dim=(0, 2))
    ratio = model_mse / constant_mse
    updates = int(model.num_updates)
    detail = f"after {updates} updates in {seconds:.0f} s: per-step ratio {[round(r, 3) for r in ratio.tolist()]}"
    print(detail)
    assert seconds < FIT_SECONDS + 10, detail
    # Measured with 512x4 (~4.4k updates): ratio 0.06 at t=1, 0.01-0.02 after; ~2.5k updates still pass.
    assert bool((ratio <= 0.1).all()), detail
    assert torch.equal(imagined.states[:, 0], seg.states[:, 0])
