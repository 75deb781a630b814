"""Several processes, on one machine or many: who this process is, its share of the work, and the few collective
steps `transcribe.py` and `evaluate_ctc.py` need (a CPU `gloo` group, also next to GPUs: only small Python
objects travel through it).

    torchrun --nproc_per_node 8 transcribe.py MODEL recordings/ --output out.jsonl --device cuda
    accelerate launch --multi_gpu --num_processes 8 evaluate_ctc.py MODEL --device cuda

`torchrun` and `accelerate launch` set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (and MASTER_ADDR/PORT
for the rendezvous); without them this is one process, and nothing here imports torch or makes a group. Work is
split by audio duration (`split_by_duration`), each process on its own device (`device`: GPU LOCAL_RANK) or its
share of the machine's CPU cores (`threads`).

Before any process writes, the processes agree on what the job is (`agree`): each describes the job as it was
started there (the model's files by content, the options that change an output, the inputs), and when the
descriptions differ (another model folder, other options or other files on one node) every process refuses
with one message that names each difference and the ranks that hold each value. An error one process meets
while preparing (`together`) stops all of them with its message, instead of leaving the others waiting at the
next collective step.
"""

import atexit
import contextlib
import datetime
import hashlib
import heapq
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import Error

# How long a process waits at a collective step for the others: the slowest rank of a long transcription may
# finish hours after the fastest (a rank that dies makes the launcher stop the others well before this).
TIMEOUT = datetime.timedelta(hours=48)


class DistributedError(Error, RuntimeError):
    """The launcher's environment cannot be used (a rank outside the world size, a non-number), or the processes
    were started on different jobs (`agree`)."""


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
            # Ours to end: left to the interpreter's exit, the group's C++ threads are destroyed still running and
            # the process aborts ("terminate called without an active exception", status -6) after its work.
            atexit.register(_end_process_group)
        elif dist.get_world_size() != context.world_size:
            raise DistributedError(
                f"the process group has {dist.get_world_size()} processes, WORLD_SIZE says {context.world_size}"
            )
    yield context


def _end_process_group():
    import torch.distributed as dist

    with contextlib.suppress(Exception):  # at exit: nothing left to report to
        if dist.is_initialized():
            dist.destroy_process_group()


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


# ---- agreeing on the job


def together(context: Context, work: Callable):
    """`work()` on every process; an `Error` or `OSError` it raises on any of them is raised on all (the lowest
    rank's; its message names that rank unless every process met the same), so that no process goes on alone to a
    collective step the others never reach. One process: `work()`."""
    if context.world_size == 1:
        return work()
    try:
        result, problem = work(), None
    except (Error, OSError) as error:  # what a command reports in one line (an unreadable file, too)
        result, problem = None, error
    problems = [(rank, p) for rank, p in enumerate(context.all_gather(problem)) if p is not None]
    if not problems:
        return result
    rank, first = problems[0]
    if len(problems) == context.world_size and len({str(p) for _, p in problems}) == 1:
        raise first
    try:
        named = type(first)(f"rank {rank}: {first}")
    except TypeError:  # an error class with other arguments: as it is
        named = first
    raise named from None


def agree(context: Context, describe: Callable[[], dict]):
    """Refuses, on every process and before any writes, a job whose processes were started on different work.
    `describe()` is what defines the job as this process sees it (a JSON-able dict: the model's files by content,
    the options that change an output, the inputs); the digests of its values are compared, only values that
    differ travel in full, and one `DistributedError` names each difference with the ranks that hold each value.
    One process: nothing to compare, and `describe` is not called (it may read the model's weights)."""
    if context.world_size == 1:
        return
    described = together(context, describe)
    digests = context.all_gather({key: _digest(value) for key, value in described.items()})
    keys = list(dict.fromkeys(key for digest in digests for key in digest))
    differing = [key for key in keys if len({digest.get(key) for digest in digests}) > 1]
    if not differing:
        return
    gathered = context.all_gather({key: (key in described, described.get(key)) for key in differing})
    differences = []
    for key in differing:
        differences += _differences(key, [value if given else _ABSENT for given, value in (g[key] for g in gathered)])
    if len(differences) > MAX_DIFFERENCES:  # another preset on one machine: dozens of options
        differences[MAX_DIFFERENCES:] = [f"and {len(differences) - MAX_DIFFERENCES} more differences"]
    raise DistributedError(
        f"the {context.world_size} processes were started on different jobs, and none of them writes anything: "
        + "; ".join(differences)
        + ". Start every process with the same model, options and inputs (on several machines: the same files at "
        "the same paths, e.g. in a folder they share)"
    )


