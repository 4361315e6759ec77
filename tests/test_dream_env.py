"""DreamEnv / DreamVectorEnv: Gymnasium API, closed-loop semantics, autoreset modes, guidance, bad input.

Tiny models on tiny real datasets: only mechanics are tested here, not model quality.
"""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from agd_envs import defaults
from agd_envs.collector import RealEnvCollector
from agd_envs.datasets import EpisodeDataset
from agd_envs.dream_env import CRITIC_SIGNATURE, DreamEnv, DreamVectorEnv
from agd_envs.registration import ENTRY_POINT, VECTOR_ENTRY_POINT, register_envs
from agd_envs.tasks import TASKS
from agd_envs.training import WorldModelTrainer
from agd_envs.world_model import CheckpointError, WorldModel

register_envs()  # agd_envs/__init__.py does this on import; harmless twice

W_HOPPER = torch.linspace(-1.0, 1.0, 11)


def linear_critic(obs: torch.Tensor) -> torch.Tensor:
    """V(s) = w . s, differentiable."""
    return obs @ W_HOPPER.to(obs.device)


def _dataset(tmp_path_factory: pytest.TempPathFactory, task: str, steps: int) -> EpisodeDataset:
    root = tmp_path_factory.mktemp(task.lower()) / f"{task.lower()}-mixed"  # the shipped-dataset name default_dataset_path looks for
    with RealEnvCollector(task, root, seed=0, progress=False) as collector:
        collector.collect("random", steps)
    return EpisodeDataset.open(root)


@pytest.fixture(scope="module")
def hopper_data(tmp_path_factory: pytest.TempPathFactory) -> EpisodeDataset:
    return _dataset(tmp_path_factory, "Hopper", 1200)


@pytest.fixture(scope="module")
def cheetah_data(tmp_path_factory: pytest.TempPathFactory) -> EpisodeDataset:
    return _dataset(tmp_path_factory, "HalfCheetah", 200)  # one 200-step episode: never terminates


@pytest.fixture(scope="module")
def hopper_model(hopper_data: EpisodeDataset) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(tiny_model_config("Hopper"))
    WorldModelTrainer(model).fit(hopper_data, 5, progress=False, generator=torch.Generator().manual_seed(0))
    return model


@pytest.fixture(scope="module")
def cheetah_model(cheetah_data: EpisodeDataset) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(tiny_model_config("HalfCheetah"))
    model.normalizer.fit(cheetah_data.statistics())  # untrained network: mechanics only
    return model


@pytest.fixture
def hopper_kwargs(hopper_model: WorldModel, hopper_data: EpisodeDataset) -> dict:
    return dict(model=hopper_model, dataset=hopper_data, critic=linear_critic)


@pytest.fixture
def cheetah_kwargs(cheetah_model: WorldModel, cheetah_data: EpisodeDataset) -> dict:
    return dict(model=cheetah_model, dataset=cheetah_data, guide="none")


def start_states(data: EpisodeDataset, horizon: int) -> np.ndarray:
    """Every s_i that begins a horizon-step window (i <= n - H), as float32 rows."""
    rows = [ep.observations[: ep.num_steps - horizon + 1] for ep in data.episodes() if ep.num_steps >= horizon]
    return np.concatenate(rows).astype(np.float32)


def is_start_state(obs: np.ndarray, pool: np.ndarray) -> bool:
    return bool((pool == obs).all(axis=1).any())


def rollout(env: gym.Env, actions: np.ndarray, seed: int) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    out = [(obs,)]
    for action in actions:
        out.append(env.step(action))
    return out


# ------------------------------------------------------------------------------- registration
def test_registered_ids_and_native_vector_env(cheetah_kwargs: dict) -> None:
    for task in TASKS.values():
        spec = gym.spec(task.dream_id)
        assert (spec.entry_point, spec.vector_entry_point) == (ENTRY_POINT, VECTOR_ENTRY_POINT)
        assert spec.kwargs == {"task": task.name} and spec.max_episode_steps is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_envs()  # a re-import must not warn about overriding
    assert caught == []
    for mode in ("vector_entry_point", None):
        envs = gym.make_vec("AGD-Dream-HalfCheetah", num_envs=3, vectorization_mode=mode, **cheetah_kwargs)
        assert isinstance(envs, DreamVectorEnv) and envs.num_envs == 3
        assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    synced = gym.make_vec("AGD-Dream-HalfCheetah", num_envs=2, vectorization_mode="sync", **cheetah_kwargs)
    synced.reset(seed=0)
    assert synced.step(synced.action_space.sample())[0].shape == (2, 17)  # DreamEnv also works under SyncVectorEnv
    env = gym.make("AGD-Dream-HalfCheetah", **cheetah_kwargs)
    assert isinstance(env.unwrapped, DreamEnv)
    wrappers = []
    while isinstance(env, gym.Wrapper):
        wrappers.append(type(env).__name__)
        env = env.env
    assert "TimeLimit" not in wrappers  # truncation happens inside the env, at the horizon


