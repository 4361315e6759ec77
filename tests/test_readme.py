"""The README's quick start is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert len(ci_lines) == 1, ci_lines
    test_command = ci_lines[0]
    assert "pytest" in test_command
    assert test_command in _bash_blocks(readme), "README's test command differs from .ci/run"


def test_quick_start_is_exactly_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    quick_start = quick_start.split("### ", 1)[0]
    blocks = _bash_blocks(quick_start)
    assert len(blocks) == 2 and all(len(b.splitlines()) == 1 for b in blocks), blocks
    assert blocks[0].startswith("python3 -m pip install") and blocks[1].startswith("python3 -m pip install")


def test_main_job_is_a_valid_agd_train_command() -> None:
    """The first quick-start command installs and then runs ``agd train`` with arguments the CLI accepts."""
    from agd_envs.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    main_job = _bash_blocks(readme.split("## Quick start", 1)[1])[0]
    install, run = main_job.split(" && ")
    assert install == "python3 -m pip install -e ." and run.startswith("agd train ")
    args = build_parser().parse_args(run.split()[1:])
    assert (args.command, args.task, args.guide, args.plot) == ("train", "Reacher", "eag", True)