_ABSENT = object()  # a key one process's description lacks
MAX_DIFFERENCES = 12  # named in the message; the others are counted
SHOWN = 200  # characters of a value in the message at most; the middle of a longer one is left out
SHOWN_TEXT = 60  # characters of a string in a value (a path keeps its start and its file's name)


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _differences(name: str, values: list) -> list[str]:
    """What differs between the ranks' `values` of `name`: in mappings, each key that differs; in lists too long to
    show whole, their lengths and the first item that differs; else each value with the ranks that hold it."""
    if all(isinstance(value, dict) for value in values):
        keys = list(dict.fromkeys(key for value in values for key in value))
        found = []
        for key in keys:
            mine = [value.get(key, _ABSENT) for value in values]
            if len({_digest(v) if v is not _ABSENT else None for v in mine}) > 1:
                found += _differences(f"{name} {key}", mine)
        return found
    long = any(len(_json(value)) > SHOWN for value in values if value is not _ABSENT)
    if long and all(isinstance(value, list) for value in values):
        lengths = [len(value) for value in values]
        counts = "" if len(set(lengths)) == 1 else _by_rank([f"{n} items" for n in lengths], quote=False) + "; "
        for index in range(max(lengths)):
            items = [value[index] if index < len(value) else _ABSENT for value in values]
            if len({_digest(item) if item is not _ABSENT else None for item in items}) > 1:
                return [f"{name}: {counts}item {index + 1}: {_by_rank(items)}"]
    return [f"{name}: {_by_rank(values)}"]


def _by_rank(values: list, quote: bool = True) -> str:
    """'rank 0 X, ranks 1-3 Y': each value once, with the ranks that hold it."""
    groups = {}
    for rank, value in enumerate(values):
        shown = "not set" if value is _ABSENT else _shown(value) if quote else value
        groups.setdefault(shown, []).append(rank)
    return ", ".join(f"{_ranks(ranks)} {shown}" for shown, ranks in groups.items())


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _shown(value) -> str:
    text = _json(_shortened(value))
    return text if len(text) <= SHOWN else text[: SHOWN // 2 - 1] + "…" + text[-(SHOWN // 2) :]


def _shortened(value):
    """`value` with long strings cut in the middle, and digests to their first 16 digits (enough to tell apart)."""
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_shortened(item) for item in value]
    if isinstance(value, str) and value.startswith("sha256:") and len(value) > 24:
        return value[:23] + "…"
    if isinstance(value, str) and len(value) > SHOWN_TEXT:
        return value[:15] + "…" + value[-(SHOWN_TEXT - 16) :]
    return value


def _ranks(ranks: list[int]) -> str:
    """'rank 3', 'ranks 0-2, 5'."""
    runs = []
    for rank in ranks:
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"


# ---- what a job is made of


def file_sha256(path) -> str:
    """A file's SHA-256, read once in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def file_facts(path) -> list | None:
    """[size in bytes, modification time in ns] of a file, None where there is none: what tells two copies of a
    recording apart without reading it (a list of a million recordings is stated, not hashed)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def files_digest(folder, patterns) -> dict:
    """{path relative to `folder`: its SHA-256} of the files matching `patterns` (globs relative to `folder`)."""
    folder = Path(folder)
    found = {path for pattern in patterns for path in folder.glob(pattern) if path.is_file()}
    return {str(path.relative_to(folder)): file_sha256(path) for path in sorted(found)}


# The files of a model folder that make its outputs: weights (PyTorch, sharded, ONNX), configuration, processor and
# tokenizer, an ONNX export's description, the code trust_remote_code runs. Not its model card, training state or
# results, which two copies of one model may hold in other versions.
MODEL_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "*.onnx",
    "*.onnx.data",
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "onnx_export.json",
    "*.py",
)


def model_digest(model) -> dict:
    """{file: its SHA-256} of what makes a model folder's outputs (`MODEL_FILES`): two copies of one model agree,
    wherever they lie. A name that is no folder here (a Hub id): {"Hub id": the name}."""
    if not Path(model).is_dir():
        return {"Hub id": str(model)}
    return files_digest(model, MODEL_FILES)


def language_model_digest(model) -> dict:
    """{file: its SHA-256} of a model folder's language_model/ (`build_lm.py`); {} where it has none."""
    return files_digest(model, ("language_model/*",)) if Path(model).is_dir() else {}


# ---- progress of the whole job


class Tally:
    """Counts of a whole job that every process adds to at its own pace and any process reads, with no collective
    step: through the process group's key-value store (the launcher's rendezvous store). Made at the same step on
    every process (rank 0 names it). One process, or a group without a store: this process's own counts."""

    def __init__(self, context: Context):
        self.store, self.prefix, self.counts = None, "", {}
        if context.world_size > 1:
            from torch.distributed import distributed_c10d

            self.prefix = f"ebranchformer_ru/tally/{context.broadcast(uuid.uuid4().hex)}/"
            try:
                self.store = distributed_c10d._get_default_store()
            except (AttributeError, RuntimeError, ValueError):
                self.store = None

    def add(self, **amounts: int) -> dict:
        """Adds this process's `amounts` (integers); returns the job's totals so far."""
        if self.store is None:
            for name, amount in amounts.items():
                self.counts[name] = self.counts.get(name, 0) + amount
            return dict(self.counts)
        return {name: self.store.add(self.prefix + name, amount) for name, amount in amounts.items()}
