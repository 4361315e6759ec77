"""Shared bits of the benchmark scripts: hardware/version facts and the result file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """Hardware and library versions, recorded beside every number."""
    import gymnasium
    import mujoco
    import numpy
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Print one JSON line and write ``benchmarks/results/<name>.json`` with the command and environment."""
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "environment": environment(), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload))
    return path


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of this process for one call of ``fn`` over ``repeats`` calls after a warm-up call.

    CPU time, not wall time: on a machine shared with training runs a call's wall time is mostly waiting.
    With one torch thread (OMP_NUM_THREADS=1) it is the call's compute."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)
