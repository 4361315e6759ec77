"""The per-transition reward head: it learns the action's cost, guides move states through it, checkpoints."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agd_envs.guides import get_guide, guide_gradient, segment_log_f
from agd_envs.tasks import get_task
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import WorldModel, WorldModelConfig
from agents.trainer import TrainerConfig, run_label

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reward_fidelity import measure, real_rewards, start_states  # noqa: E402  (benchmarks/ is not a package on sys.path)


@pytest.fixture(scope="module")
def cheetah_with_head() -> WorldModel:
    """A cpu-preset HalfCheetah model with a reward head after 300 updates on the shipped data (~10-20 s).

    Without the known control term (``known_action_cost=False``): these tests ask whether the head learns
    the action's price from data by itself (tests/test_action_cost.py covers the known term). Without the
    dynamics prior, whose next states the head would read: one this young still misjudges how a saturated
    action moves the cheetah (tests/test_action_cost.py's fixture)."""
    torch.manual_seed(0)
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    model = WorldModel(WorldModelConfig.preset("cpu", "HalfCheetah", reward_head=True, known_action_cost=False,
                                               dynamics_prior=False, anchor_states=True))  # fmt: skip
    WorldModelTrainer(model).fit(data, 300, generator=torch.Generator().manual_seed(0), progress=False)
    return model


def test_the_head_prices_saturated_actions_as_the_real_env_does(cheetah_with_head: WorldModel) -> None:
    # HalfCheetah's control cost is 0.1 |a|^2: +-1 on all 6 joints costs 0.6 per step more than a = 0.
    # The jointly denoised rewards of the same model miss most of it (README: -0.11 after 5000 updates).
    task = get_task("HalfCheetah")
    starts = start_states(task, 64, seed=0)
    head = measure(cheetah_with_head, task, starts, seed=0, steps=None)["price_of_saturating"]
    denoised_only = copy.deepcopy(cheetah_with_head)
    denoised_only.reward_head = None
    entries = measure(denoised_only, task, starts, seed=0, steps=None)["price_of_saturating"]
    assert head["real"] == pytest.approx(-0.60, abs=0.05)
    assert head["imagined"] == pytest.approx(head["real"], abs=0.15), head
    assert abs(entries["imagined"] - entries["real"]) > 2 * abs(head["imagined"] - head["real"]), (head, entries)


def test_reward_guide_moves_states_along_the_heads_gradient(cheetah_with_head: WorldModel) -> None:
    model = cheetah_with_head
    layout = model.layout
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, layout.x_dim, generator=gen, dtype=torch.float64)
    actions = torch.rand(4, layout.horizon, model.task.act_dim, generator=gen, dtype=torch.float64) * 2 - 1
    model = copy.deepcopy(model).double()

    def reward_fn(states: torch.Tensor) -> torch.Tensor:
        return model.head_rewards(states, actions)

    guide = get_guide("reward").for_reward_model()
    kwargs = dict(layout=layout, normalizer=model.normalizer, task=model.task, critic=None, gamma=0.99, reward_fn=reward_fn)
    grad = guide_gradient(guide, x, **kwargs)
    assert guide.moves == "states" and get_guide("eag").for_reward_model() is get_guide("eag")
    assert torch.all(grad[:, layout.num_state_entries :] == 0)
    assert grad[:, : layout.num_state_entries].abs().sum() > 0
    for entry in (3, layout.obs_dim + 8, 5 * layout.obs_dim + 1):  # central differences on a few state entries
        step = torch.zeros_like(x)
        step[:, entry] = 1e-5
        numeric = (segment_log_f(guide, x + step, **kwargs) - segment_log_f(guide, x - step, **kwargs)) / 2e-5
        torch.testing.assert_close(grad[:, entry], numeric, rtol=1e-4, atol=1e-7)


def test_head_rewards_use_the_executed_actions(cheetah_with_head: WorldModel) -> None:
    states = torch.randn(2, cheetah_with_head.layout.horizon + 1, 17)
    inside = torch.ones(2, cheetah_with_head.layout.horizon, 6)
    with torch.no_grad():
        clipped = cheetah_with_head.head_rewards(states, inside)
        beyond = cheetah_with_head.head_rewards(states, 7.0 * inside)
    torch.testing.assert_close(clipped, beyond)


def test_a_model_without_head_says_how_to_get_one() -> None:
    model = WorldModel(tiny_model_config("Reacher"))
    with pytest.raises(ValueError, match="reward_head=True"):
        model.head_rewards(torch.zeros(1, 11, 10), torch.zeros(1, 10, 2))


def test_checkpoints_keep_the_head_and_older_ones_load_without_it(tmp_path: Path) -> None:
    config = tiny_model_config("Reacher", reward_head=True)
    model = WorldModel(config)
    loaded = WorldModel.load(model.save(tmp_path / "head"))
    for (name, a), (_, b) in zip(model.reward_head.state_dict().items(), loaded.reward_head.state_dict().items()):
        assert torch.equal(a, b), name
    plain = WorldModel(tiny_model_config("Reacher")).save(tmp_path / "old")
    meta = json.loads((plain / "config.json").read_text())
    del meta["config"]["reward_head"]  # what a checkpoint from before the field looks like
    (plain / "config.json").write_text(json.dumps(meta))
    assert WorldModel.load(plain).reward_head is None


def test_runs_with_a_head_are_labelled_and_keep_the_task_defaults() -> None:
    config = TrainerConfig.for_task("Reacher", guide="eag", model={"reward_head": True})
    assert config.model == {**TrainerConfig.for_task("Reacher").model, "reward_head": True}  # merged, not replaced
    assert config.model["reward_weight"] == 10.0 and config.model["anchor_states"]
    assert run_label(config) == "agd-eag-rhead"
    assert np.isclose(TrainerConfig.for_task("Reacher").model["reward_weight"], 10.0)


def test_dream_env_rewards_come_from_the_head(cheetah_with_head: WorldModel) -> None:
    # Closed loop: the same start states stepped once with a = 0 and with a = +-1, in the dream and for real.
    from agd_envs.dream_env import DreamVectorEnv

    task = get_task("HalfCheetah")
    data = EpisodeDataset.open(default_dataset_path("HalfCheetah"))
    starts = start_states(task, 64, seed=1)
    s0 = np.stack([s[2] for s in starts])
    signs = np.random.default_rng(0).choice([-1.0, 1.0], (64, 6)).astype(np.float32)
    dream, real = {}, {}
    for name, action in (("zero", np.zeros_like(signs)), ("bang", signs)):
        env = DreamVectorEnv("HalfCheetah", 64, model=cheetah_with_head, dataset=data, guide="none")
        env.reset(seed=0, options={"initial_state": s0})
        dream[name] = env.step(action)[1]
        real[name] = real_rewards(task, starts, action[:, None])[0][:, 0]
    dream_price, real_price = (float(np.mean(r["bang"] - r["zero"])) for r in (dream, real))
    assert dream_price == pytest.approx(real_price, abs=0.15), (dream_price, real_price)
