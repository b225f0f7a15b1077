"""One process or many: the few ``torch.distributed`` calls the training loop makes.

``torchrun --nproc_per_node=N encoder-clf train ...`` starts N copies of the
command with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`init_from_env`
joins them into a process group (gloo on CPU, NCCL on CUDA). Without those
variables everything here is a no-op on a world of one, so the training loop
is the same code either way: every rank runs it, gradients are averaged by
DistributedDataParallel, and only rank 0 writes files.

Collectives move tensors only (never pickled objects), and every rank must
reach each of them: decisions that end a loop (time budget, early stopping,
a non-finite loss) are taken on reduced values so that all ranks agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UsageError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, logs and progress bars."""
        return self.rank == 0


SOLO = World()  # a run in one process


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment; a world of one without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return current()


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def _device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_text(text: str, world: World) -> str:
    """Rank 0's string on every rank (a run directory name, a tokenizer's JSON)."""
    if world.size == 1:
        return text
    data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8) if world.main else None
    length = torch.tensor([len(data) if world.main else 0], dtype=torch.int64, device=_device())
    dist.broadcast(length, 0)
    buffer = data.to(_device()) if world.main else torch.empty(int(length), dtype=torch.uint8, device=_device())
    dist.broadcast(buffer, 0)
    return bytes(buffer.cpu().numpy()).decode("utf-8")


def gather_tensors(tensor: torch.Tensor, world: World) -> list[torch.Tensor]:
    """Each rank's tensor (same shape and dtype on every rank), in rank order, on every rank."""
    if world.size == 1:
        return [tensor]
    local = tensor.to(_device())
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def shard(n: int, world: World) -> np.ndarray:
    """The rows of ``range(n)`` this rank handles when work is dealt round-robin."""
    return np.arange(world.rank, n, world.size)


def gather_rows(rows: np.ndarray, n: int, world: World) -> np.ndarray:
    """Reassemble ``(n, ...)`` from each rank's :func:`shard` of rows, on every rank."""
    if world.size == 1:
        return rows
    width = -(-n // world.size)  # shards differ by at most one row: pad to the longest
    padded = np.zeros((width, *rows.shape[1:]), dtype=rows.dtype)
    padded[: len(rows)] = rows
    out = np.zeros((n, *rows.shape[1:]), dtype=rows.dtype)
    for rank, part in enumerate(gather_tensors(torch.from_numpy(padded), world)):
        out[rank::world.size] = part.numpy()[: len(range(rank, n, world.size))]
    return out


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown(wait: bool = False) -> None:
    """Leave the process group (at the end of a command), if one was joined; with ``wait``, once every rank is here.

    A command that ended well waits: a rank that left while rank 0 still wrote the run's files was aborted once
    in CI (SIGABRT, "terminate called without an active exception"). One that failed leaves at once, since the
    others may never come.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def rank_streams(generator: torch.Generator, world: World) -> dict[str, torch.Tensor]:
    """Every rank's dropout streams (torch, CUDA, token dropout), for a checkpoint of a multi-process run.

    Rank 0's streams are in every checkpoint already; the other ranks draw
    their own, and a resumed run replays them only if they are saved too.
    """
    if world.size == 1:
        return {}
    streams = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        streams["cuda"] = torch.cuda.get_rng_state()
    return {f"rng.rank{rank}.{name}": state for name, local in streams.items()
            for rank, state in enumerate(gather_tensors(local, world))}


def restore_rank_streams(tensors: dict[str, torch.Tensor], where: Path, generator: torch.Generator,
                         world: World) -> None:
    """This rank's streams from a checkpoint's ``tensors`` (read from ``where``), which must hold every rank's."""
    saved = len({key.split(".")[1] for key in tensors if key.startswith("rng.rank")}) or 1
    if saved != world.size:
        raise UsageError(f"{where}: the run was trained by {saved} process(es) and is resumed by "
                         f"{world.size}; resume it with torchrun --nproc_per_node={saved}")
    if world.size > 1:
        prefix = f"rng.rank{world.rank}."
        torch.set_rng_state(tensors[prefix + "torch"])
        generator.set_state(tensors[prefix + "generator"])
        if torch.cuda.is_available() and prefix + "cuda" in tensors:
            torch.cuda.set_rng_state(tensors[prefix + "cuda"])
