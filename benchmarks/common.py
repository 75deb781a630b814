"""Shared helpers of the benchmarks: machine description, timing, memory, tables."""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A pause before each timed call of interleaved rounds: a PyTorch call right after an ONNX Runtime one ran at about
# half its speed (precision.py's `interleaved` says what was measured); 0.3 s later it did not.
SETTLE_S = 0.3


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (
        f"{time.strftime('%Y-%m-%d')}; {cpu}; {os.cpu_count()} logical CPUs; "
        f"torch threads {torch.get_num_threads()}; GPU {gpu}\n"
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def timed(function, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `function()` over `repeats` runs after `warmup` runs, in seconds."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mib() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (docs/benchmarks.md quotes these)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_speed(name, phase, batch, seconds, threads, repeats) -> dict:
    """One figure of `model_speed.py` (a model, inference or training, a batch shape) measured in a fresh process
    of its own, so that no figure is taken in a process another measurement has warmed or fragmented."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("model_speed.py")),
        "--worker",
        name,
        phase,
        str(batch),
        str(seconds),
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{name} {phase} {batch}x{seconds}s failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
