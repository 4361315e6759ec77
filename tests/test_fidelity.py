"""World-model fidelity through DreamEnv: held-out real Hopper action sequences, imagined vs real states.

A ``cpu``-preset model (1500 updates) is fitted once per session on the train split of
``datasets/hopper-mixed`` (the ``fitted_hopper`` fixture, tests/conftest.py). For H-step windows of HELD-OUT episodes, each
dream starts at the real s_0 (``reset(options={"initial_state": s0})``, guide ``none``) and is
stepped with the real actions; its observations are compared with the real ones. Error at step t:
MSE of states z-scored with the model's normalizer, averaged over dimensions and windows. Baselines:
open-loop joint sampling (``sampling.sample``, all H actions known, the same s_0 and sampler
settings) and "the state stays constant" (s_t = s_0).

Measured with this module's model (1 thread, seed 0; the ``cpu`` preset with its dynamics prior, rolled out
from s_0), z-scored state MSE at step t, one DDIM step:

==========================================  ======  ======  ======  ======  ======
t                                           1       2       4       7       10
==========================================  ======  ======  ======  ======  ======
closed loop (DreamEnv)                      .0035   .0054   .0109   .0170   .0255
open loop (joint)                           .0032   .0044   .0084   .0149   .0243
closed / open                               1.09    1.23    1.30    1.14    1.05
state stays constant                        .074    .197    .518    1.09    1.86
==========================================  ======  ======  ======  ======  ======

Before the dynamics prior, the s_0-anchored model measured closed / open .79-.94, and anchors at the latest known
state (the imagined s_t in closed loop) 1.05-4.73: compounding.

Without anchors, an earlier measurement over three seeds gave closed/open maxima over t of .93-1.05
with one step, 1.17-1.24 with 2 DDIM steps and 1.29-1.37 with 4 (DDPM with 32 steps: 1.30).
So the closed loop is sampled with ONE deterministic step here: with more steps, the future the
sampler invents for the unknown actions leaks into s_{t+1} and the closed
loop falls behind the open loop at t = 3..5, by 17-24% with 2 steps and 29-37% with 4 (the preset's
default; DDPM with 32 steps: 30%). One step is also the most accurate closed-loop setting from t = 2
on, and the cheapest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import FittedModel

from agd_envs.datasets import EpisodeDataset
from agd_envs.dream_env import DreamEnv
from agd_envs.sampling import Conditioning, sample
from agd_envs.world_model import WorldModel

WINDOWS = 200
"""Held-out H-step windows (each stepped through its own DreamEnv episode)."""
SAMPLING_STEPS = 1
"""Reverse-diffusion steps per sample call, closed and open loop alike (see the module docstring)."""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass
class Curves:
    """Per-step z-scored state MSE (``H`` each, step t = 1..H) over the windows still dreaming at t."""

    closed: np.ndarray
    open: np.ndarray
    constant: np.ndarray
    running: np.ndarray
    """``H``: fraction of windows whose dream had not ended (terminated) before step t."""


def held_out_windows(test: EpisodeDataset, horizon: int, count: int, seed: int):
    """``count`` windows of ``horizon`` real transitions without a real termination in them."""
    starts = test.segment_starts(horizon)
    every = test.sample_segments(len(starts), horizon, indices=np.arange(len(starts)))
    alive = np.flatnonzero(~every.terminations.any(1).numpy())
    rows = np.random.default_rng(seed).choice(alive, size=min(count, len(alive)), replace=False)
    return test.sample_segments(len(rows), horizon, indices=rows)


def closed_loop(model: WorldModel, s0: np.ndarray, actions: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dream every window through a DreamEnv -> (states ``W x (H+1) x S``, running ``W x H`` bool)."""
    env = DreamEnv("Hopper", model=model, guide="none", sampling_steps=SAMPLING_STEPS)
    count, horizon = actions.shape[:2]
    states = np.zeros((count, horizon + 1, s0.shape[-1]), dtype=np.float32)
    running = np.zeros((count, horizon), dtype=bool)
    for i in range(count):
        states[i, 0], _ = env.reset(seed=seed + i, options={"initial_state": s0[i]})
        for t in range(horizon):
            states[i, t + 1], _, terminated, truncated, _ = env.step(actions[i, t])
            running[i, t] = True
            if terminated or truncated:
                break
    return states, running


@pytest.fixture(scope="module")
def curves(fitted_hopper: FittedModel) -> Curves:
    model, test = fitted_hopper.model, fitted_hopper.test
    horizon = model.config.horizon
    windows = held_out_windows(test, horizon, WINDOWS, seed=0)
    real, actions = windows.states.float(), windows.actions.float()

    closed, running = closed_loop(model, real[:, 0].numpy(), actions.numpy(), seed=0)
    cond = Conditioning.from_start(real[:, 0], actions)
    joint = sample(model, cond, steps=SAMPLING_STEPS, generator=torch.Generator().manual_seed(0)).states

    z = model.normalizer.normalize_states
    weight = torch.as_tensor(running, dtype=torch.float32)

    def mse(states: torch.Tensor) -> np.ndarray:
        per_window = (z(states[:, 1:]) - z(real[:, 1:])).square().mean(-1)  # W x H
        return ((per_window * weight).sum(0) / weight.sum(0)).numpy()

    out = Curves(mse(torch.as_tensor(closed)), mse(joint), mse(real[:, :1].expand_as(real)), running.mean(0))
    for name in ("closed", "open", "constant", "running"):
        print(f"{name:>9}: " + " ".join(f"{v:.4f}" for v in getattr(out, name)))
    return out


def test_dreams_rarely_end_where_the_real_episode_did_not(curves: Curves) -> None:
    # The chosen windows never terminate in reality; an imagined termination is a model error.
    assert curves.running[-1] >= 0.95


def test_dream_tracks_held_out_real_states(curves: Curves) -> None:
    error_h = curves.closed[-1]
    assert error_h < 0.1, f"state MSE at step H {error_h:.4f} (measured .046-.055)"
    assert error_h < 0.1 * curves.constant[-1], f"{error_h:.4f} vs constant state {curves.constant[-1]:.4f} (measured 3%)"


def test_closed_loop_is_not_worse_than_open_loop(curves: Curves) -> None:
    """DreamEnv (one sample call per step) vs joint sampling with every action known, per step 1..H.

    A ratio that grows with t (x1.9 at t=2, x4.7 at t=6) is compounding: the closed loop conditions on
    its own imagined states. Measured with states predicted as offsets from the latest known state
    (the imagined s_t in closed loop); offsets from the real s_0, or a prior rolled out from it, do not compound.
    """
    ratio = curves.closed / curves.open
    # Measured with the cpu preset's dynamics prior (rolled out from s_0): 1.09 1.23 1.29 1.30 1.24 1.17 1.14
    # 1.09 1.09 1.05 -- a bounded bump, no growth; restarting the prior at each imagined state gave 2.6 at t = 10.
    assert (ratio <= 1.4).all() and ratio[-1] <= 1.15, f"closed/open MSE per step: {np.round(ratio, 3)}"
