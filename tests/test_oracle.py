"""The oracle world model (agd_envs/oracle.py): the real simulator behind the world-model interface."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from agd_envs.cli import build_parser
from agd_envs.guides import advantages
from agd_envs.oracle import OracleWorldModel, Simulator
from agd_envs.sampling import imagine
from agd_envs.tasks import TASKS, get_task
from agents.returns import alive_mask
from agents.trainer import AGDTrainer, TrainerConfig, run_label

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


class Replay:
    """A deterministic actor that returns the recorded actions ``T x A`` one step per call (batch 1)."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions, self.calls = torch.as_tensor(actions), 0

    def __call__(self, states: Tensor) -> Tensor:
        action = self.actions[self.calls].expand(len(states), -1)
        self.calls += 1
        return action


class GaussianActor(nn.Module):
    """Normal(tanh(s W), std) over actions: a small policy with a state-dependent mean."""

    def __init__(self, obs_dim: int, act_dim: int, std: float) -> None:
        super().__init__()
        self.mean = nn.Linear(obs_dim, act_dim, dtype=F64)
        self.std = std

    def forward(self, states: Tensor) -> Independent:
        mean = torch.tanh(self.mean(states))
        return Independent(Normal(mean, torch.full_like(mean, self.std)), 1)


def linear_critic(states: Tensor) -> Tensor:
    """A fixed critic V(s) = sum(s)."""
    return states.sum(dim=-1)


