"""The dynamics prior (WorldModelConfig.dynamics_prior): its rollout, its residual role in the x0 estimate,
what it learns from real transitions, and checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.dynamics_prior import DynamicsPrior
from agd_envs.sampling import Conditioning, imagine, sample
from agd_envs.segments import SegmentLayout
from agd_envs.training import WorldModelTrainer, diffusion_loss
from agd_envs.world_model import WorldModel, WorldModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUT = SegmentLayout(obs_dim=3, act_dim=2, horizon=4)


def _zero(linear: nn.Linear) -> None:
    """Make a layer output zeros."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()


def test_rollout_steps_from_the_previous_row_and_sees_the_actions() -> None:
    prior = DynamicsPrior(LAYOUT, width=8, depth=1)
    _zero(prior.net[-1])  # every step moves by change_mean, every reward is 0
    prior.fit_moments(torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0]]))  # mean change (2, 2, 0)
    s0 = torch.randn(2, 3)
    actions, action_known = torch.randn(2, LAYOUT.horizon, 2), torch.ones(2, LAYOUT.horizon, dtype=torch.bool)
    out, rewards = prior.rollout(s0, actions, action_known)
    step = torch.tensor([2.0, 2.0, 0.0])
    torch.testing.assert_close(out, s0[:, None] + torch.arange(5.0)[None, :, None] * step)
    assert torch.equal(rewards, torch.zeros(2, LAYOUT.horizon))
    with torch.no_grad():  # a first layer that reads only the action: the change follows a_t, masked ones read as 0
        prior.net[-1].weight[0, 0] = 1.0
        prior.net[0].weight.zero_()
        prior.net[0].bias.zero_()
        prior.net[0].weight[0, 3] = 1.0  # unit 0 = SiLU(a_t[0]) -> change of state 0, times change_std
    mask = action_known.clone()
    mask[:, 2] = False
    out, _ = prior.rollout(s0, actions, mask)
    silu = torch.nn.functional.silu(torch.where(mask, actions[..., 0], 0.0))
    torch.testing.assert_close(out[:, 1:, 0] - out[:, :-1, 0], 2.0 + 2.0**0.5 * silu)  # std of changes 1 and 3


def test_an_expansive_prior_stays_within_the_datas_widened_range() -> None:
    """A prior that doubles its state every step: unbounded before fit_moments sees states, clamped after."""
    prior = DynamicsPrior(LAYOUT, width=8, depth=1)
    _zero(prior.net[-1])
    changes = torch.zeros(4, 3)
    prior.fit_moments(changes)  # change std clamps to min_std; now make the change equal the state itself
    with torch.no_grad():
        prior.change_std.fill_(1.0)
        _zero(prior.net[0])
        prior.net[0].weight[:3, :3] = torch.eye(3) * 10.0  # SiLU(10 s) ~ 10 s for s > 0.5
        prior.net[-1].weight[:3, :3] = torch.eye(3) / 10.0
    s0, actions = torch.full((2, 3), 1.0), torch.zeros(2, LAYOUT.horizon, 2)
    known = torch.ones(2, LAYOUT.horizon, dtype=torch.bool)
    with torch.no_grad():
        free, _ = prior.rollout(s0, actions, known)
    assert float(free[:, -1].min()) > 15.0  # 1 -> 2 -> 4 -> 8 -> 16: it runs away
    states = torch.tensor([[-1.0, 0.0, 0.5], [1.0, 2.0, 1.5]])  # ranges 2, 2, 1 -> bounds [-2, 2], [-1, 3], [0, 2]
    prior.fit_moments(changes, states=states)
    prior.change_std.fill_(1.0)
    torch.testing.assert_close(prior.state_low, torch.tensor([-2.0, -1.0, 0.0]))
    torch.testing.assert_close(prior.state_high, torch.tensor([2.0, 3.0, 2.0]))
    with torch.no_grad():
        bounded, _ = prior.rollout(s0, actions, known)
    torch.testing.assert_close(bounded[:, -1], torch.tensor([[2.0, 3.0, 2.0]] * 2))
    torch.testing.assert_close(bounded[:, 1, 1], free[:, 1, 1])  # ~2 in state 1, inside its bounds: untouched
    assert torch.equal(bounded[:, 0], s0)


def _prior_model(task: str = "HalfCheetah", batch_size: int = 256) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig.preset("cpu", task, width=32, depth=1, batch_size=batch_size))


