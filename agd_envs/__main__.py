"""``python -m agd_envs ...`` is the ``agd`` command (so ``torchrun -m agd_envs fit|train ...`` launches it)."""

from agd_envs.cli import main

if __name__ == "__main__":
    main()
