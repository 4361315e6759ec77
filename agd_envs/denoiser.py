"""The denoising network: a residual MLP over one flattened trajectory segment.

Input per segment (all normalized): the noisy segment ``x_t`` with known entries already replaced by
their clean values, the known mask over ``x``, the actions times their mask (flattened) and the action
mask; plus a learned embedding of the diffusion step. Output: ``Dx`` numbers, read as an x0 or an ε
estimate by the world model (the network does not know which). Same shape as PolyGRAD's
ResidualMLPDenoiser (polygrad/models/mlp_denoiser_network.py: Linear in, residual blocks ``h + Linear(act(LN(h)))``,
final LayerNorm + Linear), with the mask channels added so one network serves joint and closed-loop use.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class StepEmbedding(nn.Module):
    """Learned embedding of the integer diffusion step t in 0..N-1 -> ``B x dim``.

    ``kind="learned"``: a table (nn.Embedding) followed by an MLP. ``kind="fourier"``: fixed random
    Fourier features of t/N (as PolyGRAD, but on the rescaled step) followed by the same learned MLP.
    """

    def __init__(self, num_steps: int, dim: int, kind: str = "learned") -> None:
        super().__init__()
        self.num_steps = num_steps
        self.kind = kind
        if kind == "learned":
            self.table = nn.Embedding(num_steps, dim)
            in_dim = dim
        elif kind == "fourier":
            # Frozen frequencies: a buffer, so they save with the weights and never train.
            self.register_buffer("freqs", torch.randn(dim // 2) * 4.0)
            in_dim = 2 * (dim // 2) + 1
        else:
            raise ValueError(f"time embedding kind must be 'learned' or 'fourier', got {kind!r}")
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Steps ``B`` (long) -> embeddings ``B x dim``."""
        if self.kind == "learned":
            return self.mlp(self.table(t.long()))
        u = (t.float() / max(self.num_steps - 1, 1))[:, None]
        angles = 2 * math.pi * u * self.freqs[None, :]
        return self.mlp(torch.cat([u, angles.sin(), angles.cos()], dim=-1))


class ResidualBlock(nn.Module):
    """``h + Linear(SiLU(LayerNorm(h + W_t emb)))`` — the reference block, with the step added per block."""

    def __init__(self, width: int, embed_dim: int | None) -> None:
        super().__init__()
        self.time = nn.Linear(embed_dim, width) if embed_dim is not None else None
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``B x W`` -> ``B x W``."""
        z = h if self.time is None else h + self.time(emb)
        return h + self.linear(nn.functional.silu(self.norm(z)))


class SegmentDenoiser(nn.Module):
    """Residual MLP ``(x_t, t, actions, action_mask, known_mask) -> B x Dx``.

    :param x_dim: size Dx of the flat segment (states then rewards, see segments.py).
    :param act_dim: action size A.
    :param horizon: segment length H.
    :param num_steps: diffusion steps N (size of the step table).
    :param width: hidden width of every block.
    :param depth: number of residual blocks.
    :param embed_dim: size of the step embedding.
    :param time_embedding: ``"learned"`` (table + MLP) or ``"fourier"``.
    :param time_injection: ``"block"`` (projected and added in every block) or ``"input"`` (added once).
    :param context_dim: size of an extra per-segment input (e.g. a dynamics prior's rollout; 0: none).
    """

    def __init__(
        self,
        *,
        x_dim: int,
        act_dim: int,
        horizon: int,
        num_steps: int,
        width: int,
        depth: int,
        embed_dim: int = 128,
        time_embedding: str = "learned",
        time_injection: str = "block",
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if time_injection not in ("block", "input"):
            raise ValueError(f"time_injection must be 'block' or 'input', got {time_injection!r}")
        self.time_injection = time_injection
        in_dim = 2 * x_dim + horizon * act_dim + horizon + context_dim
        self.embed = StepEmbedding(num_steps, embed_dim, time_embedding)
        self.input = nn.Linear(in_dim, width)
        self.input_time = nn.Linear(embed_dim, width) if time_injection == "input" else None
        block_embed = embed_dim if time_injection == "block" else None
        self.blocks = nn.ModuleList(ResidualBlock(width, block_embed) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, x_dim)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor,
        known_mask: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_t`` B x Dx (known entries clean), ``t`` B, ``actions`` B x H x A normalized,
        ``action_mask`` B x H bool, ``known_mask`` B x Dx bool, ``context`` B x context_dim or None -> B x Dx."""
        dtype = x_t.dtype
        a_mask = action_mask.to(dtype)
        masked_actions = rearrange(actions * a_mask[..., None], "b h a -> b (h a)")
        extra = [] if context is None else [context.to(dtype)]
        features = torch.cat([x_t, known_mask.to(dtype), masked_actions, a_mask, *extra], dim=-1)
        emb = self.embed(t)
        h = self.input(features)
        if self.input_time is not None:
            h = h + self.input_time(emb)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
