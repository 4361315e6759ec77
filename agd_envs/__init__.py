"""agd-envs: advantage-guided diffusion world models (AGD-MBRL) as Gymnasium environments."""

from agd_envs.tasks import TASKS, Task, get_task

__version__ = "0.1.0"
__all__ = ["TASKS", "Task", "get_task", "__version__"]