@pytest.mark.parametrize("guide", ["eag", "none"])
def test_check_env_passes_without_warnings(hopper_kwargs: dict, guide: str) -> None:
    env = gym.make("AGD-Dream-Hopper", guide=guide, **hopper_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_spaces_match_the_real_env(hopper_kwargs: dict) -> None:
    real = gym.make("Hopper-v5")
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    assert env.action_space == real.action_space
    space = env.observation_space
    assert space.shape == real.observation_space.shape and space.dtype == np.float32
    assert np.isfinite(space.low).all() and np.isfinite(space.high).all()  # finite: check_env stays silent
    obs, _ = real.reset(seed=0)
    assert obs.astype(np.float32) in space  # every finite float32 observation is inside
    envs = gym.make_vec("AGD-Dream-Hopper", num_envs=2, **hopper_kwargs)
    assert envs.single_action_space == real.action_space and envs.observation_space.shape == (2, 11)


# ----------------------------------------------------------------------------- reset and step
def test_reset_seeding_is_deterministic_and_draws_dataset_states(hopper_kwargs: dict, hopper_data) -> None:
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    first, again, other = rollout(env, actions, 7), rollout(env, actions, 7), rollout(env, actions, 8)
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
    assert not np.array_equal(first[1][0], other[1][0])
    pool = start_states(hopper_data, hopper_kwargs["model"].config.horizon)
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        assert obs.dtype == np.float32 and info == {} and is_start_state(obs, pool)
    s0 = pool[3] + 0.25
    obs, _ = env.reset(options={"initial_state": s0})
    assert np.array_equal(obs, s0)


def test_step_returns_the_imagined_transition(hopper_kwargs: dict) -> None:
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.float32))
    assert obs.shape == (11,) and obs.dtype == np.float32 and np.isfinite(obs).all()
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert info["guide"] == "eag" and isinstance(info["advantage"], float) and np.isfinite(info["advantage"])
    # The advantage is the critic's one-step A_t of the returned transition (d_t = 0: not terminated here).
    if not terminated:
        vec = env.unwrapped.vector_env
        s_t = torch.as_tensor(vec._states[0, 0])
        expected = reward + 0.99 * float(linear_critic(torch.as_tensor(obs))) - float(linear_critic(s_t))
        assert info["advantage"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_terminated_is_the_task_rule_on_the_imagined_state(hopper_model, hopper_data) -> None:
    # The real Hopper health rule, and a rule that splits dreams in two (to see terminations at all).
    median_height = float(np.median(start_states(hopper_data, 10)[:, 0]))
    half = dataclasses.replace(TASKS["Hopper"], termination_fn=lambda obs: obs[..., 0] < median_height)
    for task, needs_both in ((TASKS["Hopper"], False), (half, True)):
        envs = DreamVectorEnv(task, 16, model=hopper_model, dataset=hopper_data, guide="none",
                              autoreset_mode="NextStep")
        envs.reset(seed=0)
        seen = np.zeros(2, int)
        for _ in range(3):
            obs, _, terminated, _, info = envs.step(np.zeros((16, 3), np.float32))
            stepped = info["_guide"]  # members that did not just restart (NEXT_STEP)
            rule = task.terminated(torch.as_tensor(obs)).numpy()
            assert np.array_equal(terminated[stepped], rule[stepped]) and not terminated[~stepped].any()
            seen += np.bincount(terminated[stepped].astype(int), minlength=2)
        assert not needs_both or seen.min() > 0, seen


def test_truncation_exactly_at_the_horizon(cheetah_kwargs: dict) -> None:
    horizon = cheetah_kwargs["model"].config.horizon
    for h in (horizon, 3):
        env = gym.make("AGD-Dream-HalfCheetah", horizon=h, **cheetah_kwargs)
        env.reset(seed=0)
        flags = [env.step(env.action_space.sample())[2:4] for _ in range(h)]
        assert flags == [(False, False)] * (h - 1) + [(False, True)]
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(env.action_space.sample())
    with pytest.raises(ValueError, match="horizon"):
        gym.make("AGD-Dream-HalfCheetah", horizon=horizon + 1, **cheetah_kwargs)
    with pytest.raises(ValueError, match="max_episode_steps"):
        gym.make_vec("AGD-Dream-HalfCheetah", num_envs=2, max_episode_steps=horizon + 1, **cheetah_kwargs)
    envs = gym.make_vec("AGD-Dream-HalfCheetah", num_envs=2, max_episode_steps=2, **cheetah_kwargs)
    envs.reset(seed=0)
    assert [bool(envs.step(envs.action_space.sample())[3].all()) for _ in range(2)] == [False, True]


def test_single_env_equals_a_one_member_vector_env(hopper_kwargs: dict) -> None:
    actions = np.random.default_rng(1).uniform(-1, 1, (6, 3)).astype(np.float32)
    single = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    vector = DreamVectorEnv("Hopper", 1, **hopper_kwargs)
    obs, _ = single.reset(seed=3)
    vobs, _ = vector.reset(seed=3)
    assert np.array_equal(obs, vobs[0])
    for action in actions:
        obs, reward, terminated, truncated, info = single.step(action)
        vobs, vreward, vterminated, vtruncated, vinfo = vector.step(action[None])
        if vterminated[0] or vtruncated[0]:
            vobs = vinfo["final_obs"][0][None]
        assert np.array_equal(obs, vobs[0]) and reward == vreward[0]
        assert (terminated, truncated) == (vterminated[0], vtruncated[0])
        assert info["advantage"] == vinfo["advantage"][0]
        if terminated or truncated:
            break


# --------------------------------------------------------------------------------- autoreset
def test_same_step_autoreset(cheetah_kwargs: dict, cheetah_data) -> None:
    horizon = 4
    pool = start_states(cheetah_data, cheetah_kwargs["model"].config.horizon)
    actions = np.random.default_rng(2).uniform(-1, 1, (horizon + 2, 3, 6)).astype(np.float32)
    envs = DreamVectorEnv("HalfCheetah", 3, horizon=horizon, **cheetah_kwargs)
    manual = DreamVectorEnv("HalfCheetah", 3, horizon=horizon, autoreset_mode="Disabled", **cheetah_kwargs)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    envs.reset(seed=0)
    manual.reset(seed=0)
    # Member 0 restarts after one step, so members are at different t in one batched call.
    envs.step(actions[0])
    manual.step(actions[0])
    envs.reset(options={"reset_mask": np.array([True, False, False])})
    manual.reset(options={"reset_mask": np.array([True, False, False])})
    lengths, ended_at = np.array([0, 1, 1]), {}
    for k in range(1, horizon + 2):
        obs, rewards, terminated, truncated, info = envs.step(actions[k])
        ref_obs, ref_rewards, *_ = manual.step(actions[k])
        lengths += 1
        done = terminated | truncated
        assert np.array_equal(done, lengths == horizon) and not terminated.any()
        assert np.array_equal(rewards, ref_rewards)
        if done.any():
            assert np.array_equal(info["_final_obs"], done) and np.array_equal(info["_final_info"], done)
            assert set(info["final_info"]) == {"guide", "_guide", "advantage", "_advantage"}
            for i in np.flatnonzero(done):
                assert np.array_equal(info["final_obs"][i], ref_obs[i])  # the last stepped observation
                assert is_start_state(obs[i], pool)  # already reset: the next episode's s_0
                ended_at[i] = k
            assert all(info["final_obs"][i] is None for i in np.flatnonzero(~done))
            assert np.array_equal(obs[~done], ref_obs[~done])
            manual.reset(options={"reset_mask": done})
            lengths[done] = 0
        else:
            assert "final_obs" not in info
            assert np.array_equal(obs, ref_obs)
    assert ended_at == {1: horizon - 1, 2: horizon - 1, 0: horizon}


def test_next_step_autoreset(cheetah_kwargs: dict, cheetah_data) -> None:
    horizon = 3
    pool = start_states(cheetah_data, cheetah_kwargs["model"].config.horizon)
    envs = gym.make_vec("AGD-Dream-HalfCheetah", num_envs=2, horizon=horizon, autoreset_mode=AutoresetMode.NEXT_STEP,
                        **cheetah_kwargs)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    envs.reset(seed=0)
    for _ in range(horizon - 1):
        _, _, _, truncated, info = envs.step(envs.action_space.sample())
        assert not truncated.any()
    last_obs, _, _, truncated, info = envs.step(envs.action_space.sample())
    assert truncated.all() and "final_obs" not in info and not is_start_state(last_obs[0], pool)
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())  # the reset step
    assert all(is_start_state(o, pool) for o in obs)
    assert not (rewards.any() or terminated.any() or truncated.any()) and not info["_guide"].any()
    _, _, _, truncated, info = envs.step(envs.action_space.sample())  # step 1 of the new episode
    assert not truncated.any() and info["_guide"].all()


