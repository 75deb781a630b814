"""transcribe.py on several processes against one: the embedded corpus's test files (180 recordings) with

- 1 process of 1 thread (`python transcribe.py ... --threads 1`),
- 2 processes of 1 thread each (`torchrun --nproc_per_node 2 transcribe.py ... --threads 1`),
- the peer: 1 process of 2 threads (`python transcribe.py ... --threads 2`),

in interleaved rounds (the order turns every round), each a fresh command that starts over (`--overwrite`).
Files per second from transcribe.py's own summary (the loop, from the first batch to the merged output: model
loading and imports not counted) and end to end (the whole command's wall time); the merge's cost (rank 0
taking every share and writing the output) as the summary reports it. Medians over the rounds, with min-max,
and the ratio to the peer of the same round. With `--device cuda` (one process per GPU) the per-GPU speed
gives the time for Golos train (1,103,799 files, 1,227 h) on 8 GPUs; on CPU that line stays empty.

    python benchmarks/distributed_transcription.py [--model outputs/mini] [--rounds 5] [--batch_size 16]
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, table

GOLOS_TRAIN_FILES, GOLOS_TRAIN_HOURS = 1_103_799, 1227
INPUTS = [
    ROOT / "ebranchformer_ru" / "golos" / "golos_mini" / "test_opus" / name / "manifest.jsonl"
    for name in ("crowd", "farfield", "heldout_voice")
]
SUMMARY = re.compile(r"(\d+) transcribed \(([\d.]+) h of audio in ([\d.]+) s\)")
MERGE = re.compile(r"merged in ([\d.]+) s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def default_model(folder: Path) -> Path:
    """The default configuration (the course's size) with random weights: speed does not depend on them."""
    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    EBranchformerForCTC(EBranchformerConfig()).eval().save_pretrained(folder)
    EBranchformerProcessor().save_pretrained(folder)
    return folder


def run(processes: int, threads: int, model, output, args) -> dict:
    launcher = [sys.executable]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(free_port()),
        ]
    command = [
        *launcher,
        str(ROOT / "transcribe.py"),
        str(model),
        *map(str, INPUTS),
        "--output",
        str(output),
        "--threads",
        str(threads),
        "--batch_size",
        str(args.batch_size),
        "--device",
        args.device,
        "--no_progress",
        "--overwrite",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    summary = SUMMARY.search(result.stderr)
    if result.returncode or not summary:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    files, hours, seconds = int(summary[1]), float(summary[2]), float(summary[3])
    merge = MERGE.search(result.stderr)
    return {
        "files_per_s": files / seconds,
        "audio_s_per_s": hours * 3600 / seconds,
        "end_to_end": files / wall,
        "merge_s": float(merge[1]) if merge else None,
        "files": files,
    }


def spread(values, digits=1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model folder; default: the default configuration, random weights")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    print(machine())
    configurations = {
        "1 process x 1 thread": (1, 1),
        "2 processes x 1 thread": (2, 1),
        "1 process x 2 threads (peer)": (1, 2),
    }
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < 2:  # one GPU: the one-process figures only
            del configurations["2 processes x 1 thread"]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else default_model(Path(tmp) / "model")
        results = {name: [] for name in configurations}
        for round_ in range(args.rounds):
            names = list(configurations)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]  # interleaved, order turning
            for name in names:
                results[name].append(run(*configurations[name], model, Path(tmp) / "out.jsonl", args))
                print(f"round {round_ + 1}, {name}: {results[name][-1]['files_per_s']:.1f} files/s", file=sys.stderr)
    peer = results["1 process x 2 threads (peer)"]
    rows = []
    for name, runs in results.items():
        ratios = [r["files_per_s"] / p["files_per_s"] for r, p in zip(runs, peer)]
        merges = [r["merge_s"] * 1000 for r in runs if r["merge_s"] is not None]
        rows.append(
            [
                name,
                spread([r["files_per_s"] for r in runs]),
                spread([r["audio_s_per_s"] for r in runs]),
                spread(ratios, 2),
                spread([r["end_to_end"] for r in runs]),
                spread(merges, 1) if merges else "-",
            ]
        )
    print(f"\n{peer[0]['files']} files, {args.rounds} rounds, device {args.device}; median (min-max)\n")
    print(table(["configuration", "files/s", "audio s/s", "ratio to peer", "files/s end to end", "merge ms"], rows))
    if args.device == "cuda":
        per_gpu = statistics.median(r["audio_s_per_s"] for r in results["1 process x 1 thread"])
        hours = GOLOS_TRAIN_HOURS * 3600 / (8 * per_gpu) / 3600
        print(
            f"\nGolos train on 8 GPUs: {GOLOS_TRAIN_HOURS} h x 3600 / (8 x {per_gpu:.0f} audio s/s per GPU) = "
            f"{hours:.2f} h (if 8 processes scale as 1; the merge of {GOLOS_TRAIN_FILES:,} records adds seconds)"
        )
    else:
        print("\nGolos train on 8 GPUs: no GPU figure yet (run with --device cuda on a GPU machine)")


if __name__ == "__main__":
    main()
