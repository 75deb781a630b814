"""Several processes, on one machine or many: who this process is, its share of the work, and the few collective
steps `transcribe.py` and `evaluate_ctc.py` need (a CPU `gloo` group, also next to GPUs: only small Python
objects travel through it).

    torchrun --nproc_per_node 8 transcribe.py MODEL recordings/ --output out.jsonl --device cuda
    accelerate launch --multi_gpu --num_processes 8 evaluate_ctc.py MODEL --device cuda

`torchrun` and `accelerate launch` set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (and MASTER_ADDR/PORT
for the rendezvous); without them this is one process, and nothing here imports torch or makes a group. Work is
split by audio duration (`split_by_duration`), each process on its own device (`device`: GPU LOCAL_RANK) or its
share of the machine's CPU cores (`threads`).
"""

import contextlib
import datetime
import heapq
import os
from dataclasses import dataclass

from .errors import Error

# How long a process waits at a collective step for the others: the slowest rank of a long transcription may
# finish hours after the fastest (a rank that dies makes the launcher stop the others well before this).
TIMEOUT = datetime.timedelta(hours=48)


class DistributedError(Error, RuntimeError):
    """The launcher's environment cannot be used (a rank outside the world size, a non-number)."""


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ=None) -> "Context":
        """This process's place, from the variables `torchrun` and `accelerate launch` set (one process without)."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", None)):
            text = environ.get(name)
            try:
                values[name] = default if text in (None, "") else int(text)
            except ValueError:
                raise DistributedError(f"{name}={text!r} in the environment is not a number") from None
        world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
        local_world = values["LOCAL_WORLD_SIZE"] or world
        if world < 1 or not 0 <= rank < world or not 0 <= local < local_world:
            raise DistributedError(
                f"RANK={rank}, LOCAL_RANK={local} do not fit WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local_world}"
            )
        return cls(rank, world, local, local_world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this process: with several processes, `cuda` is the GPU numbered LOCAL_RANK."""
        if self.world_size > 1 and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def threads(self, given=None):
        """CPU threads for this process: `given`, else (several processes) this machine's cores divided between
        its processes, else None (the library's default)."""
        if given or self.world_size == 1:
            return given
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores // self.local_world_size)

    # ---- collective steps (one process: plain values, no torch)

    def all_gather(self, value) -> list:
        """`value` of every rank, in rank order (also a barrier)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def gather(self, value):
        """`value` of every rank, in rank order, on rank 0 (None on the others)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, values, dst=0)
        return values

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


ONE_PROCESS = Context()


@contextlib.contextmanager
def process_group(context: Context):
    """With several processes, the gloo process group while the block runs: made the first time (and kept for the
    process's life, so that one launch can run several jobs: a group made again in the same launch would meet
    the first one's addresses in the launcher's store), or one the caller made (Accelerate, a script)."""
    if context.world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=context.rank, world_size=context.world_size, timeout=TIMEOUT)
        elif dist.get_world_size() != context.world_size:
            raise DistributedError(
                f"the process group has {dist.get_world_size()} processes, WORLD_SIZE says {context.world_size}"
            )
    yield context


def split_by_duration(durations, parts: int) -> list[list[int]]:
    """Indices of `durations` in `parts` shares of nearly equal total duration: longest first, each onto the share
    with the least audio so far (ties: the lower share number; equal durations: the earlier index), so that every
    process computes the same split. Each share's indices are in increasing order."""
    order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
    heap = [(0.0, part) for part in range(parts)]
    shares = [[] for _ in range(parts)]
    for index in order:
        load, part = heapq.heappop(heap)
        shares[part].append(index)
        heapq.heappush(heap, (load + durations[index], part))
    return [sorted(share) for share in shares]
