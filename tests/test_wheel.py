"""A wheel installed outside the checkout carries every module and the shipped datasets, and makes a dream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agd_envs", "agents")

IN_VENV = """
import json, sys
import gymnasium as gym
import torch
import agd_envs
from agd_envs.defaults import default_dataset_path, default_model_dir
from agd_envs.world_model import WorldModel, WorldModelConfig

# What a first gym.make would train and cache, made tiny: this test is about finding files, not fitting.
WorldModel(WorldModelConfig.preset("cpu", "HalfCheetah", width=32, depth=1, embed_dim=16)).save(
    default_model_dir("HalfCheetah"))
env = gym.make("AGD-Dream-HalfCheetah-Unguided-v0")
obs, _ = env.reset(seed=0)
obs, reward, *_ = env.step(env.action_space.sample())
print(json.dumps({"package": agd_envs.__file__, "dataset": str(default_dataset_path("HalfCheetah")),
                  "pool": int(env.unwrapped.vector_env.start_states().shape[0]), "obs": list(obs.shape)}))
"""


def test_wheel_outside_the_checkout_finds_the_shipped_datasets(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: an in-tree build would write build/ into the shared checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in (*PACKAGES, "datasets"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("agd_envs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    assert modules - names == set(), "pyproject.toml's package list misses these modules"
    shipped = {f"agd_envs/shipped_datasets/{p.relative_to(REPO / 'datasets').as_posix()}"
               for p in (REPO / "datasets").rglob("*") if p.is_file()}
    assert shipped <= names and len(shipped) >= 9

    venv = tmp_path / "venv"  # system site-packages for torch & co.; the venv's own agd_envs comes first
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGD_ENVS_DATASETS")}
    env |= {"AGD_ENVS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(python), "-c", IN_VENV], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    site = str(venv / "lib")
    assert found["package"].startswith(site), found  # not the checkout's editable install
    assert found["dataset"].startswith(site) and found["dataset"].endswith("shipped_datasets/halfcheetah-mixed")
    assert found["pool"] == 40 * (1000 - 10 + 1) and found["obs"] == [17]  # every H-window start of the 40 episodes
    assert (venv / "bin" / "agd").is_file()
