"""One run on several processes: torch.distributed set up from torchrun's environment, and the collectives a run uses.

``torchrun --standalone --nproc_per_node=N -m agd_envs fit|train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment; :func:`distributed_from_env`
joins them into one process group (gloo on CPU, nccl on CUDA) and returns the :class:`Distributed` handle
that the world-model trainer and ``AGDTrainer`` take. Without torchrun (no ``WORLD_SIZE``, or 1) the handle
is the single process and every method is a no-op, so one-process runs compute exactly what they did before.

What is split and what is synchronised (the same scheme as DDP's, written with its primitives):

- each rank draws its own share of a global batch with its own generator (:meth:`Distributed.seed`;
  rank 0 keeps the run's seed, so a 1-process run is unchanged);
- gradients are averaged across ranks as they accumulate (:meth:`Distributed.average_gradients`), before
  any clipping, so every rank takes the same optimizer step;
- state a rank computes from its own shard alone (normalizer moments, the agent's running statistics) is
  overwritten by rank 0's (:meth:`Distributed.broadcast_modules`), as DDP's ``broadcast_buffers``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class Distributed:
    """This process's place in a run: its rank among ``world_size`` processes (the defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (collectives run)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that collects real data, evaluates, logs and checkpoints."""
        return self.rank == 0

    def share(self, total: int, what: str) -> int:
        """This rank's part of a global count ``total`` (e.g. a batch); it must divide evenly across the ranks."""
        if total % self.world_size:
            raise ValueError(
                f"{what}={total} must be a multiple of the {self.world_size} processes to split it evenly; "
                f"set {what} to a multiple of {self.world_size} or launch a number of processes that divides {total}"
            )
        return total // self.world_size

    def seed(self, seed: int, stream: int = 0) -> int:
        """The seed of this rank's generator: ``seed`` itself on rank 0's first stream, else a distinct one."""
        if self.rank == 0 and stream == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank, stream]).generate_state(1, np.uint64)[0] >> 1)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def broadcast_modules(self, *modules: nn.Module | None) -> None:
        """Overwrite the parameters and buffers of ``modules`` (None skipped) with rank 0's, in place."""
        if not self.enabled:
            return
        with torch.no_grad():
            for module in filter(None, modules):
                for tensor in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (``value`` itself in a single process)."""
        if not self.enabled:
            return value
        box = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(box)
        return box.item() / self.world_size

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> list[RemovableHandle]:
        """From now on, average the gradients of ``parameters`` across ranks at the end of every backward pass.

        One all-reduce per backward pass, of the gradients it accumulated flattened into one buffer (one call per
        parameter costs 12x as much: 72 vs 5.8 ms for the Reacher cpu model's 37 tensors on 2 loaded cores), done
        before the caller's clipping and optimizer step. Ranks must run the same backward passes (they do: same
        code on same-shaped batches); gradients taken with ``torch.autograd.grad`` (the guides' input gradients)
        accumulate nothing and are left alone. Returns the hook handles (``handle.remove()`` stops it).
        """
        if not self.enabled:
            return []
        world_size, fired = self.world_size, []

        def accumulated(parameter: torch.Tensor) -> None:
            if not fired:  # the first of this backward pass: average once the whole pass is done (as DDP's reducer)
                torch.autograd.Variable._execution_engine.queue_callback(average)
            fired.append(parameter)

        def average() -> None:
            grads = [p.grad for p in fired]
            fired.clear()
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(world_size)
            for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
                grad.copy_(part.view_as(grad))

        return [p.register_post_accumulate_grad_hook(accumulated) for p in parameters if p.requires_grad]


def backend_for(device: str | torch.device) -> str:
    """The torch.distributed backend for ``device``: nccl for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_from_env(device: str | torch.device = "cpu") -> Iterator[Distributed]:
    """Join the process group torchrun described in the environment (or stay one process); leave it on exit.

    On CUDA each process is pinned to GPU ``LOCAL_RANK``, so ``device="cuda"`` means that process's own GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Distributed()
        return
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with torchrun "
                         "(torchrun --standalone --nproc_per_node=N -m agd_envs ...), which sets them")  # fmt: skip
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    try:
        yield Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
        # Every rank is done before any tears the group down: a rank that leaves while rank 0 still writes its files
        # was seen to abort in gloo's teardown ("terminate called without an active exception", 1 run in 6).
        dist.barrier()
    finally:
        dist.destroy_process_group()
