"""RealEnvCollector: stitched, seeded, reproducible collection of real transitions."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agd_envs.cli import main as agd_main
from agd_envs.collector import RealEnvCollector
from agd_envs.datasets import EpisodeDataset

ROOT = Path(__file__).resolve().parents[1]


def _arrays(episode) -> tuple[np.ndarray, ...]:
    return (episode.observations, episode.actions, episode.rewards, episode.terminations, episode.truncations)


def test_same_seed_gives_identical_episode_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        with RealEnvCollector("Hopper", tmp_path / name, num_envs=4, seed=3, progress=False) as collector:
            collector.collect("random", 1200)
    a, b = EpisodeDataset.open(tmp_path / "a"), EpisodeDataset.open(tmp_path / "b")
    assert a.num_episodes == b.num_episodes > 20
    assert a.num_steps == b.num_steps == 1200
    for ea, eb in zip(a.episodes(), b.episodes()):
        for xa, xb in zip(_arrays(ea), _arrays(eb)):
            assert xa.dtype == xb.dtype and xa.tobytes() == xb.tobytes()


def test_episodes_are_stitched_real_trajectories(tmp_path: Path) -> None:
    """Replaying a seeded sub-environment's first episode in a fresh env reproduces it exactly."""
    with RealEnvCollector("Hopper", tmp_path / "d", num_envs=3, seed=11, progress=False) as collector:
        collector.collect("random", 600)
    data = EpisodeDataset.open(tmp_path / "d")
    seeded = [e for e in data.episodes() if e.seed is not None]
    assert sorted(e.seed for e in seeded) == [11, 12, 13]
    for episode in seeded:
        env = gym.make("Hopper-v5")
        obs, _ = env.reset(seed=episode.seed)
        np.testing.assert_array_equal(obs.astype(np.float32), episode.observations[0])
        for t, action in enumerate(episode.actions):
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_array_equal(obs.astype(np.float32), episode.observations[t + 1])
            assert reward == episode.rewards[t]
            assert terminated == episode.terminations[t]
        env.close()
    for episode in data.episodes():
        n = len(episode.actions)
        assert episode.observations.shape == (n + 1, 11)
        assert not episode.terminations[:-1].any() and not episode.truncations[:-1].any()
        assert episode.terminations[-1] or episode.truncations[-1]


def test_torch_module_policy_and_bad_policy_output(tmp_path: Path) -> None:
    policy = torch.nn.Sequential(torch.nn.Linear(11, 3), torch.nn.Tanh())
    with RealEnvCollector("Hopper", tmp_path / "d", num_envs=2, seed=0, progress=False) as collector:
        collector.collect(policy, 100)
        with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
            collector.collect(lambda obs: np.zeros((2, 4)), 10)
        with pytest.raises(ValueError, match="NaN or inf"):
            collector.collect(lambda obs: np.full((2, 3), np.nan), 10)
        with pytest.raises(ValueError, match="built-in policies"):
            collector.collect("greedy", 10)
    data = EpisodeDataset.open(tmp_path / "d")
    assert data.num_steps >= 100  # rejected policies stored nothing extra and lost nothing


def test_out_of_bounds_actions_are_stored_clipped(tmp_path: Path) -> None:
    with RealEnvCollector("Reacher", tmp_path / "d", num_envs=1, seed=0, progress=False) as collector:
        collector.collect(lambda obs: np.full((1, 2), 5.0), 60)
    episode = EpisodeDataset.open(tmp_path / "d").episode(0)
    assert np.all(episode.actions == 1.0)
    assert len(episode.actions) == 50 and episode.truncations[-1]


def test_shipped_dataset_prefix_regenerates_from_its_command(tmp_path: Path) -> None:
    """The card's command with a smaller budget reproduces the shipped episodes collected so far."""
    shipped = EpisodeDataset.open(ROOT / "datasets" / "hopper-mixed")
    assert shipped.metadata["description"].startswith("agd collect --task Hopper --steps 20000 --policy mixed")
    # The mixed policy spends steps // 2 on random actions; episodes finished within the first
    # 2000 random steps are identical whatever the total budget.
    agd_main(["collect", "--task", "Hopper", "--steps", "4000", "--policy", "mixed", "--num-envs", "8", "--seed", "0", "--out", str(tmp_path / "re")])
    regenerated = EpisodeDataset.open(tmp_path / "re")
    lengths = np.cumsum(regenerated.episode_lengths)
    # Episodes whose last step happened before step 2000 of the vector env (250 iterations x 8 envs).
    n_common = 0
    for i, episode in enumerate(regenerated.episodes()):
        other = shipped.episode(i)
        if not all(x.tobytes() == y.tobytes() for x, y in zip(_arrays(episode), _arrays(other))):
            break
        n_common += 1
    assert n_common >= 80, f"only {n_common} leading episodes identical"
    assert lengths[n_common - 1] <= 2000 + 8 * 40


def test_state_dict_resumes_collection_bit_identically(tmp_path: Path) -> None:
    """Stop mid-episode, restore into a fresh collector: the continuation equals an uninterrupted run."""
    import json

    with RealEnvCollector("Hopper", tmp_path / "full", num_envs=2, seed=5, progress=False) as full:
        full_policy = full.scripted_policy("sine")
        full.collect(full_policy, 300)
        full.collect(full_policy, 300)
    first = RealEnvCollector("Hopper", tmp_path / "split", num_envs=2, seed=5, progress=False)
    policy = first.scripted_policy("sine")
    first.collect(policy, 300)
    state = json.loads(json.dumps(first.state_dict()))
    policy_state = (policy.rng.bit_generator.state, policy.t, policy._params)
    first.writer.close()
    first.envs.close()
    second = RealEnvCollector("Hopper", tmp_path / "split", num_envs=2, seed=5, progress=False)
    second.load_state_dict(state)
    policy.rng.bit_generator.state, policy.t, policy._params = policy_state
    second.collect(policy, 300)
    second.close()
    a, b = EpisodeDataset.open(tmp_path / "full"), EpisodeDataset.open(tmp_path / "split")
    assert a.num_episodes == b.num_episodes and a.num_steps == b.num_steps == 600
    for ea, eb in zip(a.episodes(), b.episodes()):
        for xa, xb in zip(_arrays(ea), _arrays(eb)):
            assert xa.tobytes() == xb.tobytes()
