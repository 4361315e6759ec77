"""The dream vector env: N dreams of a diffusion world model stepped in closed loop as one batch.

Semantics (:class:`DreamVectorEnv`; the single :class:`agd_envs.dream_env.DreamEnv` is one member of it):

- ``reset``: every member starts from s_0 drawn uniformly from the *start-state pool*: every stored
  observation of the dataset that begins an H-step training segment (``dataset.segment_starts(H)``,
  H = the model's horizon), i.e. s_i of an episode with n transitions for i <= n - H — the states the
  model learned to continue (paper Algorithm 2, line 2). ``options={"initial_state": s0}`` starts
  from given states (``S`` or ``N x S``) instead; ``options={"reset_mask": m}`` resets only members m.
- ``step(a)``: member i at step t conditions ONE batched ``sampling.sample`` call on its episode so
  far — s_0..s_t, r_0..r_{t-1}, a_0..a_t with a_t the action given (num_known_states =
  num_known_actions = t + 1; later actions stay unknown/masked, as the model was trained) — with the
  guide applied to this transition's own term of log f (A_t for eag, see ``step_guide``) — and
  returns the imagined s_{t+1} and r_t. ``terminated`` = the task's termination
  rule on that s_{t+1}; ``truncated`` once ``horizon`` steps were taken (internal; no TimeLimit).
- Actions outside the bounds are clipped to them, as the MuJoCo actuators clamp controls and as the
  collector stores real actions; the clipped action is the one conditioned on. Wrong shapes and
  NaN/inf raise ValueError.
- ``info["advantage"]`` = A_t = r_t + gamma (1 - d_t) V(s_{t+1}) - V(s_t) from the guide's critic
  (eag/sag); without one the vector env reports NaN with a False ``_advantage`` mask and the single
  env leaves the key out (a NaN would fail check_env's determinism test, NaN != NaN).
  ``info["guide"]`` names the guide.
- Autoreset (``metadata["autoreset_mode"]``, Gymnasium 1.x). SAME_STEP (default; SyncVectorEnv's
  layout): a member that ends is reset inside the step and its returned obs is the new s_0;
  ``info["final_obs"]`` (object array, None elsewhere) holds its last imagined obs and
  ``info["final_info"]`` its step info, each with a ``_key`` mask. The top-level info keeps
  describing the transition just taken, for every member, as the rewards do. NEXT_STEP: the step
  after an end ignores that member's action and returns its new s_0, reward 0, no flags, info masks
  False. DISABLED: reset ended members with ``reset(options={"reset_mask": m})``; stepping them
  raises. :class:`DreamEnv` is one member with autoreset disabled.
- Randomness: ``reset(seed=...)`` seeds ``np_random`` (start states) and, from it, a torch.Generator
  on the env's device (diffusion noise): same seed and actions -> identical dreams.

Spaces: actions exactly the real env's; observations a float32 Box of the real env's shape whose
bounds are the largest finite float32 values rather than +-inf, so every finite observation is inside
and ``check_env`` has nothing to warn about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from agd_envs.dream_inputs import (
    action_space,
    check_critic,
    float_in,
    int_in,
    observation_space,
    real_array,
    start_state_pool,
)
from agd_envs.guides import Critic, Guide, get_guide
from agd_envs.sampling import Conditioning, sample
from agd_envs.tasks import Task, get_task
from agd_envs.world_model import WorldModel

_RESET_OPTIONS = ("initial_state", "reset_mask")


def step_guide(name: str, t: torch.Tensor) -> Guide:
    """The guide ``name`` restricted to each segment's current transition t (``B`` long): s_t, r_t -> s_{t+1}.

    In closed loop the terms before t are constants (known) and the terms after t depend on actions
    the caller has not chosen yet, so a step is tilted by its own term only: eag by exp(A_t), sag by
    sigmoid(A_t), reward by exp(r_t). (With the whole-segment sum, a linear critic's terms telescope
    and would push s_{t+1} by (gamma - 1) grad V: away from value.)
    """
    base = get_guide(name)
    rows = t[:, None] + torch.arange(2, device=t.device)  # B x 2: t, t+1

    def log_f(states: torch.Tensor, rewards: torch.Tensor, critic: Critic | None, terminations: torch.Tensor,
              gamma: float) -> torch.Tensor:
        pair = states.gather(1, rows[..., None].expand(-1, -1, states.shape[-1]))
        return base.log_f(pair, rewards.gather(1, t[:, None]), critic, terminations.gather(1, t[:, None]), gamma)

    return Guide(base.name, log_f, base.moves, base.needs_critic)


CLOSED_LOOP_STEPS = 1
"""Default reverse-diffusion steps per env step. Measured on held-out Hopper windows (tests/test_fidelity.py,
s_0 anchors, DDIM eta 0): closed-loop state MSE at t = 3 / 5 / 10 is .0163 / .0227 / .056 with 1 step,
.0188 / .0277 / .057 with 2 and .0205 / .0312 / .061 with 4, and closed/open-loop error ratios peak at
.94, 1.16 and 1.23: with more steps the future the sampler invents for the unknown actions leaks into
s_{t+1}. One step is also the cheapest."""


class DreamVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` closed-loop dreams of one world model, stepped as one batch on one device.

    Torch tensors stay on ``device``; numpy appears only in what ``reset``/``step`` return.

    :param task: task name (``"Hopper"``) or Task; set by the registered id.
    :param num_envs: number of dreams N.
    :param model: a WorldModel, a checkpoint directory, or None for the task's default model (agd_envs.defaults).
    :param critic: the agent's state value ``critic(obs: Tensor[B, S]) -> Tensor[B] | Tensor[B, 1]``,
        differentiable, real units, any device; required by ``eag``/``sag``, never called by ``none``/``reward``.
        The env keeps the reference, so it always guides with the agent's current critic.
    :param guide: ``"eag"`` (default), ``"sag"``, ``"reward"`` or ``"none"``.
    :param alpha: guide scale (default: the task's ``guide_scale``).
    :param gamma: discount of the advantage A_t.
    :param horizon: episode length in steps (default and maximum: the model's horizon H).
    :param sampling_steps: reverse-diffusion steps per env step (default ``CLOSED_LOOP_STEPS`` = 1, see there).
    :param eta: DDIM eta of the sampler (0 = deterministic steps, best in closed loop: stochastic steps add the
        noise of the future the sampler invents for the unknown actions to s_{t+1}).
    :param dataset: start states: a dataset path or EpisodeDataset (default: the task's shipped dataset).
    :param device: where the dream runs (default: the model's device; a model elsewhere is moved, in place).
    :param autoreset_mode: ``SAME_STEP`` (default), ``NEXT_STEP`` or ``DISABLED`` (``reset_mask`` resets).
    :param max_episode_steps: optional cap <= horizon (``gym.make_vec`` passes it when given).
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        task: str | Task,
        num_envs: int = 1,
        *,
        model: Any = None,
        critic: Critic | None = None,
        guide: str = "eag",
        alpha: float | None = None,
        gamma: float = 0.99,
        horizon: int | None = None,
        sampling_steps: int | None = None,
        eta: float = 0.0,
        dataset: Any = None,
        device: str | torch.device | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.task = get_task(task)
        if render_mode is not None:
            raise ValueError(f"{self.task.dream_id} cannot render (render_mode={render_mode!r}); leave it unset")
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.model = self._resolve_model(model, device)
        self.device = self.model.device
        h_model = self.model.config.horizon
        self.horizon = int_in("horizon", h_model if horizon is None else horizon, 1, h_model,
                               f"the model's segment length H={h_model}")
        if max_episode_steps is not None:
            self.horizon = int_in("max_episode_steps", max_episode_steps, 1, self.horizon,
                                   f"horizon={self.horizon}: dream episodes end there")
        n_diffusion = self.model.config.diffusion_steps
        steps = CLOSED_LOOP_STEPS if sampling_steps is None else sampling_steps
        self.sampling_steps = int_in("sampling_steps", steps, 1, n_diffusion,
                                      f"the model's diffusion_steps={n_diffusion}")
        self.guide = get_guide(guide).name
        self.alpha = self.task.guide_scale if alpha is None else alpha
        self.gamma = float_in("gamma", gamma, 0.0, 1.0)
        self.eta = float_in("eta", eta, 0.0, 1.0)
        self._needs_critic = get_guide(self.guide).needs_critic
        self.critic = critic

        self.single_observation_space = observation_space(self.task)
        self.single_action_space = action_space(self.task)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._low = torch.as_tensor(self.single_action_space.low, device=self.device)
        self._high = torch.as_tensor(self.single_action_space.high, device=self.device)

        # A dataset the caller names is checked now; the default one is looked up on first use, so
        # that reset(options={"initial_state": ...}) works without any dataset.
        self._pool = None if dataset is None else start_state_pool(dataset, self.task, h_model, self.device)
        self._generator = torch.Generator(device=self.device)
        n, s, a = self.num_envs, self.task.obs_dim, self.task.act_dim
        self._states = torch.zeros(n, h_model + 1, s, device=self.device)  # s_0..s_H of each episode
        self._actions = torch.zeros(n, h_model, a, device=self.device)
        self._rewards = torch.zeros(n, h_model, device=self.device)
        self._t = torch.zeros(n, dtype=torch.long, device=self.device)  # steps taken this episode
        self._ended = torch.zeros(n, dtype=torch.bool, device=self.device)  # awaiting (auto)reset
        self._started = False

    # ------------------------------------------------------------------------------- configuration
    @property
    def critic(self) -> Critic | None:
        """The caller's critic (the same object that was passed); assigning a new one validates it."""
        return self._critic

    @critic.setter
    def critic(self, critic: Critic | None) -> None:
        if self._needs_critic:
            if critic is None:
                get_guide(self.guide).check_critic(None)  # raises, naming the fix
            mean, std = self.model.normalizer.obs_mean, self.model.normalizer.obs_std
            check_critic(critic, self.task, mean + std * torch.tensor([[-0.5], [0.5]], device=self.device))
        self._critic = critic

    @property
    def alpha(self) -> float:
        """Guide scale alpha of paper eq. (5); assignable (e.g. to anneal it)."""
        return self._alpha

    @alpha.setter
    def alpha(self, alpha: float) -> None:
        self._alpha = float_in("alpha", alpha, 0.0, float("inf"))

    def _resolve_model(self, model: Any, device: str | torch.device | None) -> WorldModel:
        if model is None:
            from agd_envs.defaults import default_model

            return default_model(self.task, device or "cpu")
        if isinstance(model, (str, Path)):
            return WorldModel.load(model, task=self.task, device=device or "cpu")
        if not isinstance(model, WorldModel):
            raise TypeError(f"model must be a WorldModel, a checkpoint directory or None, got {type(model).__name__}")
        if model.task.name != self.task.name:
            raise ValueError(
                f"model is a {model.task.name} world model but {self.task.dream_id} dreams {self.task.name}; "
                f"pass a {self.task.name} model or make {model.task.dream_id} instead"
            )
        return model if device is None or torch.device(device) == model.device else model.to(device)

    def start_states(self) -> torch.Tensor:
        """The start-state pool ``M x S`` (float32, on device), loaded from the dataset on first use."""
        if self._pool is None:
            self._pool = start_state_pool(None, self.task, self.model.config.horizon, self.device)
        return self._pool

    # -------------------------------------------------------------------------------------- reset
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new dreams (all members, or ``options["reset_mask"]``); returns (``N x S`` obs, {})."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None (one seed drives the whole batch), got {seed!r}")
        super().reset(seed=None if seed is None else int(seed))
        options = dict(options or {})
        unknown = sorted(set(options) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; valid options: {', '.join(_RESET_OPTIONS)}")
        mask = self._reset_mask(options.get("reset_mask"))
        initial = options.get("initial_state")
        if seed is not None or "reset_mask" not in options:
            # Reseed the diffusion noise from np_random; a masked reset leaves it running, exactly as
            # an autoreset does, so DISABLED + reset_mask reproduces SAME_STEP.
            self._generator.manual_seed(int(self.np_random.integers(2**63)))
        self._reset_members(mask, None if initial is None else self._initial_states(initial, mask))
        self._started = True
        return self._observations(), {}

    def _reset_mask(self, mask: Any) -> torch.Tensor:
        if mask is None:
            return torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        mask = np.asarray(mask)
        if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                             f"got {mask.dtype} {mask.shape}")
        return torch.as_tensor(mask, device=self.device)

    def _initial_states(self, initial: Any, mask: torch.Tensor) -> torch.Tensor:
        s = self.task.obs_dim
        array = real_array("options['initial_state']", initial)
        if array.shape not in ((s,), (self.num_envs, s)):
            raise ValueError(f"options['initial_state'] has shape {array.shape}, expected ({s},) or "
                             f"({self.num_envs}, {s}) for {self.task.name}")
        states = torch.as_tensor(array, dtype=torch.float32, device=self.device)
        if not bool(torch.isfinite(states).all()):
            raise ValueError("options['initial_state'] contains NaN or inf")
        return states.expand(self.num_envs, s)[mask]

    def _reset_members(self, mask: torch.Tensor, initial: torch.Tensor | None) -> None:
        """Clear the episodes of members ``mask`` (``N`` bool) and give them s_0 (``k x S``, or drawn)."""
        count = int(mask.sum())
        if count == 0:
            return
        if initial is None:
            pool = self.start_states()
            rows = torch.as_tensor(self.np_random.integers(len(pool), size=count), device=self.device)
            initial = pool[rows]
        for buffer in (self._states, self._actions, self._rewards):
            buffer[mask] = 0.0
        self._states[mask, 0] = initial
        self._t[mask] = 0
        self._ended[mask] = False

    def _observations(self) -> np.ndarray:
        """``N x S`` float32 numpy copy of every member's latest state s_t."""
        return self._states[torch.arange(self.num_envs, device=self.device), self._t].cpu().numpy()

    # --------------------------------------------------------------------------------------- step
    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One imagined transition per member (see the module docstring for autoreset and info)."""
        if not self._started:
            raise RuntimeError(f"{self.task.dream_id}: call reset() before step()")
        act = self.validate_actions(actions, (self.num_envs, self.task.act_dim))
        mode, n = self.autoreset_mode, self.num_envs
        if mode == AutoresetMode.DISABLED and bool(self._ended.any()):
            members = self._ended.nonzero().flatten().tolist()
            raise RuntimeError(f"{self.task.dream_id}: the episode of member(s) {members} has ended; call reset() "
                               f"(for some members: reset(options={{'reset_mask': mask}})) before stepping again")
        resetting = self._ended.clone() if mode == AutoresetMode.NEXT_STEP else torch.zeros_like(self._ended)
        stepping = ~resetting
        rewards = torch.zeros(n, device=self.device)
        terminated = torch.zeros(n, dtype=torch.bool, device=self.device)
        truncated = torch.zeros_like(terminated)
        advantage = torch.full((n,), float("nan"), device=self.device)
        if bool(stepping.all()):  # the usual case: no gathers, the buffers are used as they are
            sel: slice | torch.Tensor = slice(None)
        else:
            sel = stepping.nonzero().flatten()
        if bool(stepping.any()):
            reward, term, adv = self._imagine(sel, act[sel])
            rewards[sel], terminated[sel], advantage[sel] = reward, term, adv
            truncated[sel] = self._t[sel] >= self.horizon
        ended = terminated | truncated

        obs = self._observations()
        info = self._step_info(stepping, advantage)
        if mode == AutoresetMode.SAME_STEP and bool(ended.any()):
            done = ended.cpu().numpy()
            final_obs = np.full(n, None, dtype=object)
            for i in np.flatnonzero(done):
                final_obs[i] = obs[i].copy()
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"], info["_final_info"] = self._step_info(ended, advantage), done.copy()
            self._reset_members(ended, None)
            obs[done] = self._observations()[done]
        elif mode == AutoresetMode.NEXT_STEP and bool(resetting.any()):
            self._reset_members(resetting, None)
            obs[resetting.cpu().numpy()] = self._observations()[resetting.cpu().numpy()]
        if mode != AutoresetMode.SAME_STEP:
            self._ended = ended
        return obs, rewards.double().cpu().numpy(), terminated.cpu().numpy(), truncated.cpu().numpy(), info

    def _imagine(self, sel: slice | torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample s_{t+1}, r_t for members ``sel`` (all, or ``k`` indices) given their a_t (``k x A``).

        Stores a_t, s_{t+1}, r_t, advances t and returns (r_t, d_t, A_t), each ``k``.
        """
        t = self._t[sel].clone()  # a view when sel is slice(None); t is advanced below
        members = torch.arange(self.num_envs, device=self.device)[sel]
        self._actions[members, t] = act
        known = t + 1
        cond = Conditioning(states=self._states[sel], num_known_states=known, actions=self._actions[sel],
                            num_known_actions=known, rewards=self._rewards[sel])
        out = sample(self.model, cond, steps=self.sampling_steps, eta=self.eta, guide=step_guide(self.guide, t),
                     critic=self._critic if self._needs_critic else None, alpha=self.alpha, gamma=self.gamma,
                     generator=self._generator)
        rows = torch.arange(len(t), device=self.device)
        next_states = out.states[rows, known].detach().float()
        reward = out.rewards[rows, t].detach().float()
        if not bool(torch.isfinite(next_states).all() & torch.isfinite(reward).all()):
            raise FloatingPointError(f"{self.task.dream_id}: the world model produced NaN/inf states or rewards; "
                                     f"check the model (is it trained?) and the guide scale alpha={self.alpha}")
        self._states[members, known] = next_states
        self._rewards[members, t] = reward
        self._t[members] = known
        if out.advantages is None:
            advantage = torch.full_like(reward, float("nan"))
        else:
            advantage = out.advantages[rows, t].detach().float()
        return reward, self.task.terminated(next_states), advantage

    def _step_info(self, members: torch.Tensor, advantage: torch.Tensor) -> dict[str, Any]:
        """Gymnasium vector info for ``members`` (``N`` bool): every key with its ``_key`` mask."""
        mask = members.cpu().numpy()
        has_adv = mask & ~np.isnan(advantage.cpu().numpy())
        adv = np.where(has_adv, advantage.double().cpu().numpy(), np.nan)
        guide = np.full(self.num_envs, None, dtype=object)
        guide[mask] = self.guide
        return {"advantage": adv, "_advantage": has_adv, "guide": guide, "_guide": mask.copy()}

    def validate_actions(self, actions: Any, shape: tuple[int, ...]) -> torch.Tensor:
        """Actions of ``shape`` as float32 on device, clipped to the bounds; ValueError on a bad shape or NaN/inf."""
        if isinstance(actions, torch.Tensor):
            if actions.is_complex() or actions.dtype == torch.bool:
                raise ValueError(f"actions must be real numbers, got a {actions.dtype} tensor")
            tensor = actions.detach().to(device=self.device, dtype=torch.float32)
        else:
            tensor = torch.as_tensor(real_array("action", actions), dtype=torch.float32, device=self.device)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"action has shape {tuple(tensor.shape)}, expected {shape} "
                             f"({self.task.name} has {self.task.act_dim} action dimensions)")
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            where = tuple(finite.logical_not().nonzero()[0].tolist())
            raise ValueError(f"action contains NaN or inf at index {where}; "
                             f"actions must be finite (out-of-range values are clipped to "
                             f"[{self.task.action_low}, {self.task.action_high}])")
        return torch.minimum(torch.maximum(tensor, self._low), self._high)

    def close_extras(self, **kwargs: Any) -> None:
        """Drop the device buffers (the model and critic belong to the caller)."""
        self._pool = None
        self._started = False
