"""Shared fixtures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import pytest
import torch

if TYPE_CHECKING:
    from agd_envs.world_model import WorldModelConfig

TINY_MODEL: dict[str, Any] = dict(width=32, depth=1, embed_dim=16, diffusion_steps=8, sampling_steps=2, batch_size=32, prior_width=16)
"""Overrides of the ``cpu`` preset that make a world model build and fit in milliseconds: the tests' one tiny
model, for mechanics (shapes, checkpoints, resume, env semantics), never for model quality. Import it (and
``tiny_model_config``) with ``from conftest import ...``; tests/ is on sys.path."""


def tiny_model_config(task: str, **overrides: Any) -> "WorldModelConfig":
    """The ``cpu`` preset of ``task`` with ``TINY_MODEL``, then ``overrides`` (what a test needs beyond tiny)."""
    from agd_envs.world_model import WorldModelConfig  # not at the top: most test modules never build one

    return WorldModelConfig.preset("cpu", task, **{**TINY_MODEL, **overrides})


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Small networks run as fast on one thread as on two, and two OpenMP threads thrash when another
    process holds one of a 2-core machine's cores (measured: 25 vs 2-8 world-model updates/s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