def test_x0_estimate_is_the_prior_rollout_plus_the_denoiser_and_known_rows_stay() -> None:
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    model = _prior_model()
    WorldModelTrainer(model).fit(data, 3, generator=torch.Generator().manual_seed(0), progress=False)
    _zero(model.ema_network.denoiser.out)
    seg = data.sample_segments(4, 10, generator=torch.Generator().manual_seed(1))
    cond = Conditioning(states=seg.states, num_known_states=torch.tensor([1, 1, 3, 6]), actions=seg.actions,
                        rewards=seg.rewards)  # fmt: skip
    out = sample(model, cond, generator=torch.Generator().manual_seed(2))
    norm, prior = model.normalizer, model.ema_network.prior
    known_rows = torch.arange(11)[None, :] < cond.num_known_states[:, None]
    with torch.no_grad():  # from s_0 even where later rows are known (dynamics_prior.PriorResidualDenoiser.prior_segment)
        z, _ = prior.rollout(norm.normalize_states(seg.states[:, 0]), norm.normalize_actions(seg.actions),
                             torch.ones(4, 10, dtype=torch.bool))  # fmt: skip
    expected = torch.where(known_rows[..., None], seg.states, norm.unnormalize_states(z))
    torch.testing.assert_close(out.states, expected, rtol=1e-5, atol=1e-4)
    for i, k in enumerate(cond.num_known_states.tolist()):
        assert torch.equal(out.states[i, :k], seg.states[i, :k])


def test_the_denoiser_loss_does_not_train_the_prior() -> None:
    model = _prior_model()
    x = torch.randn(2, model.layout.x_dim)
    actions = torch.randn(2, 10, 6)
    out = model.network(x, torch.zeros(2, dtype=torch.long), actions, torch.ones(2, 10, dtype=torch.bool),
                        model.layout.known_mask(torch.ones(2, dtype=torch.long)))  # fmt: skip
    out.sum().backward()
    assert all(p.grad is None for p in model.network.prior.parameters())
    assert all(p.grad is not None for p in model.network.denoiser.parameters())


def test_prior_learns_one_step_changes_from_real_transitions() -> None:
    """300 updates of 64 segments on HalfCheetah data: held-out one-step error far below "the state stays" (z-units)."""
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    train, held = data.split(0.8, seed=0)
    model = _prior_model(batch_size=64)
    WorldModelTrainer(model).fit(train, 300, generator=torch.Generator().manual_seed(0), progress=False)
    seg = held.sample_segments(1024, 10, generator=torch.Generator().manual_seed(1))
    norm, prior = model.normalizer, model.ema_network.prior
    z = norm.normalize_states(seg.states)
    with torch.no_grad():
        predicted, _ = prior(z[:, :-1], norm.normalize_actions(seg.actions), torch.ones(1024, 10, dtype=torch.bool))
    error = (predicted - z[:, 1:]).square().mean()
    stays = (z[:, :-1] - z[:, 1:]).square().mean()
    print(f"one-step z-MSE {float(error):.4f}, state stays {float(stays):.4f}")
    assert float(error) < 0.1 * float(stays), (float(error), float(stays))


def test_config_requires_the_plain_encoding_and_round_trips(tmp_path) -> None:
    assert WorldModelConfig.preset("cpu", "Hopper").dynamics_prior  # on by default in the cpu preset
    with pytest.raises(ValueError, match="dynamics_prior needs prediction='x0', anchor_states=False"):
        WorldModelConfig.preset("cpu", "Hopper", anchor_states=True)
    old = WorldModelConfig.preset("cpu", "Hopper").to_dict()
    del old["dynamics_prior"]
    assert WorldModelConfig.from_dict(old).dynamics_prior is False
    model = _prior_model()
    model.ema_network.prior.fit_moments(torch.randn(50, 17) + 3.0)
    loaded = WorldModel.load(model.save(tmp_path / "m"))
    assert torch.equal(loaded.ema_network.prior.change_mean, model.ema_network.prior.change_mean)
    x, t = torch.randn(3, model.layout.x_dim), torch.full((3,), 5)
    args = (torch.randn(3, 10, 6), torch.ones(3, 10, dtype=torch.bool), torch.zeros(3, model.layout.x_dim),
            model.layout.known_mask(torch.ones(3, dtype=torch.long)))  # fmt: skip
    torch.testing.assert_close(loaded.denoise(x, t, *args), model.denoise(x, t, *args))


