"""PPO inside a dream, CleanRL style: one file that reads top to bottom (after CleanRL's ppo_continuous_action.py).

The environment is ``gym.make_vec("AGD-Dream-Hopper", num_envs=N, vectorization_mode="vector_entry_point",
critic=agent.get_value)``: N closed-loop dreams of one diffusion world model, stepped as one batch.
Each imagined transition is tilted towards this agent's own advantage (guide ``eag``), so the env is
given the agent's critic: real-unit observations ``B x S`` in, values ``B x 1`` out, differentiable.
The env keeps the reference, so it always guides with the critic as it is being trained.

Autoreset is Gymnasium 1.x SAME_STEP: the step that ends a dream already returns the next dream's
first observation and puts the true last one in ``info["final_obs"]``. A dream that is *truncated*
(its horizon H reached) is bootstrapped from that observation, r_t + gamma V(final_obs), as CleanRL's
later scripts and SB3 do; a *terminated* one (the task's health rule on the imagined state) is not.

Run (repo root):  python examples/cleanrl_ppo_dream.py --total-timesteps 200000
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Normal

import agd_envs  # noqa: F401  (registers AGD-Dream-<Task>)
from agd_envs.defaults import default_model
from agd_envs.tasks import get_task
from agd_envs.world_model import WorldModel


@dataclass
class Args:
    seed: int = 1
    """seed of torch (networks, action noise), of the minibatch order and of the dreams' start states"""
    task: str = "Hopper"
    """task whose dream is learned in (``AGD-Dream-<task>``)"""
    model: str = ""
    """world-model checkpoint directory (``agd fit --out``); empty: the task's default model (trained once, cached)"""
    guide: str = "eag"
    """how dreams are steered: ``eag`` / ``sag`` (this agent's advantage), ``reward`` or ``none``"""
    total_timesteps: int = 200_000
    """imagined transitions to learn from"""
    num_envs: int = 64
    """dreams stepped as one batch"""
    num_steps: int = 32
    """steps per dream per rollout (a dream lasts the model's horizon H, 10 by default)"""
    learning_rate: float = 3e-4
    """Adam learning rate of actor and critic"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training"""
    gamma: float = 0.99
    """discount factor (the env's advantage guide uses the same one)"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    num_minibatches: int = 8
    """minibatches per epoch"""
    update_epochs: int = 4
    """passes over each rollout"""
    norm_adv: bool = True
    """normalize advantages per minibatch"""
    clip_coef: float = 0.2
    """PPO ratio clip"""
    clip_vloss: bool = True
    """clip the value loss around the rollout's values as in PPO2"""
    ent_coef: float = 0.0
    """entropy bonus weight"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    hidden: int = 64
    """width of the two tanh hidden layers of actor and critic"""

    @property
    def batch_size(self) -> int:
        """transitions per rollout"""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """transitions per gradient step"""
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        """rollout + update cycles (0: return the untrained agent)"""
        return self.total_timesteps // self.batch_size


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """CleanRL's Gaussian actor-critic, fed z-scored observations (the world model's statistics, frozen)."""

    def __init__(self, obs_dim: int, act_dim: int, obs_mean: torch.Tensor, obs_std: torch.Tensor, hidden: int):
        super().__init__()
        # Real-unit inputs (the critic protocol); Hopper's dimensions span ~0.1 to ~10.
        self.register_buffer("obs_mean", obs_mean.detach().clone().float())
        self.register_buffer("obs_std", obs_std.detach().clone().float())
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), std=1.0),
        )  # fmt: skip
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, act_dim), std=0.01),
        )  # fmt: skip
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mean) / self.obs_std

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        """``B x S`` real-unit observations -> ``B x 1`` state values (the env's critic)."""
        return self.critic(self._z(x))

    def get_mean_action(self, x: torch.Tensor) -> torch.Tensor:
        """``B x S`` -> ``B x A`` mean of the policy (deterministic actions for evaluation)."""
        with torch.no_grad():
            return self.actor_mean(self._z(x))

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        """-> (action ``B x A``, log-prob ``B``, entropy ``B``, value ``B x 1``)."""
        z = self._z(x)
        mean = self.actor_mean(z)
        probs = Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(z)


def train(args: Args, world_model: WorldModel | None = None, dataset: Any = None) -> Agent:
    """Run PPO in the dream and return the trained agent.

    :param world_model: use this model instead of ``args.model`` (tests pass a small one).
    :param dataset: start states of the dreams (path or EpisodeDataset; default: the task's shipped dataset).
    """
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    task = get_task(args.task)
    if world_model is None:
        world_model = WorldModel.load(args.model, task=task) if args.model else default_model(task)

    # The agent comes first: the dream needs its critic.
    agent = Agent(task.obs_dim, task.act_dim, world_model.normalizer.obs_mean, world_model.normalizer.obs_std,
                  args.hidden)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    envs = gym.make_vec(task.dream_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                        model=world_model, dataset=dataset, guide=args.guide, gamma=args.gamma,
                        critic=agent.get_value)  # fmt: skip

    # Rollout storage, time-major: T x N.
    n, t_max = args.num_envs, args.num_steps
    obs = torch.zeros((t_max, n, task.obs_dim))
    actions = torch.zeros((t_max, n, task.act_dim))
    logprobs, rewards, dones, values = (torch.zeros((t_max, n)) for _ in range(4))

    global_step, start_time = 0, time.time()
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0])
    next_done = torch.zeros(n)
    episode_return = np.zeros(n)
    finished_returns: list[float] = []

    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        for step in range(t_max):
            global_step += n
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step], actions[step], logprobs[step] = value.flatten(), action, logprob

            # The env clips actions to the bounds, as MuJoCo's actuators do (CleanRL's ClipAction wrapper).
            next_obs_np, reward_np, terminations, truncations, infos = envs.step(action.numpy())
            ended = terminations | truncations
            episode_return += reward_np
            finished_returns.extend(episode_return[ended].tolist())
            episode_return[ended] = 0.0

            reward = torch.as_tensor(reward_np, dtype=torch.float32)
            # SAME_STEP autoreset: bootstrap truncated dreams from their true last observation.
            cut = np.flatnonzero(truncations & ~terminations)
            if len(cut):
                final = torch.as_tensor(np.stack(infos["final_obs"][cut]))
                with torch.no_grad():
                    reward[cut] += args.gamma * agent.get_value(final).flatten()
            rewards[step] = reward
            next_obs, next_done = torch.as_tensor(next_obs_np), torch.as_tensor(ended, dtype=torch.float32)

        # GAE over the rollout (dones cut it at every dream boundary).
        with torch.no_grad():
            next_value = agent.get_value(next_obs).flatten()
            advantages = torch.zeros_like(rewards)
            lastgaelam = torch.zeros(n)
            for t in reversed(range(t_max)):
                if t == t_max - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values

        b_obs, b_actions = obs.reshape(-1, task.obs_dim), actions.reshape(-1, task.act_dim)
        b_logprobs, b_advantages = logprobs.reshape(-1), advantages.reshape(-1)
        b_returns, b_values = returns.reshape(-1), values.reshape(-1)

        # PPO update.
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for _ in range(args.update_epochs):
            rng.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb = b_inds[start : start + args.minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_adv = b_advantages[mb]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                newvalue = newvalue.flatten()
                if args.clip_vloss:
                    v_clipped = b_values[mb] + (newvalue - b_values[mb]).clamp(-args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max((newvalue - b_returns[mb]).square(), (v_clipped - b_returns[mb]).square()).mean()
                else:
                    v_loss = 0.5 * (newvalue - b_returns[mb]).square().mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + v_loss * args.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

        recent = finished_returns[-4 * n :]
        print(f"iter {iteration}/{args.num_iterations} step {global_step} "
              f"imagined_return {np.mean(recent) if recent else float('nan'):.2f} "
              f"v_loss {v_loss.item():.3f} approx_kl {approx_kl.item():.4f} clipfrac {np.mean(clipfracs):.3f} "
              f"SPS {int(global_step / (time.time() - start_time))}", flush=True)  # fmt: skip

    envs.close()
    return agent


def parse_args() -> Args:
    """``--field-name value`` for every Args field (tyro-like, with argparse)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Args):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    return Args(**vars(parser.parse_args()))


if __name__ == "__main__":
    train(parse_args())
