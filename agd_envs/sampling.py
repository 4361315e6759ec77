"""Reverse diffusion over trajectory segments: inpainting, policy-guided actions, value guides.

``sample`` turns noise into segments ``[s_0..s_H | r_0..r_{H-1}]`` given a ``Conditioning``
(agd_envs/conditioning.py: known states, rewards and actions in real units) and returns a
``SegmentBatch`` in real units (agd_envs/batch.py); ``imagine`` is the paper's Algorithm 2 (joint
segments from real s_0, actions from the policy, an advantage guide).

Reverse process. x_T ~ N(0, I); known entries are overwritten with their clean normalized values at
the start, in every x0 estimate and in every x_t. The sampler visits ``sampling_steps(N, steps)`` and
moves with ``diffusion.step_to`` (eta = 1 with all N steps is DDPM ancestral sampling, eta = 0 is
DDIM). The result is the last x0 estimate; known entries are returned exactly as given.

Rewards are the denoised reward entries, or, for a model with a reward head
(``WorldModelConfig.reward_head``), the head's r(s_t, a_t, s_{t+1}) of the final states wherever a_t is
known or drawn; guides then see the head's rewards as functions of the states (agd_envs/reward_head.py).
A model with ``known_action_cost`` denoises (or heads) r_t minus the control term -c |clip(a_t)|^2;
the sampler subtracts that term from known rewards and adds it back, for the actions of the current
estimate, to the rewards the guides see and to the returned ones (exact wherever a_t exists).

Guidance (paper eq. (5), state components). The guide shifts the x0 estimate, not the mean of x_{t-1}:

    x0_guided = x0_hat + alpha * Cov[x0 | x_t] * (mask * grad_{x0} log f(x0_hat)),

then the DDIM/DDPM move uses x0_guided. For a Gaussian clean distribution and linear log f this is
exactly the posterior mean of the tilted distribution p(tau) f(tau) (a tilted Gaussian keeps its
covariance and shifts its mean by Cov w), so alpha = 1 samples p f; and unlike mu + alpha Sigma g it
still guides deterministic DDIM, where Sigma = 0. Two estimates of Cov[x0 | x_t]:

- ``guide_mode="x0"`` (default, one critic gradient per step): (1 - alpha_bar_t) I, exact for
  unit-variance isotropic data, which z-scored data is marginally. Where the data are much less
  variable than that (e.g. near-deterministic dynamics given s_0), it over-estimates the covariance
  at high noise, so alpha = 1 is then stronger than the Bayes tilt; the denoiser projects the
  estimate back at the next step.
- ``guide_mode="dps"``: Tweedie's Cov[x0|x_t] = (1 - ab_t)/sqrt(ab_t) d x0_hat / d x_t, applied as
  (1 - ab_t)/sqrt(ab_t) grad_{x_t} log f(x0_hat(x_t)) by autograd through ``model.denoise``. Exact for
  any Gaussian data and linear log f; costs a backward pass through the denoiser per step (measured
  +10-35% per call over the x0 guide, benchmarks/sampling.py). The shift then also moves entries
  correlated with the guided ones (e.g. rewards correlated with states), as the tilt does.

Relation to the reference code (AGD-MBRL's public code, polygrad/sampling/functions.py): it adds c * sigma_t^4 * G to the
normalized state part of x0_hat (sigma_t^2 the DDPM posterior variance, c = 2..4 hard-coded, G taken
from a critic fed normalized states). That is our update with a step-dependent
alpha_t = c sigma_t^4 / (1 - ab_t): for c = 4, N = 128, tau = 1 it is 8e-5 at t = 1, 4.5e-3 at
t = 64, 0.22 at t = 120 and 2.3 at t = 126, so nearly all of its guidance happens in the last,
noisiest steps (and a Sigma-scaled step vanishes in DDIM, where Sigma = 0). Ours is one constant alpha
(alpha = 1: the Bayes tilt), a real-unit critic, and the same code for DDPM and DDIM.

Guiding the actions instead (``guide_on="actions"``, not the paper's; docs/results.md measures both). On deterministic
dynamics with s_0 inpainted, a shifted state is one the simulator would not reach under the segment's actions, and the
policy then acts on states the real env does not produce. The action guide leaves the states to the model and tilts
what the policy draws: with the reparameterised actions a_t = mean(s_t) + std(s_t) xi_t, xi ~ N(0, I), it sets
xi = xi_drawn + alpha g / rms_b |g_b| at each guided step, g = grad_xi log f on the x0 estimate given those actions
(one denoiser forward and backward). For log f linear in xi that is an exact draw from N(0, I) exp(log f / eta) with
eta = rms |g| / alpha, so the segment's actions come from the advantage-weighted policy pi(a | s) exp(A / eta) and its
states follow from them; alpha (default ``DEFAULT_ACTION_GUIDE_SCALE``) is the root-mean-square move of the draws in
units of the policy's noise, free of the critic's scale.

Stability. Gradients that are not finite are replaced by 0 (agd_envs.guides) and the shift
alpha * Cov * g is clipped per entry to +-``max_shift`` z-score units (default 3.0: three standard
deviations of z-scored data, the edge of where the denoiser has seen data, and the largest move one
step should make; an estimate pushed further would only be pulled back by the denoiser or leave
its training range). So any alpha (tested up to 1e3) and an exploding critic give finite samples.

Actions (conditioning, never denoised; fed to the denoiser normalized). Caller-given actions (all or
a prefix) are always kept. Without an actor the remaining actions are masked: the model marginalises
over them (the closed-loop pattern) and ``SegmentBatch.actions`` holds NaN there. With an actor, the
unknown a_t come from the policy at the current state estimate, as PolyGRAD intends. PolyGRAD
takes one small gradient step a += g grad_a log pi(a | s_hat) per denoising step, which cannot
converge in the 4-8 DDIM steps we use. Default (``action_guidance="reparam"``): a reparameterised
policy sample with the noise fixed per segment, a_t = mean(s_hat_t) + std(s_hat_t) * xi_t, xi drawn
once; re-evaluated after every step at the new estimate, so the returned actions are an exact policy
sample given the returned states (and A2C can use them as such). At the first step only actions whose
states are known (a_t, t < num_known_states) exist; the others are masked for that one call, which is
the prefix pattern the world model is trained on (agd_envs/training.py).
``action_guidance="grad"`` is PolyGRAD's variant (actions start N(0, I) normalized; per step clamp to
mean +- 3 std, one step of size ``action_guidance_scale`` along grad log pi for a Gaussian policy,
plus sqrt(Sigma_t) noise). An actor that returns a tensor is deterministic: a_t = actor(s_hat_t).
The denoiser is conditioned on the actions clipped to the task's bounds -- what a v5 env executes and
what the collector stores -- while ``SegmentBatch.actions`` keeps the policy's unclipped samples, whose
log pi the actor-critic differentiates (as an agent does with the actions it sends to a real env).

Random numbers, in order from ``generator``: x_T; then xi (reparam) or the initial actions (grad);
then per step the move's noise (eta > 0, not the last step) and, for grad, the action noise.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol, runtime_checkable

import torch
from einops import rearrange
from torch import Tensor
from torch.distributions import Distribution

from agd_envs.batch import SegmentBatch
from agd_envs.conditioning import Conditioning, ControlFn, Known
from agd_envs.diffusion import NoiseSchedule, sampling_steps, step_to
from agd_envs.guides import (
    Critic,
    Guide,
    RewardFn,
    advantages,
    call_net,
    finite_or_zero,
    get_guide,
    guide_gradient,
    segment_log_f,
)
from agd_envs.normalization import Normalizer
from agd_envs.segments import SegmentLayout
from agd_envs.tasks import Task

Actor = Callable[[Tensor], "Distribution | Tensor"]
"""``actor(states: B x S real units)`` -> a distribution over real-unit actions (``.mean``,
``.stddev``: Normal/Independent) or a ``B x A`` tensor of actions (deterministic)."""

DEFAULT_MAX_SHIFT = 3.0
DEFAULT_ACTION_GUIDE_SCALE = 1.0
"""``imagine``'s alpha for ``guide_on="actions"``: the draws move by one unit of the policy's noise (root mean square over
the batch, norm over a segment's H x A entries)."""
DEFAULT_MIN_GUIDE_NOISE = 0.01
"""Guide only where 1 - alpha_bar_t >= this. The x0 guide's shift is (1 - alpha_bar_t) alpha g, so a step below
it moves the estimate by < 1% of what a full-noise step does, for a critic gradient that costs as much: in the
``cpu`` preset's 4 steps, 1 - alpha_bar_t is 1.0 / 0.41 / 0.034 / 1.5e-4 at t = 127 / 56 / 14 / 0, so the default
skips the last step's guide (benchmarks/imagination_cost.py measures the speed and the samples' change)."""


class Denoiser(Protocol):
    """What the sampler needs from a world model (agd_envs.world_model.WorldModel satisfies it)."""

    layout: SegmentLayout
    normalizer: Normalizer
    schedule: NoiseSchedule
    task: Task

    def denoise(
        self, x_t: Tensor, t: Tensor, actions: Tensor, action_mask: Tensor, known: Tensor, known_mask: Tensor
    ) -> Tensor:
        """x0 estimate ``B x Dx`` (normalized, known entries overwritten) from x_t ``B x Dx``, steps ``B``,
        normalized actions ``B x H x A`` with mask ``B x H``, known values and mask ``B x Dx``."""
        ...


Imagined = SegmentBatch
"""What ``sample`` and ``imagine`` return: the one segment batch type (the name older code imports)."""


def _control_fn(model: Denoiser) -> ControlFn | None:
    """The model's ``control_rewards`` when it models rewards without their control term, else None."""
    config = getattr(model, "config", None)
    return model.control_rewards if getattr(config, "known_action_cost", False) else None  # type: ignore[attr-defined]


def policy_moments(actor: Actor, states: Tensor) -> tuple[Tensor, Tensor | None]:
    """(mean, std or None) of the policy at real states ``B x H x S`` -> ``B x H x A`` each."""
    out = call_net(actor, rearrange(states, "b h s -> (b h) s"))
    if isinstance(out, Distribution):
        mean, std = out.mean, out.stddev
    elif isinstance(out, torch.Tensor):
        mean, std = out, None
    else:
        raise TypeError(
            f"actor must return a torch.distributions.Distribution or a tensor of actions, got {type(out).__name__}"
        )

    def back(t: Tensor) -> Tensor:
        return rearrange(t.to(device=states.device, dtype=states.dtype), "(b h) a -> b h a", b=states.shape[0])

    return back(mean), (None if std is None else back(std))


class _Actions:
    """The actions fed to the denoiser (normalized, with their mask) and their real-unit values."""

    def __init__(
        self,
        known: Known,
        norm: Normalizer,
        actor: Actor | None,
        mode: str,
        scale: float,
        generator: torch.Generator | None,
        bounds: tuple[float, float],
    ) -> None:
        self.known, self.norm, self.actor, self.mode, self.scale = known, norm, actor, mode, scale
        self.generator, self.bounds = generator, bounds
        self.real = known.actions
        self.mask = known.action_known
        self.active = actor is not None and not bool(known.action_known.all())
        self.xi: Tensor | None = None
        self.moments: tuple[Tensor, Tensor | None] | None = None  # (mean, std) of the last draw
        if self.active and mode == "reparam":
            self.xi = torch.randn(self.real.shape, generator=generator, device=self.real.device, dtype=self.real.dtype)
            self.xi_drawn = self.xi  # the untilted noise; an action guide tilts it (``tilt``)
            # First call: only actions at known states can be drawn; the rest stay masked.
            drawn = self._draw(known.states[:, :-1])
            have_state = known.state_rows[:, :-1]
            self.real = torch.where(known.action_known[..., None], known.actions,
                                    torch.where(have_state[..., None], drawn, self.real))  # fmt: skip
            self.mask = known.action_known | have_state
        elif self.active:  # "grad": PolyGRAD starts from N(0, I) in normalized action space
            start = torch.randn(self.real.shape, generator=generator, device=self.real.device, dtype=self.real.dtype)
            self.real = torch.where(known.action_known[..., None], known.actions, norm.unnormalize_actions(start))
            self.mask = torch.ones_like(known.action_known)

    @property
    def normalized(self) -> Tensor:
        """``B x H x A`` normalized actions, 0 where masked; clipped to the bounds first (what the env executes)."""
        return self.normalize(self.real)

    def control(self, control: ControlFn, real: Tensor | None = None) -> Tensor:
        """``B x H`` control term of the current actions (or of ``real``), 0 where no action exists (masked)."""
        real = self.real if real is None else real
        values = control(torch.where(self.mask[..., None], real, torch.zeros_like(real)))
        return torch.where(self.mask, values, torch.zeros_like(values))

    def _draw(self, states: Tensor) -> Tensor:
        mean, std = self.moments = policy_moments(self.actor, states)  # type: ignore[arg-type]
        return mean if std is None else mean + std * self.xi

    def with_noise(self, xi: Tensor) -> Tensor:
        """Real actions ``B x H x A`` of the last draw's policy moments with noise ``xi`` (differentiable in ``xi``);
        the caller's actions where known."""
        mean, std = self.moments  # type: ignore[misc]
        return torch.where(self.known.action_known[..., None], self.known.actions, mean + std * xi)  # type: ignore[operator]

    def normalize(self, real: Tensor) -> Tensor:
        """``B x H x A`` normalized real actions, clipped to the bounds first, 0 where masked."""
        z = self.norm.normalize_actions(real.clamp(*self.bounds))
        return torch.where(self.mask[..., None], z, torch.zeros_like(z))

    def step(self, states: Tensor, t: int) -> Tensor:
        """Real action a_t ``B x A`` at real states ``B x S``: the caller's where known, else the draw with this segment's xi_t."""
        mean, std = policy_moments(self.actor, states[:, None])  # type: ignore[arg-type]
        drawn = mean[:, 0] if std is None else mean[:, 0] + std[:, 0] * self.xi[:, t]  # type: ignore[index]
        return torch.where(self.known.action_known[:, t, None], self.known.actions[:, t], drawn)

    def update(self, states: Tensor, variance: Tensor, last: bool) -> None:
        """Re-derive the unknown actions from the state estimate ``B x (H+1) x S`` (real units)."""
        if not self.active:
            return
        s = states[:, :-1]
        if self.mode == "reparam":
            new = self._draw(s)
        else:
            mean, std = policy_moments(self.actor, s)  # type: ignore[arg-type]
            if std is None:
                new = mean
            else:
                new = torch.minimum(torch.maximum(self.real, mean - 3.0 * std), mean + 3.0 * std)
                if not last:
                    # grad_a log N(a; mean, std^2) = (mean - a) / std^2 (PolyGRAD: one step per denoising step)
                    new = new + self.scale * (mean - new) / std.square().clamp_min(1e-12)
                    noise = torch.randn(new.shape, generator=self.generator, device=new.device, dtype=new.dtype)
                    z = self.norm.normalize_actions(new) + variance.sqrt()[..., None] * noise
                    new = self.norm.unnormalize_actions(z)
        self.real = torch.where(self.known.action_known[..., None], self.known.actions, new)
        self.mask = torch.ones_like(self.mask)


def _reward_fn(model: Denoiser, acts: _Actions) -> RewardFn | None:
    """Real rewards of real states under the current actions from the model's reward head (None without one)."""
    if getattr(model, "reward_head", None) is None:
        return None
    return lambda states: model.head_rewards(states, acts.real)  # type: ignore[attr-defined]


def _tilt_actions(
    model: Denoiser, known: Known, acts: _Actions, x: Tensor, t_batch: Tensor, guide: Guide, alpha: float,
    max_shift: float | None, critic: Critic | None, gamma: float, control: ControlFn | None,
) -> Tensor:
    """The x0 estimate at the current actions; moves the policy noise to xi = xi_drawn + alpha g / rms_b |g_b|, g the
    gradient of log f(x0) with respect to xi, rms over the batch's segments.

    The tilt of the policy's own sample: xi ~ N(0, I) tilted by exp(g . xi / eta) is N(g / eta, I), so for log f
    linear in the actions the actions are drawn from pi(a | s) exp(log f / eta), the guide's advantage-weighted
    policy, at the temperature eta = rms |g| / alpha that moves the batch's draws by alpha in root mean square (in
    units of the policy's own noise over a segment's H x A entries): alpha is free of the critic's scale, which
    differs by orders of magnitude between tasks and during training. log f sees each reward as the model's function
    of the actions (and the known control term of the clipped actions), the states as the model's x0 estimate given
    them; nothing in the segment is shifted."""
    norm, layout = model.normalizer, model.layout
    with torch.enable_grad():
        xi = acts.xi.detach().requires_grad_(True)  # type: ignore[union-attr]
        real = acts.with_noise(xi)
        x0 = known.inpaint(model.denoise(x, t_batch, acts.normalize(real), acts.mask, known.x, known.mask))
        states, rewards = known.decode(x0, norm, layout)
        if getattr(model, "reward_head", None) is not None:
            rewards = model.head_rewards(states, real)  # type: ignore[attr-defined]
        if control is not None:
            rewards = rewards + acts.control(control, real)
        done = model.task.terminated(states[:, 1:].detach())
        log_f = guide(states, rewards, critic=critic, terminations=done, gamma=gamma)
        grad = torch.autograd.grad(log_f.sum(), xi, allow_unused=True)[0] if log_f.requires_grad else None
    grad = torch.zeros_like(xi) if grad is None else finite_or_zero(grad.detach())
    rms = grad.flatten(1).square().sum(1).mean().sqrt()
    acts.xi = acts.xi_drawn + _bounded(alpha * grad / rms.clamp_min(1e-12), max_shift)
    return x0.detach()


def _bounded(shift: Tensor, max_shift: float | None) -> Tensor:
    """Clip a guide shift to +-max_shift per entry (inf -> the bound) and zero any NaN."""
    if max_shift is not None:
        shift = shift.clamp(-max_shift, max_shift)
    return finite_or_zero(shift)


def _config_value(model: Denoiser, name: str, default: int) -> int:
    """``model.config.<name>`` when the model has a config with that field, else ``default``."""
    value = getattr(getattr(model, "config", None), name, None)
    return int(value) if value is not None else default


def default_steps(model: Denoiser, steps: int | None) -> int:
    """``steps``, else ``model.config.sampling_steps`` when the model has one, else all N steps."""
    return int(steps) if steps is not None else _config_value(model, "sampling_steps", model.schedule.num_steps)


@torch.no_grad()
def sample(
    model: Denoiser,
    cond: Conditioning,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    actor: Actor | None = None,
    guide: str | Guide = "none",
    critic: Critic | None = None,
    alpha: float = 1.0,
    gamma: float = 0.99,
    generator: torch.Generator | None = None,
    guide_mode: Literal["x0", "dps"] = "x0",
    max_shift: float | None = DEFAULT_MAX_SHIFT,
    action_guidance: Literal["reparam", "grad"] = "reparam",
    action_guidance_scale: float = 0.005,
    min_guide_noise: float = DEFAULT_MIN_GUIDE_NOISE,
    guide_on: Literal["states", "actions"] = "states",
) -> SegmentBatch:
    """Sample segments given ``cond`` by guided reverse diffusion (see the module docstring).

    :param model: a ``Denoiser`` (e.g. WorldModel); its normalizer's device and dtype are used.
    :param cond: known states/rewards/actions in real units.
    :param steps: reverse steps (default ``model.config.sampling_steps``, else the schedule's N).
    :param eta: 0 = deterministic DDIM, 1 with all N steps = DDPM ancestral.
    :param actor: policy for the unknown actions (None: they are masked).
    :param guide: ``none`` | ``reward`` | ``eag`` | ``sag`` or a Guide.
    :param critic: state-value critic ``obs[B, S] -> V[B]`` in real units (needed by eag/sag; also
        gives ``SegmentBatch.advantages``).
    :param alpha: guide scale; 1 is the Bayes tilt p(tau) f(tau) for unit-variance Gaussian data.
    :param gamma: discount of the advantage estimate.
    :param generator: torch generator on the model's device (same seed -> same samples on CPU).
    :param guide_mode: ``x0`` (Cov = (1 - ab_t) I) or ``dps`` (Tweedie covariance via autograd through the denoiser).
    :param max_shift: per-entry bound of the guide's x0 shift in z-score units (None: no clip).
    :param action_guidance: ``reparam`` (default) or ``grad`` (PolyGRAD's one gradient step per denoising step).
    :param action_guidance_scale: step size of the ``grad`` variant (PolyGRAD's initial 0.005).
    :param min_guide_noise: the guide is evaluated only at visited steps with 1 - alpha_bar_t >= this (see
        DEFAULT_MIN_GUIDE_NOISE); 0 guides at every step.
    :param guide_on: ``states`` (the paper's: shift the state entries of the x0 estimate) or ``actions``
        (tilt the policy's sampling noise, ``_tilt_actions``: the states stay the model's, given better
        actions); ``actions`` needs a stochastic ``actor`` and ``action_guidance="reparam"``.
    """
    guide = get_guide(guide)
    guide.check_critic(critic)
    if guide_mode not in ("x0", "dps"):
        raise ValueError(f"guide_mode must be 'x0' or 'dps', got {guide_mode!r}")
    if action_guidance not in ("reparam", "grad"):
        raise ValueError(f"action_guidance must be 'reparam' or 'grad', got {action_guidance!r}")
    if guide_on not in ("states", "actions"):
        raise ValueError(f"guide_on must be 'states' or 'actions', got {guide_on!r}")
    layout, norm, schedule = model.layout, model.normalizer, model.schedule
    device, dtype = norm.obs_mean.device, norm.obs_mean.dtype
    control = _control_fn(model)
    known = cond.resolve(layout, norm, device, dtype, control)
    batch = known.x.shape[0]
    times = sampling_steps(schedule.num_steps, default_steps(model, steps))
    x = known.inpaint(torch.randn(batch, layout.x_dim, generator=generator, device=device, dtype=dtype))
    bounds = (model.task.action_low, model.task.action_high)  # the denoiser sees what the env would execute
    acts = _Actions(known, norm, actor, action_guidance, action_guidance_scale, generator, bounds)
    if acts.active and action_guidance == "reparam" and _config_value(model, "dynamics_prior", 0):
        # Every action from the start, drawn along the dynamics prior's closed-loop rollout with the same xi.
        acts.update(model.prior_rollout(known.states, known.state_rows, acts.step), torch.zeros(()), last=False)  # type: ignore[attr-defined]
    reward_fn = _reward_fn(model, acts)
    if reward_fn is not None:
        guide = guide.for_reward_model()
    guided = guide.moves is not None and alpha != 0.0
    if guided and guide_on == "actions" and not (acts.active and action_guidance == "reparam" and acts.moments[1] is not None):  # type: ignore[index]
        raise ValueError(
            "guide_on='actions' tilts the policy's sampling noise: it needs an actor that returns a distribution "
            "(not a tensor), action_guidance='reparam' and at least one action not given in the conditioning; "
            "use guide_on='states' otherwise"
        )
    guide_kwargs: dict[str, Any] = dict(layout=layout, normalizer=norm, task=model.task, critic=critic, gamma=gamma, reward_fn=reward_fn)
    x0 = x
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        alpha_bar = schedule.at(t_batch, x)
        guide_now = guided and float(1.0 - alpha_bar.flatten()[0]) >= min_guide_noise
        if guide_now and control is not None:
            guide_kwargs["reward_offset"] = acts.control(control)
        if guide_now and guide_on == "actions":
            x0, shift = _tilt_actions(model, known, acts, x, t_batch, guide, alpha, max_shift, critic, gamma, control), None
        elif guide_now and guide_mode == "dps":
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                x0 = known.inpaint(model.denoise(x_in, t_batch, acts.normalized, acts.mask, known.x, known.mask))
                log_f = segment_log_f(guide, x0, **guide_kwargs)
                grad = None
                if log_f.requires_grad:
                    (grad,) = torch.autograd.grad(log_f.sum(), x_in, allow_unused=True)
            x0 = x0.detach()
            grad = torch.zeros_like(x) if grad is None else finite_or_zero(grad)
            shift = (1.0 - alpha_bar) / alpha_bar.sqrt().clamp_min(1e-12) * grad
        else:
            x0 = known.inpaint(model.denoise(x, t_batch, acts.normalized, acts.mask, known.x, known.mask))
            shift = (1.0 - alpha_bar) * guide_gradient(guide, x0, **guide_kwargs) if guide_now else None
        if shift is not None:
            x0 = known.inpaint(x0 + _bounded(alpha * shift, max_shift))
        noise = None
        if eta > 0.0 and t_prev >= 0:
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        x, variance = step_to(schedule, x, t_batch, torch.full_like(t_batch, t_prev), x0, eta, noise)
        x = known.inpaint(x)
        acts.update(known.decode(x0, norm, layout)[0], variance, last=t_prev < 0)

    states, rewards = known.decode(x0, norm, layout)
    if reward_fn is not None:  # the head needs the action: only where it is known (or drawn)
        rewards = torch.where(acts.mask, reward_fn(states), rewards)
    if control is not None:  # where no action exists the reward stays without its control term
        rewards = rewards + acts.control(control)
    rewards = torch.where(known.reward_known, known.rewards, rewards)
    terminations = model.task.terminated(states[:, 1:])
    adv = None if critic is None else advantages(states, rewards, critic, terminations, gamma)
    return SegmentBatch(states=states, actions=acts.real, rewards=rewards, terminations=terminations, advantages=adv)


@runtime_checkable
class Simulator(Protocol):
    """A world model that imagines by simulation, not by denoising (``imagine`` calls its ``rollout``;
    agd_envs.oracle.OracleWorldModel satisfies it)."""

    def rollout(
        self,
        s0: Tensor,
        actor: Actor,
        horizon: int | None = None,
        generator: torch.Generator | None = None,
        *,
        critic: Critic | None = None,
        gamma: float = 0.99,
    ) -> SegmentBatch:
        """H-step segments from start states ``s0`` ``B x S`` with actions from ``actor``."""
        ...


def default_guide_scale(task: Task, guide_on: str = "states") -> float:
    """The guide scale when none is given: the task's for the state guide, ``DEFAULT_ACTION_GUIDE_SCALE`` for the action guide."""
    return DEFAULT_ACTION_GUIDE_SCALE if guide_on == "actions" else task.guide_scale


def imagine(
    model: Denoiser | Simulator,
    s0: Tensor,
    actor: Actor,
    critic: Critic | None = None,
    *,
    guide: str | Guide = "eag",
    alpha: float | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    gamma: float = 0.99,
    generator: torch.Generator | None = None,
    guide_mode: Literal["x0", "dps"] = "x0",
    max_shift: float | None = DEFAULT_MAX_SHIFT,
    min_guide_noise: float = DEFAULT_MIN_GUIDE_NOISE,
    guide_on: Literal["states", "actions"] = "states",
) -> SegmentBatch:
    """Paper Algorithm 2: H-step segments jointly from real start states ``s0`` ``B x S``, actions from ``actor``.

    :param alpha: guide scale (default ``model.task.guide_scale``; ``DEFAULT_ACTION_GUIDE_SCALE`` with ``guide_on="actions"``).
        Other arguments as in ``sample``.
    A ``Simulator`` (agd_envs.oracle.OracleWorldModel) rolls the segments out instead (guide ``none`` only).
    """
    if isinstance(model, Simulator):
        name = get_guide(guide).name
        if name != "none":
            raise ValueError(f"guide {name!r}: the oracle world model is not differentiable and serves only guide 'none'")
        return model.rollout(s0, actor, generator=generator, critic=critic, gamma=gamma)
    cond = Conditioning.from_start(s0, horizon=model.layout.horizon)
    return sample(
        model, cond, steps=steps, eta=eta, actor=actor, guide=guide, critic=critic,
        alpha=default_guide_scale(model.task, guide_on) if alpha is None else alpha, gamma=gamma, generator=generator,
        guide_mode=guide_mode, max_shift=max_shift, min_guide_noise=min_guide_noise, guide_on=guide_on,
    )  # fmt: skip