# ---------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("guide", ["eag", "sag"])
def test_guidance_raises_the_critic_value_monotonically(hopper_kwargs: dict, guide: str) -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 32, 3)).astype(np.float32)
    means = []
    for alpha in (0.0, 0.5, 2.0):
        envs = DreamVectorEnv("Hopper", 32, guide=guide, alpha=alpha, **hopper_kwargs)
        envs.reset(seed=0)
        values = [linear_critic(torch.as_tensor(envs.step(a)[0])).mean() for a in actions]
        means.append(float(torch.stack(values).mean()))
    assert means[0] < means[1] < means[2], means


def test_none_guide_never_calls_the_critic(hopper_model, hopper_data) -> None:
    def exploding(obs: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the critic was called")

    actions = np.random.default_rng(0).uniform(-1, 1, (4, 4, 3)).astype(np.float32)
    results = []
    for critic in (None, exploding):
        envs = DreamVectorEnv("Hopper", 4, model=hopper_model, dataset=hopper_data, guide="none", critic=critic)
        results.append(rollout(envs, actions, seed=5))
        assert envs.critic is critic
    for a, b in zip(*results):
        assert np.array_equal(a[0], b[0])
        if len(a) > 1:
            assert np.array_equal(a[1], b[1]) and np.isnan(a[4]["advantage"]).all() and not a[4]["_advantage"].any()


def test_out_of_bounds_actions_are_clipped(hopper_kwargs: dict) -> None:
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    wild = np.array([5.0, -7.0, 0.5], np.float32)
    clipped = np.clip(wild, -1.0, 1.0)
    out_wild, out_clipped = rollout(env, [wild], seed=1), rollout(env, [clipped], seed=1)
    assert np.array_equal(out_wild[1][0], out_clipped[1][0]) and out_wild[1][1] == out_clipped[1][1]
    env.reset(seed=1)
    env.step(wild)
    assert np.array_equal(env.unwrapped.vector_env._actions[0, 0].numpy(), clipped)  # what was conditioned on


# --------------------------------------------------------------------------------- bad input
def test_bad_actions_raise(hopper_kwargs: dict) -> None:
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs).unwrapped
    with pytest.raises(RuntimeError, match=r"reset\(\) before step"):
        env.step(np.zeros(3, np.float32))
    env.reset(seed=0)
    for action in (np.zeros(4), np.zeros((1, 3)), 0.5):
        with pytest.raises(ValueError, match=r"expected \(3,\)"):
            env.step(action)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            env.step(np.array([0.0, bad, 0.0]))
    with pytest.raises(ValueError, match="real numbers"):
        env.step(np.array(["a", "b", "c"]))
    envs = DreamVectorEnv("Hopper", 2, **hopper_kwargs)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        envs.step(np.zeros(3))


