"""agents.recent: the newest part of a run's dataset (start states, the critic's real episodes, recent model batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from agd_envs.datasets import EpisodeDataset
from agd_envs.defaults import default_dataset_path
from agents.recent import RecentMix, critic_rows, recent_rows, recent_transitions
from agents.trainer import AGDTrainer, TrainerConfig, run_label


@pytest.fixture(scope="module")
def reacher() -> EpisodeDataset:
    """The shipped Reacher dataset: 800 episodes of 50 steps, in collection order."""
    return EpisodeDataset.open(default_dataset_path("Reacher"))


def newest_share(data: EpisodeDataset, states: torch.Tensor, episodes: int) -> float:
    """The share of segments whose first state is one of the newest ``episodes`` episodes' observations."""
    newest = np.concatenate([data.episode(i).observations for i in range(data.num_episodes - episodes, data.num_episodes)])
    s0 = states[:, 0].numpy()
    distance = np.abs(newest[None] - s0[:, None]).max(-1).min(1)
    return float((distance < 1e-6).mean())


def test_recent_start_states_come_from_the_newest_episodes(reacher: EpisodeDataset) -> None:
    starts = reacher.segment_starts(10)
    rows = recent_rows(reacher, 10, 500, 4096, torch.Generator().manual_seed(0))
    assert set(starts[rows.numpy(), 0].tolist()) == set(range(790, 800))  # the last 10 episodes hold the last 500 transitions
    assert set(starts[recent_rows(reacher, 10, 1, 64, torch.Generator()).numpy(), 0].tolist()) == {799}


def test_recent_transitions_are_the_newest_whole_episodes_end_to_end(reacher: EpisodeDataset) -> None:
    rows = recent_transitions(reacher, 120)
    assert rows["obs"].shape == (150, 1, 10) and rows["rewards"].shape == (150, 1)  # 3 whole episodes cover 120 steps
    last = reacher.episode(reacher.num_episodes - 1)
    np.testing.assert_array_equal(rows["next_obs"][-50:, 0], last.observations[1:])
    np.testing.assert_array_equal(rows["obs"][50:100, 0], reacher.episode(reacher.num_episodes - 2).observations[:-1])
    assert rows["truncated"][:, 0].nonzero()[0].tolist() == [49, 99, 149]  # each episode's end, nothing between
    np.testing.assert_array_equal(rows["actions"][-50:, 0], last.actions)  # the executed actions, for the actor's update
    assert sorted(critic_rows(rows)) == ["next_obs", "obs", "rewards", "terminated", "truncated"]
    assert recent_transitions(reacher, 10**9)["obs"].shape[0] == reacher.num_steps  # a window beyond the data: all of it


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_recent_mix_draws_its_fraction_from_the_window_and_the_rest_uniformly(reacher: EpisodeDataset, fraction: float) -> None:
    batch = RecentMix(reacher, 500, fraction).sample_segments(2048, 10, generator=torch.Generator().manual_seed(1))
    assert batch.states.shape == (2048, 11, 10)
    # the uniform rest lands in the newest 10 of 800 episodes with probability 10/800: share = f + (1 - f) / 80
    expected = fraction + (1 - fraction) / 80
    sd = (1 - fraction) * np.sqrt((1 / 80) * (79 / 80) / ((1 - fraction) * 2048)) if fraction < 1 else 0.0
    assert abs(newest_share(reacher, batch.states, 10) - expected) <= 4 * sd + 1e-9


def test_recent_mix_keeps_the_whole_dataset_statistics(reacher: EpisodeDataset) -> None:
    np.testing.assert_array_equal(RecentMix(reacher, 500, 1.0).statistics().obs_mean, reacher.statistics().obs_mean)


def test_recent_mix_and_the_trainer_refuse_bad_settings(reacher: EpisodeDataset) -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        RecentMix(reacher, 500, 1.5)
    with pytest.raises(ValueError, match="window must be a positive"):
        RecentMix(reacher, 0, 0.5)
    with pytest.raises(ValueError, match="set start_window"):
        TrainerConfig.for_task("Reacher", model_recent_fraction=0.5)
    with pytest.raises(ValueError, match=r"model_recent_fraction must be in \[0, 1\]"):
        TrainerConfig.for_task("Reacher", model_recent_fraction=-0.1, start_window=500)


def test_the_trainer_fits_its_model_on_recent_batches_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agd_envs.training import WorldModelTrainer

    sources = []
    monkeypatch.setattr(WorldModelTrainer, "fit", lambda self, source, steps, **kwargs: sources.append(source) or [])
    config = TrainerConfig.for_task("Reacher", steps=200, iteration_steps=200, eval_every=200, checkpoint_every=200,
                                    eval_episodes=1, model_pretrain_updates=1, imagination_batch=8, start_window=300, guide="none",
                                    model_recent_fraction=0.75, model=TINY_MODEL)
    assert run_label(config) == "agd-none-recent0.75"
    trainer = AGDTrainer(config, tmp_path / "run", progress=False)
    trainer.train()
    assert sources and all(isinstance(s, RecentMix) and (s.window, s.fraction) == (300, 0.75) for s in sources)
