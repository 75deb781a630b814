"""GPU training throughput of the default E-Branchformer: fp32 and bf16 autocast (SDPA attention), the
achieved fraction of the GPU's matmul throughput (measured in the same run with a large matmul), what
that means for one epoch of Golos train (1,227 h), and how often a training step makes the host wait.

    python benchmarks/gpu_throughput.py [--batch 64] [--seconds 4] [--steps 20]
    python benchmarks/gpu_throughput.py --device cpu --batch 4 --steps 2   # the same code path on a CPU

The FLOPs of a step are 3 x the forward FLOPs counted by torch's FlopCounterMode (matmuls, convolutions,
attention where its kernel is counted). On CUDA one extra step runs under torch.cuda.set_sync_debug_mode("warn"), which reports
every operation that synchronises host and device; the count is printed.
"""

import argparse
import time
import warnings

import torch
from common import machine, peak_rss_mib, table

from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC

GOLOS_TRAIN_HOURS = 1227


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model, batch) -> int:
    """3 x the forward FLOPs (backward = 2 x forward, the usual convention). Counting the backward too
    would be wrong here: torch's counter prices the grouped (depthwise) convolutions' backward as if they
    were dense, 250 x too much for this model."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    return 3 * counter.get_total_flops()


def matmul_peak(device, dtype, repeats=20) -> float:
    """Achievable matmul FLOP/s for `dtype` on this device: the denominator of the utilisation figure."""
    size = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def host_synchronisations(step) -> list[str]:
    """The operations of one `step()` that make the host wait for the GPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length (Golos train averages ~4 s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to try the code path anywhere")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here (the CPU figures come from model_speed.py; --device cpu tries this script)")
    print(machine())
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; bf16 is the fast path
    frames = 1 + int(16000 * args.seconds) // 160
    batch = {
        "input_features": torch.randn(args.batch, frames, 64, device=device),
        "attention_mask": torch.ones(args.batch, frames, dtype=torch.long, device=device),
        "labels": (torch.arange(int(8 * args.seconds), device=device).repeat(args.batch, 1) % 32 + 1),
    }
    model = EBranchformerForCTC(EBranchformerConfig()).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    flops = step_flops(model, batch)

    rows, syncs = [], {}
    for name, dtype in (("fp32", torch.float32), ("bf16 autocast", torch.bfloat16)):

        def step(bf16=dtype == torch.bfloat16):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        if device.type == "cuda":
            syncs[name] = host_synchronisations(step)
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / args.steps
        achieved, peak = flops / seconds, matmul_peak(device, dtype)
        audio_per_second = args.batch * args.seconds / seconds
        memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_mib() / 1024
        rows.append(
            [
                name,
                f"{seconds * 1000:.0f} ms",
                f"{audio_per_second:,.0f}",
                f"{achieved / 1e12:.2f}",
                f"{peak / 1e12:.2f}",
                f"{100 * achieved / peak:.0f} %",
                f"{memory:.1f}",
                f"{GOLOS_TRAIN_HOURS * 3600 / audio_per_second / 3600:.1f} h",
            ]
        )
    print(
        f"\ntraining step on {device.type}, batch {args.batch} x {args.seconds:g} s, "
        f"{flops / 1e12:.3f} TFLOP per step (3 x forward)"
    )
    memory_header = "peak GiB (allocated)" if device.type == "cuda" else "peak GiB (process RSS)"
    print(
        table(
            [
                "precision",
                "step",
                "audio s / s",
                "TFLOP/s",
                "matmul peak TFLOP/s",
                "of peak",
                memory_header,
                "Golos epoch",
            ],
            rows,
        )
    )
    for name, found in syncs.items():
        print(f"\n{name}: {len(found)} host-device synchronisation(s) in a step")
        for message in found:
            print(f"  {message}")


if __name__ == "__main__":
    main()