@pytest.mark.parametrize(
    ("critic", "problem"),
    [
        (lambda obs: obs[:, :2], r"shape \(2, 2\)"),
        (lambda obs: obs.sum(1, keepdim=True).T, r"shape \(1, 2\)"),
        (lambda obs: obs.detach().numpy().sum(1), "ndarray, not a torch.Tensor"),
        (lambda obs: obs.sum(1).detach(), "without grad"),
        (lambda obs: torch.zeros(obs.shape[0], requires_grad=True), "do not depend on obs"),
        (lambda obs: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_bad_critics_are_rejected_at_construction(hopper_model, hopper_data, critic, problem: str) -> None:
    for guide in ("eag", "sag"):
        with pytest.raises(ValueError, match=problem) as error:
            gym.make("AGD-Dream-Hopper", model=hopper_model, dataset=hopper_data, guide=guide, critic=critic)
        assert CRITIC_SIGNATURE in str(error.value) and "differentiable" in str(error.value)


def test_bad_configuration_raises(hopper_kwargs: dict, hopper_model, hopper_data, cheetah_model, tmp_path) -> None:
    for guide in ("eag", "sag"):
        with pytest.raises(ValueError, match="state-value critic: pass critic="):
            gym.make("AGD-Dream-Hopper", model=hopper_model, dataset=hopper_data, guide=guide)
    with pytest.raises(ValueError, match="none, reward, eag, sag") as error:
        gym.make("AGD-Dream-Hopper", **{**hopper_kwargs, "guide": "eagg"})
    assert "Did you mean 'eag'" in str(error.value)
    with pytest.raises(ValueError, match="HalfCheetah world model.*dreams Hopper"):
        gym.make("AGD-Dream-Hopper", **{**hopper_kwargs, "model": cheetah_model})
    with pytest.raises(CheckpointError, match="HalfCheetah.*Hopper"):
        gym.make("AGD-Dream-Hopper", **{**hopper_kwargs, "model": cheetah_model.save(tmp_path / "cheetah")})
    with pytest.raises(ValueError, match="Hopper episodes.*AGD-Dream-HalfCheetah"):
        gym.make("AGD-Dream-HalfCheetah", model=cheetah_model, dataset=hopper_data, guide="none")
    for value, name in ((-1.0, "alpha"), (float("nan"), "alpha"), (1.5, "gamma"), (0, "sampling_steps")):
        with pytest.raises(ValueError, match=name):
            gym.make("AGD-Dream-Hopper", **{**hopper_kwargs, name: value})
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    with pytest.raises(ValueError, match="valid options: initial_state, reset_mask"):
        env.reset(options={"start": 1})
    with pytest.raises(ValueError, match=r"initial_state.*shape \(10,\)"):
        env.reset(options={"initial_state": np.zeros(10)})


def test_critic_is_kept_by_reference_and_revalidated(hopper_kwargs: dict) -> None:
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    assert env.unwrapped.critic is linear_critic
    critic = torch.nn.Linear(11, 1)
    env.unwrapped.critic = critic
    assert env.unwrapped.critic is critic
    with pytest.raises(ValueError, match="without grad"):
        env.unwrapped.critic = lambda obs: obs.sum(1).detach()


def test_sb3_value_head_is_a_valid_critic(hopper_kwargs: dict) -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    env = gym.make("AGD-Dream-Hopper", **hopper_kwargs)
    agent = sb3.PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, device="cpu", seed=0)
    env.unwrapped.critic = agent.policy.predict_values  # validated; from now on the dream follows the agent's critic
    agent.learn(64)
    assert env.unwrapped.critic == agent.policy.predict_values


# ------------------------------------------------------------------------------ default model
def test_default_model_is_trained_once_and_cached(cheetah_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AGD_ENVS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(defaults, "dataset_dirs", lambda: [tmp_path / "none"])
    with pytest.raises(FileNotFoundError, match=r"agd collect --task HalfCheetah .* && agd fit --task HalfCheetah"):
        gym.make("AGD-Dream-HalfCheetah", guide="none")
    monkeypatch.setattr(defaults, "dataset_dirs", lambda: [cheetah_data.path.parent])
    monkeypatch.setattr(defaults, "DEFAULT_FIT_STEPS", 1)
    monkeypatch.setattr(defaults, "DEFAULT_PRESET", "cpu")
    env = gym.make("AGD-Dream-HalfCheetah", guide="none")  # trains (1 update) and caches
    cached = defaults.default_model_dir("HalfCheetah")
    assert (cached / "config.json").is_file() and env.unwrapped.model.num_updates == 1
    env.reset(seed=0)  # start states from the same shipped dataset
    monkeypatch.setattr(defaults, "DEFAULT_FIT_STEPS", 10**9)  # a second fit would never finish
    again = gym.make("AGD-Dream-HalfCheetah", guide="none")
    assert again.unwrapped.model.num_updates == 1
