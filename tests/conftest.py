"""Shared fixtures."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


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
