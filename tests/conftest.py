"""Shared fixtures."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import pytest
import torch

if TYPE_CHECKING:
    from agd_envs.datasets import EpisodeDataset
    from agd_envs.world_model import WorldModel, WorldModelConfig

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


HOPPER_FIT_UPDATES = 1500
"""Updates of the session's fitted Hopper model (the ``cpu`` preset does ~25 updates/s on one free core: ~60 s)."""


@dataclass
class FittedModel:
    """A ``cpu``-preset model fitted on the train split of a shipped dataset, with its held-out split."""

    model: "WorldModel"
    test: "EpisodeDataset"
    seconds: float
    """Wall time of the fit."""


@pytest.fixture(scope="session")
def fitted_hopper() -> FittedModel:
    """The ``cpu`` preset fitted once per session on 90% of ``datasets/hopper-mixed`` (seed 0, one thread).

    Shared by the quality tests (tests/test_fidelity.py, tests/test_world_model.py) so the suite fits it once;
    they only sample from it.
    """
    from agd_envs.datasets import EpisodeDataset
    from agd_envs.defaults import default_dataset_path
    from agd_envs.training import WorldModelTrainer
    from agd_envs.world_model import WorldModel, WorldModelConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = EpisodeDataset.open(default_dataset_path("Hopper")).split(0.9, seed=0)
        torch.manual_seed(0)
        model = WorldModel(WorldModelConfig.preset("cpu", "Hopper"))
        start = time.perf_counter()
        WorldModelTrainer(model).fit(train, HOPPER_FIT_UPDATES, progress=False,
                                     generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return FittedModel(model, test, seconds)
