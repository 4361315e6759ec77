"""agd-envs: advantage-guided diffusion world models (AGD-MBRL) as Gymnasium environments.

Importing the package registers ``AGD-Dream-HalfCheetah``, ``AGD-Dream-Hopper``,
``AGD-Dream-Walker2d`` and ``AGD-Dream-Reacher`` with Gymnasium.
"""

from agd_envs.registration import register_envs
from agd_envs.tasks import TASKS, Task, get_task

__version__ = "0.1.0"
__all__ = ["TASKS", "Task", "get_task", "register_envs", "__version__"]

register_envs()
