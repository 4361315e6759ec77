"""The batched termination rules agree with the real MuJoCo v5 envs on real transitions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agd_envs.tasks import TASKS, get_task

STEPS_PER_TASK = 20_000


def _rollout_terminations(env_id: str, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Step the real env with random and sinusoid-perturbed actions; return next-obs and terminated."""
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    obs_list, term_list = [], []
    env.reset(seed=seed)
    t, phase, amp = 0, rng.uniform(0, 2 * np.pi, size=low.shape), rng.uniform(0.2, 1.0)
    for i in range(steps):
        if i % 2000 < 1000:  # uniform random actions
            action = rng.uniform(low, high)
        else:  # a perturbed sinusoid gait: longer, more varied episodes
            action = np.clip(amp * np.sin(0.3 * t + phase) + 0.3 * rng.normal(size=low.shape), low, high)
        obs, _, terminated, truncated, _ = env.step(action.astype(np.float32))
        obs_list.append(obs)
        term_list.append(terminated)
        t += 1
        if terminated or truncated:
            env.reset()
            t, phase, amp = 0, rng.uniform(0, 2 * np.pi, size=low.shape), rng.uniform(0.2, 1.0)
    env.close()
    return np.asarray(obs_list), np.asarray(term_list)


@pytest.mark.parametrize("name", list(TASKS))
def test_termination_matches_real_env(name: str) -> None:
    task = get_task(name)
    obs, terminated = _rollout_terminations(task.env_id, STEPS_PER_TASK, seed=7)
    # float64 as the env returns, and float32 as datasets and DreamEnv store observations.
    for dtype in (torch.float64, torch.float32):
        predicted = task.terminated(torch.as_tensor(obs, dtype=dtype)).numpy()
        agreement = float(np.mean(predicted == terminated))
        # Known possible disagreements: Hopper checks unclipped qvel against +-100 while the
        # observation clips qvel to +-10 (unobservable, never hit here); float32 rounding of a
        # height or angle within ~1e-7 of a threshold. Neither occurred in 20k steps per task.
        print(f"{name} {dtype}: agreement {agreement:.5f} over {len(terminated)} steps")
        assert agreement >= 0.999, f"{name} {dtype}: agreement {agreement:.5f}"
    if name in ("Hopper", "Walker2d"):
        assert terminated.sum() > 100, "the rollout must exercise the termination rule"
    else:
        assert not terminated.any()


def test_get_task_accepts_aliases_and_suggests() -> None:
    assert get_task("Hopper-v5") is TASKS["Hopper"]
    assert get_task("AGD-Dream-Walker2d") is TASKS["Walker2d"]
    assert get_task("halfcheetah") is TASKS["HalfCheetah"]
    with pytest.raises(ValueError, match="Did you mean 'Hopper'"):
        get_task("Hoper")


def test_task_dims_match_real_spaces() -> None:
    for task in TASKS.values():
        env = gym.make(task.env_id)
        assert env.observation_space.shape == (task.obs_dim,)
        assert env.action_space.shape == (task.act_dim,)
        assert np.all(env.action_space.low == task.action_low)
        assert np.all(env.action_space.high == task.action_high)
        assert env.spec.max_episode_steps == task.max_episode_steps
        env.close()


def test_terminated_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected 11"):
        get_task("Hopper").terminated(torch.zeros(4, 17))


def test_a_termination_margin_moves_each_health_bound_inwards_by_its_fraction() -> None:
    hopper, walker = get_task("Hopper"), get_task("Walker2d")
    obs = torch.zeros(6, 11)
    obs[:, 0] = torch.tensor([1.25, 0.80, 0.81, 1.25, 1.25, 1.25])  # height: bound 0.7 -> 0.805 at margin 0.15
    obs[:, 1] = torch.tensor([0.0, 0.0, 0.0, 0.18, -0.169, 0.19])  # angle: bound 0.2 -> 0.17
    assert hopper.terminated(obs).tolist() == [False] * 6
    assert hopper.terminated(obs, 0.15).tolist() == [False, True, False, True, False, True]
    w = torch.zeros(2, 17)
    w[:, 0] = torch.tensor([1.75, 1.65])  # Walker2d's upper height bound 2.0 -> 1.7
    assert walker.terminated(w).tolist() == [False, False] and walker.terminated(w, 0.15).tolist() == [True, False]
    # on real states, a margin only adds terminations, more of them the larger it is
    real_obs, real_terminated = _rollout_terminations(hopper.env_id, 2000, seed=3)
    counts = [int(hopper.terminated(torch.as_tensor(real_obs), m).sum()) for m in (0.0, 0.1, 0.2)]
    assert counts[0] == int(real_terminated.sum()) and counts[0] < counts[1] < counts[2]
    assert hopper.terminated(torch.as_tensor(real_obs), 0.1)[torch.as_tensor(real_terminated)].all()
    loose = hopper.terminated(torch.as_tensor(real_obs), -1.0)  # bounds outwards: |angle| < 0.4, height > 0
    assert int(loose.sum()) < counts[0] and not loose[~torch.as_tensor(real_terminated)].any()
    with pytest.raises(ValueError, match=r"Hopper: termination margin must be in \[-1, 1\) \(a fraction of each health bound\), got -1.5"):
        hopper.terminated(obs, -1.5)
