"""Delta state encoding (WorldModelConfig.delta_states): exact round trip, the guide's chain rule through
the summed changes, moments fit from real segments, checkpoints, and known rows kept by the sampler."""

from __future__ import annotations

import pytest
import torch
from analytic import LinearCritic, make_normalizer

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.guides import GUIDES, guide_gradient
from agd_envs.normalization import Normalizer
from agd_envs.sampling import Conditioning, sample
from agd_envs.segments import SegmentLayout
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import CheckpointError, WorldModel, WorldModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUT = SegmentLayout(obs_dim=3, act_dim=2, horizon=4)
GAMMA = 0.9


def _delta_normalizer(seed: int = 0) -> Normalizer:
    """A float64 delta-encoding normalizer with non-trivial state and change moments."""
    g = torch.Generator().manual_seed(seed)
    norm = make_normalizer(LAYOUT, g)
    delta = Normalizer(LAYOUT.obs_dim, LAYOUT.act_dim, delta_states=True).double()
    delta.load_state_dict({**norm.state_dict(), "delta_mean": delta.delta_mean, "delta_std": delta.delta_std})
    changes = 0.3 * torch.randn(500, LAYOUT.obs_dim, generator=g, dtype=torch.float64) + torch.tensor([0.1, -0.2, 0.0])
    return delta.fit_deltas(changes * torch.tensor([1.0, 0.1, 3.0], dtype=torch.float64))


def test_encoding_is_s0_then_z_scored_changes_and_decodes_exactly() -> None:
    norm = _delta_normalizer()
    states = torch.randn(5, LAYOUT.horizon + 1, LAYOUT.obs_dim, dtype=torch.float64)
    z = norm.encode_states(states)
    torch.testing.assert_close(z[:, 0], (states[:, 0] - norm.obs_mean) / norm.obs_std)
    changes = (states[:, 1:] - states[:, :-1] - norm.delta_mean) / norm.delta_std
    torch.testing.assert_close(z[:, 1:], changes)
    torch.testing.assert_close(norm.decode_states(z), states, rtol=0, atol=1e-12)
    # The zero encoding after s_0 is "each step moves by the mean change".
    zero_after = torch.cat([z[:, :1], torch.zeros_like(z[:, 1:])], dim=1)
    steps = torch.arange(LAYOUT.horizon + 1, dtype=torch.float64)[:, None]
    torch.testing.assert_close(norm.decode_states(zero_after), states[:, :1] + steps * norm.delta_mean)
    with pytest.raises(ValueError, match="delta_states=True"):
        Normalizer(3, 2).fit_deltas(torch.zeros(4, 3))


def test_eag_gradient_flows_through_the_summed_changes() -> None:
    """V = w . s (real units): d sum_t A_t / d(change z_u) = delta_std * sum_{t >= u} g_t, g_t the state gradient."""
    norm = _delta_normalizer(seed=1)
    w = torch.tensor([0.7, -1.3, 0.4], dtype=torch.float64)
    x = torch.randn(6, LAYOUT.x_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grad = LAYOUT.unpack(guide_gradient(GUIDES["eag"], x, layout=LAYOUT, normalizer=norm, task=None,
                                        critic=LinearCritic(w), gamma=GAMMA))[0]  # fmt: skip
    g = torch.stack([-w] + [(GAMMA - 1) * w] * (LAYOUT.horizon - 1) + [GAMMA * w])  # d log f / d s_t, rows 0..H
    later = g.flip(0).cumsum(0).flip(0)  # sum_{t >= u} g_t
    expected = torch.cat([(later[0] * norm.obs_std)[None], later[1:] * norm.delta_std])
    torch.testing.assert_close(grad, expected.expand_as(grad), rtol=1e-12, atol=1e-12)


def _tiny(task: str = "Hopper", **overrides: object) -> WorldModel:
    torch.manual_seed(0)
    fields = dict(width=32, depth=1, delta_states=True, dynamics_prior=False) | overrides
    return WorldModel(WorldModelConfig.preset("cpu", task, **fields))


def test_fit_sets_the_change_moments_of_the_data() -> None:
    data = EpisodeDataset.open(default_dataset_path("Hopper"))
    model = _tiny()
    WorldModelTrainer(model).fit(data, 1, generator=torch.Generator().manual_seed(0), progress=False)
    window = data.sample_segments(20000, 10, generator=torch.Generator().manual_seed(1)).states
    changes = (window[:, 1:] - window[:, :-1]).reshape(-1, window.shape[-1]).double()
    norm = model.normalizer
    # 4096 sampled segments (40k changes, overlapping windows) against 200k: within a few percent.
    torch.testing.assert_close(norm.delta_std.double(), changes.std(0), rtol=0.06, atol=0.0)
    assert ((norm.delta_mean.double() - changes.mean(0)).abs() <= 0.06 * changes.std(0)).all()
    # Changes are far smaller than the states' own spread on position entries: the encoding rescales them.
    assert float((norm.delta_std / norm.obs_std)[:5].max()) < 0.5


def test_config_exclusions_old_checkpoints_and_round_trip(tmp_path) -> None:
    with pytest.raises(ValueError, match="anchor_states and delta_states are exclusive.*anchor_states=False"):
        WorldModelConfig.preset("cpu", "Hopper", delta_states=True, anchor_states=True, dynamics_prior=False)
    old = WorldModelConfig.preset("cpu", "Hopper", dynamics_prior=False, anchor_states=True).to_dict()
    del old["delta_states"]  # a checkpoint written before the field existed
    assert WorldModelConfig.from_dict(old).delta_states is False
    assert "normalizer.delta_std" not in WorldModel(WorldModelConfig.from_dict(old)).state_dict()

    model = _tiny()
    model.normalizer.fit_deltas(torch.randn(100, 11) * 0.2 + 1.0)
    loaded = WorldModel.load(model.save(tmp_path / "m"))
    assert loaded.config.delta_states and torch.equal(loaded.normalizer.delta_std, model.normalizer.delta_std)
    absolute = _tiny(delta_states=False)
    (tmp_path / "a").mkdir()
    absolute.save(tmp_path / "a")
    # An absolute model's weights with a delta config: the missing tensors are named.
    (tmp_path / "m" / "weights.pt").write_bytes((tmp_path / "a" / "weights.pt").read_bytes())
    with pytest.raises(CheckpointError, match="missing tensors.*delta_"):
        WorldModel.load(tmp_path / "m")


def test_sampler_returns_known_prefix_rows_exactly() -> None:
    data = EpisodeDataset.open(default_dataset_path("Hopper"))
    model = _tiny()
    WorldModelTrainer(model).fit(data, 5, generator=torch.Generator().manual_seed(0), progress=False)
    seg = data.sample_segments(6, 10, generator=torch.Generator().manual_seed(3))
    cond = Conditioning(states=seg.states, num_known_states=torch.tensor([1, 2, 3, 5, 9, 11]), actions=seg.actions,
                        rewards=seg.rewards)  # fmt: skip
    out = sample(model, cond, generator=torch.Generator().manual_seed(4))
    for i, k in enumerate(cond.num_known_states.tolist()):
        assert torch.equal(out.states[i, :k], seg.states[i, :k])
        if k <= 10:  # an unknown row is denoised, not copied
            assert not torch.equal(out.states[i, k], seg.states[i, k])
    assert torch.isfinite(out.states).all()