def real_steps(name: str, steps: int, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """A real env's trajectory from a seeded reset with uniform random actions in +-scale (obs ``T+1 x S``)."""
    env = gymnasium.make(get_task(name).env_id)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"obs": [obs], "actions": [], "rewards": [], "terminated": []}
    for _ in range(steps):
        action = rng.uniform(-scale, scale, env.action_space.shape)
        obs, reward, terminated, _, _ = env.step(action)
        for key, value in zip(("obs", "actions", "rewards", "terminated"), (obs, action, reward, terminated)):
            rows[key].append(value)
    env.close()
    return {k: np.array(v) for k, v in rows.items()}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_restored_states_step_like_the_real_env(name: str) -> None:
    task, steps, clipped_qvel = get_task(name), 8, name in ("Hopper", "Walker2d")
    real = real_steps(name, steps, scale=0.2 if clipped_qvel else 1.0)
    assert not real["terminated"].any()
    if clipped_qvel:  # their observations clip qvel to +-10: stay where the clip does not bite
        nq = task.obs_dim // 2 + 1
        assert np.abs(real["obs"][:, nq - 1 :]).max() < 10.0
    oracle = OracleWorldModel(name)
    # Every recorded transition restored from its observation, as one batch.
    next_obs, rewards, terminated = oracle.step(torch.as_tensor(real["obs"][:-1]), torch.as_tensor(real["actions"]))
    np.testing.assert_allclose(next_obs.numpy(), real["obs"][1:], rtol=0, atol=1e-8)
    np.testing.assert_allclose(rewards.numpy(), real["rewards"], rtol=0, atol=1e-8)
    assert not terminated.any()
    # The whole trajectory rolled out from its first observation.
    segments = oracle.rollout(torch.as_tensor(real["obs"][:1]), Replay(real["actions"]), horizon=steps)
    np.testing.assert_allclose(segments.states[0].numpy(), real["obs"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(segments.rewards[0].numpy(), real["rewards"], rtol=0, atol=1e-8)
    np.testing.assert_array_equal(segments.actions[0].numpy(), real["actions"])


def test_rollout_shapes_determinism_advantages_and_clipping() -> None:
    task, batch = get_task("Hopper"), 6
    oracle = OracleWorldModel(task)
    s0 = torch.as_tensor(real_steps("Hopper", batch - 1)["obs"])
    actor = GaussianActor(task.obs_dim, task.act_dim, std=2.0)

    def run(seed: int):
        return oracle.rollout(s0, actor, generator=torch.Generator().manual_seed(seed), critic=linear_critic)

    first, again, other = run(0), run(0), run(1)
    h = oracle.config.horizon
    assert first.states.shape == (batch, h + 1, task.obs_dim) and first.actions.shape == (batch, h, task.act_dim)
    assert first.rewards.shape == first.terminations.shape == first.advantages.shape == (batch, h)
    assert first.terminations.dtype == torch.bool and first.states.dtype == F64
    torch.testing.assert_close(first.states[:, 0], s0, rtol=0, atol=0)
    for name in ("states", "actions", "rewards", "terminations", "advantages"):
        torch.testing.assert_close(getattr(first, name), getattr(again, name), rtol=0, atol=0)
    assert not torch.equal(first.actions, other.actions)
    expected = advantages(first.states, first.rewards, linear_critic, first.terminations, 0.99)
    torch.testing.assert_close(first.advantages, expected, rtol=0, atol=0)
    # std 2: many samples lie outside [-1, 1]; they are kept, the env executes them clipped.
    assert first.actions.abs().max() > 1.0


def test_unclipped_actions_are_kept_and_executed_clipped() -> None:
    task = get_task("Hopper")
    oracle = OracleWorldModel(task)
    s0 = torch.as_tensor(real_steps("Hopper", 3)["obs"])
    outside = oracle.rollout(s0, lambda s: torch.full((len(s), task.act_dim), 3.0, dtype=F64), horizon=4)
    edge = oracle.rollout(s0, lambda s: torch.full((len(s), task.act_dim), 1.0, dtype=F64), horizon=4)
    assert bool((outside.actions == 3.0).all())
    torch.testing.assert_close(outside.states, edge.states, rtol=0, atol=0)
    torch.testing.assert_close(outside.rewards, edge.rewards, rtol=0, atol=0)  # control cost of the executed action


def test_hopper_terminates_and_holds_the_terminal_state() -> None:
    task = get_task("Hopper")
    oracle = OracleWorldModel(task)
    s0 = torch.as_tensor(real_steps("Hopper", 0)["obs"]).repeat(3, 1)
    s0[:, 1] = torch.tensor([0.15, 0.1, 0.0])  # torso angle, near the +-0.2 health bound
    s0[:, 7] = torch.tensor([8.0, 5.0, 0.0])  # ... and rotating towards it
    segments = oracle.rollout(s0, lambda s: torch.zeros(len(s), task.act_dim, dtype=F64), horizon=10)
    done = segments.terminations
    assert bool(done[:2].any(dim=1).all()) and not bool(done[2].any())
    torch.testing.assert_close(done, task.terminated(segments.states[:, 1:]), rtol=0, atol=0)
    for b in range(2):
        first = int(done[b].nonzero()[0])
        assert bool(done[b, first:].all()), "terminations stay True after the first"
        assert bool((segments.states[b, first + 2 :] == segments.states[b, first + 1]).all()), "terminal state held"
        assert bool((segments.rewards[b, first + 1 :] == 0).all()) and segments.rewards[b, first] != 0
        assert int(alive_mask(done)[b].sum()) == first + 1  # what the A2C learns from: up to the terminating step


def test_imagine_dispatches_to_the_oracle_and_refuses_guides() -> None:
    task = get_task("Reacher")
    oracle = OracleWorldModel(task)
    assert isinstance(oracle, Simulator)
    s0 = torch.as_tensor(real_steps("Reacher", 3)["obs"])
    actor = GaussianActor(task.obs_dim, task.act_dim, std=0.3)
    for guide in ("eag", "sag", "reward"):
        with pytest.raises(ValueError, match=f"guide '{guide}'.*not differentiable.*only guide 'none'"):
            imagine(oracle, s0, actor, linear_critic, guide=guide)
    imagined = imagine(oracle, s0, actor, linear_critic, guide="none", generator=torch.Generator().manual_seed(5))
    direct = oracle.rollout(s0, actor, generator=torch.Generator().manual_seed(5), critic=linear_critic)
    torch.testing.assert_close(imagined.states, direct.states, rtol=0, atol=0)
    torch.testing.assert_close(imagined.advantages, direct.advantages, rtol=0, atol=0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    oracle = OracleWorldModel("Walker2d")
    loaded = OracleWorldModel.load(oracle.save(tmp_path / "model"), task="Walker2d")
    assert loaded.task == oracle.task and loaded.config == oracle.config
    with pytest.raises(ValueError, match="oracle for 'Walker2d', not 'Hopper'"):
        OracleWorldModel.load(tmp_path / "model", task="Hopper")


def test_oracle_trainer_run_fits_no_model(tmp_path: Path) -> None:
    config = TrainerConfig.for_task(
        "Reacher", world_model="oracle", guide="none", steps=1000, iteration_steps=500, eval_every=500,
        checkpoint_every=500, eval_episodes=2, agent_updates_per_step=0.01, imagination_batch=32,
    )  # fmt: skip
    trainer = AGDTrainer(config, tmp_path / "run", progress=False)
    rows = trainer.train()
    trainer.collector.close(keep_partial=False)  # train() leaves the dataset writer (and its lock) open
    assert len(rows) == 3  # the evaluation before training, then one per iteration
    assert {row["algo"] for row in rows} == {"agd-oracle"}
    assert float(rows[-1]["seconds_model"]) < 1e-3 and float(rows[-1]["seconds_imagine"]) > 0
    assert np.isfinite(float(rows[-1]["actor_loss"]))
    assert (tmp_path / "run" / "checkpoint" / "model" / "oracle.json").is_file()
    resumed = AGDTrainer(config, tmp_path / "run", resume=True, progress=False)  # loads the oracle checkpoint
    assert isinstance(resumed.model, OracleWorldModel) and resumed.online_steps == 1000
    assert resumed.real_steps == 1000 + resumed.initial_steps > 1000  # the shipped warm start counts


def test_oracle_config_errors_and_cli() -> None:
    with pytest.raises(ValueError, match="oracle world model is not differentiable and serves only guide 'none'"):
        TrainerConfig(world_model="oracle", guide="eag")
    with pytest.raises(ValueError, match="closed-loop' is not supported with the oracle"):
        TrainerConfig(world_model="oracle", guide="none", imagination="closed-loop")
    with pytest.raises(ValueError, match="world_model must be one of"):
        TrainerConfig(world_model="perfect")
    assert run_label(TrainerConfig(world_model="oracle", guide="none")) == "agd-oracle"
    args = build_parser().parse_args(["train", "--task", "Reacher", "--world-model", "oracle", "--out", "x"])
    assert args.world_model == "oracle"