def test_trained_bounds_round_trip_and_older_checkpoints_load_unbounded(tmp_path) -> None:
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    model = _prior_model(batch_size=32)
    WorldModelTrainer(model).fit(data, 1, generator=torch.Generator().manual_seed(0), progress=False)
    prior = model.ema_network.prior
    z = model.normalizer.normalize_states(data.sample_segments(4096, 10, generator=torch.Generator().manual_seed(7)).states)
    assert bool((prior.state_low < z.amin((0, 1))).all() and (prior.state_high > z.amax((0, 1))).all())
    assert bool((prior.state_high - prior.state_low < 2.5 * (z.amax((0, 1)) - z.amin((0, 1)))).all())
    loaded = WorldModel.load(model.save(tmp_path / "m"))
    assert torch.equal(loaded.ema_network.prior.state_high, prior.state_high)
    weights = tmp_path / "m" / "weights.pt"  # a checkpoint written before the bounds existed: no bound buffers
    state = {k: v for k, v in torch.load(weights).items() if not k.endswith(("state_low", "state_high"))}
    old = tmp_path / "old"
    model.save(old)
    torch.save(state, old / "weights.pt")
    config = json.loads((old / "config.json").read_text())
    config["format_version"] = 1  # checksums came with version 2; the bounds come later still
    (old / "config.json").write_text(json.dumps(config))
    assert torch.isinf(WorldModel.load(old).ema_network.prior.state_high).all()


def test_imagined_actions_and_states_are_the_priors_closed_loop_under_the_policy() -> None:
    """With the denoiser's correction zeroed, imagine returns a fixed point: a_t = pi(s_t) and s_{t+1} = prior(s_t, a_t).

    The actions are drawn along the prior's closed-loop rollout before the first denoising step; without
    that, each s_{t+1} would be denoised under the action drawn at the previous step's estimate of s_t.
    """
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    model = _prior_model()
    WorldModelTrainer(model).fit(data, 3, generator=torch.Generator().manual_seed(0), progress=False)
    _zero(model.ema_network.denoiser.out)
    weight = torch.randn(17, 6, generator=torch.Generator().manual_seed(5))
    actor = lambda s: 1.5 * torch.tanh(s @ weight)  # noqa: E731  (deterministic; saturates some entries)
    s0 = data.sample_segments(8, 10, generator=torch.Generator().manual_seed(1)).states[:, 0]
    out = imagine(model, s0, actor, guide="none", generator=torch.Generator().manual_seed(2))
    norm, prior = model.normalizer, model.ema_network.prior
    for t in range(10):
        torch.testing.assert_close(out.actions[:, t], actor(out.states[:, t]), rtol=0, atol=1e-4)
        z, _ = prior(norm.normalize_states(out.states[:, t]), norm.normalize_actions(out.actions[:, t].clamp(-1, 1)),
                     torch.ones(8, dtype=torch.bool))  # fmt: skip
        torch.testing.assert_close(out.states[:, t + 1], norm.unnormalize_states(z), rtol=0, atol=2e-5)  # unseeded: ~1e-3


def test_the_rollout_weight_adds_the_priors_own_rollout_error_to_the_world_model_loss() -> None:
    """``WorldModelConfig.prior_rollout_weight`` x the prior's H-step rollout error on the batch's first quarter."""
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    model = _prior_model(batch_size=8)
    WorldModelTrainer(model).fit(data, 2, generator=torch.Generator().manual_seed(0), progress=False)
    batch = data.sample_segments(8, 10, generator=torch.Generator().manual_seed(1))
    losses = {}
    for weight in (0.0, 2.0):
        model.config = dataclasses.replace(model.config, prior_rollout_weight=weight)
        losses[weight] = float(diffusion_loss(model, batch, torch.Generator().manual_seed(2)).detach())
    norm, prior = model.normalizer, model.network.prior
    z = norm.normalize_states(batch.states[:2])  # ceil(8 / LOSS_FRACTION_INV) segments
    rewards = norm.normalize_rewards(batch.rewards[:2] - model.control_rewards(batch.actions[:2]))
    with torch.no_grad():
        rolled, rolled_rewards = prior.rollout(z[:, 0], norm.normalize_actions(batch.actions[:2]), torch.ones(2, 10, dtype=torch.bool))
    error = ((rolled[:, 1:] - z[:, 1:]) / prior.change_std).square().mean() + (rolled_rewards - rewards).square().mean()
    assert float(error) > 0.01
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * float(error), rel=1e-4)
