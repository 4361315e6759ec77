"""agd-envs: advantage-guided diffusion world models (AGD-MBRL) as Gymnasium environments.

Importing the package registers the dream ids with Gymnasium, per task (HalfCheetah, Hopper, Walker2d,
Reacher) ``AGD-Dream-<Task>-{Unguided,Reward,EAG,SAG}-v0`` and the older ``AGD-Dream-<Task>``
(agd_envs/registration.py says which needs what).
"""

from agd_envs.registration import register_envs
from agd_envs.tasks import TASKS, Task, get_task

__version__ = "0.1.0"
__all__ = ["TASKS", "Task", "get_task", "register_envs", "__version__"]

register_envs()
