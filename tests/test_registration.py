"""Registered ids: every versioned id, the ones that construct from the id alone, and an id-only PPO client."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from _crash_writer import rollout_episode
from agd_envs.datasets import DatasetWriter
from agd_envs.defaults import SHIPPED_DATASET, default_model_dir
from agd_envs.registration import CRITIC_FREE, GUIDE_IDS, dream_id, register_envs
from agd_envs.tasks import TASKS
from agd_envs.world_model import WorldModel, WorldModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ID_ONLY = [dream_id(task, guide) for task in TASKS for guide in CRITIC_FREE]


@pytest.fixture(scope="module", autouse=True)
def default_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What ``gym.make(id)`` alone reads, in temp dirs: a tiny default model and a small real dataset per task."""
    root = tmp_path_factory.mktemp("defaults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGD_ENVS_CACHE", str(root / "cache"))
        patch.setenv("AGD_ENVS_DATASETS", str(root / "datasets"))
        for task in TASKS.values():
            env = gym.make(task.env_id, max_episode_steps=12)
            env.action_space.seed(0)
            with DatasetWriter(root / "datasets" / SHIPPED_DATASET.format(task=task.name.lower()), task) as writer:
                for k in range(3):
                    writer.add_episode(**rollout_episode(env, seed=k))
            config = WorldModelConfig.preset("cpu", task, width=32, depth=1, embed_dim=16, batch_size=32)
            torch.manual_seed(0)
            WorldModel(config).save(default_model_dir(task))
        yield root


def test_every_task_has_its_versioned_ids() -> None:
    ids = register_envs()
    for task in TASKS.values():
        for guide, part in GUIDE_IDS.items():
            spec = gym.spec(f"AGD-Dream-{task.name}-{part}-v0")
            assert (spec.version, spec.kwargs) == (0, {"task": task.name, "guide": guide})
        assert gym.spec(task.dream_id).kwargs == {"task": task.name}  # the unversioned id, kept for older code
    assert len(ids) == len(set(ids)) == 5 * len(TASKS)


@pytest.mark.parametrize("env_id", ID_ONLY)
def test_id_alone_makes_a_dream_that_steps(env_id: str) -> None:
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == env.observation_space.shape and np.isfinite(obs).all() and np.isfinite(reward)
    assert info["guide"] == gym.spec(env_id).kwargs["guide"] and "advantage" not in info
    vector = gym.make_vec(env_id, num_envs=3)  # the native vector entry point, id alone too
    vector.reset(seed=0)
    assert vector.step(vector.action_space.sample())[0].shape == (3, *env.observation_space.shape)


@pytest.mark.parametrize("env_id", ["AGD-Dream-Hopper-EAG-v0", "AGD-Dream-Walker2d-SAG-v0", "AGD-Dream-Reacher"])
def test_advantage_guided_ids_need_a_critic_and_name_the_ids_that_do_not(env_id: str) -> None:
    task = gym.spec(env_id).kwargs["task"]
    with pytest.raises(ValueError, match=f"critic=.*use AGD-Dream-{task}-Unguided-v0 or AGD-Dream-{task}-Reward-v0"):
        gym.make(env_id)
    with pytest.raises(ValueError, match=f"AGD-Dream-{task}-Unguided-v0"):
        gym.make_vec(env_id, num_envs=2)


def cleanrl_env(env_id: str, gamma: float) -> Callable[[], gym.Env]:
    """CleanRL ppo_continuous_action.py's make_env: the id alone, then its wrapper stack."""

    def thunk() -> gym.Env:
        env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


class Agent(nn.Module):
    """CleanRL's continuous-action actor-critic, small."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, 1))
        self.actor_mean = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, act_dim))
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """The Gaussian policy at ``obs`` (``B x S``)."""
        mean = self.actor_mean(obs)
        return torch.distributions.Normal(mean, self.actor_logstd.expand_as(mean).exp())


def test_id_only_ppo_over_sync_vector_env_with_cleanrl_wrappers() -> None:
    num_envs, num_steps, gamma, lam, epochs = 2, 24, 0.99, 0.95, 4
    envs = gym.vector.SyncVectorEnv([cleanrl_env("AGD-Dream-HalfCheetah-Unguided-v0", gamma) for _ in range(num_envs)])
    torch.manual_seed(0)
    agent = Agent(17, 6)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32)
    done = torch.zeros(num_envs)
    lengths, value_losses = [], []
    for _ in range(3):
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "act", "logp", "rew", "done", "value")}
        for _ in range(num_steps):
            with torch.no_grad():
                dist = agent.dist(obs)
                action = dist.sample()
                value = agent.critic(obs).squeeze(-1)
            next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
            assert next_obs.shape == (num_envs, 17) and np.all(np.abs(next_obs) <= 10) and np.isfinite(reward).all()
            for key, v in zip(rows, (obs, action, dist.log_prob(action).sum(-1), torch.as_tensor(reward), done, value)):
                rows[key].append(v.float())
            if "episode" in infos:
                lengths += infos["episode"]["l"][infos["_episode"]].tolist()
            obs = torch.as_tensor(next_obs, dtype=torch.float32)
            done = torch.as_tensor(terminated | truncated, dtype=torch.float32)
        batch = {k: torch.stack(v) for k, v in rows.items()}  # T x N
        with torch.no_grad():
            next_value = agent.critic(obs).squeeze(-1)
        advantages, last = torch.zeros(num_steps, num_envs), torch.zeros(num_envs)
        for t in reversed(range(num_steps)):
            not_done = 1.0 - (done if t == num_steps - 1 else batch["done"][t + 1])
            following = next_value if t == num_steps - 1 else batch["value"][t + 1]
            delta = batch["rew"][t] + gamma * following * not_done - batch["value"][t]
            advantages[t] = last = delta + gamma * lam * not_done * last
        returns = (advantages + batch["value"]).flatten()
        flat_obs, flat_act, old_logp = batch["obs"].flatten(0, 1), batch["act"].flatten(0, 1), batch["logp"].flatten()
        adv = advantages.flatten()
        value_loss = lambda: ((agent.critic(flat_obs).squeeze(-1) - returns) ** 2).mean()  # noqa: E731
        before = value_loss().item()
        for _ in range(epochs):
            for rows_ in torch.randperm(len(adv)).chunk(2):
                ratio = (agent.dist(flat_obs[rows_]).log_prob(flat_act[rows_]).sum(-1) - old_logp[rows_]).exp()
                a = (adv[rows_] - adv[rows_].mean()) / (adv[rows_].std() + 1e-8)
                policy_loss = torch.max(-a * ratio, -a * ratio.clamp(0.8, 1.2)).mean()
                loss = policy_loss + 0.5 * value_loss()
                assert torch.isfinite(loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        value_losses.append((before, value_loss().item()))
    envs.close()
    # HalfCheetah never terminates: every dream is truncated at the horizon H = 10, NEXT_STEP autoreset in between
    assert len(lengths) == num_envs * 6 and set(lengths) == {10}
    assert all(after < before for before, after in value_losses), value_losses
