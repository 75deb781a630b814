"""GPU training throughput of the default E-Branchformer: fp32 and bf16 autocast (SDPA attention), the
achieved fraction of the GPU's matmul throughput (measured in the same run with a large matmul), and what
that means for one epoch of Golos train (1,227 h).

    python benchmarks/gpu_throughput.py [--batch 64] [--seconds 4] [--steps 20]

Without a GPU it says so and stops. The FLOPs of a step are counted by torch's FlopCounterMode (matmuls,
convolutions and attention; forward and backward).
"""

import argparse
import time

import torch
from common import machine, table

from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC

GOLOS_TRAIN_HOURS = 1227


def step_flops(model, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(dtype, size=8192, repeats=20) -> float:
    """Achievable matmul FLOP/s for `dtype` on this GPU: the denominator of the utilisation figure."""
    a, b = torch.randn(size, size, device="cuda", dtype=dtype), torch.randn(size, size, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length (Golos train averages ~4 s)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark needs one (the CPU figures come from model_speed.py)")
    print(machine())
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; bf16 is the fast path
    frames = 1 + int(16000 * args.seconds) // 160
    batch = {
        "input_features": torch.randn(args.batch, frames, 64, device="cuda"),
        "attention_mask": torch.ones(args.batch, frames, dtype=torch.long, device="cuda"),
        "labels": (torch.arange(int(8 * args.seconds), device="cuda").repeat(args.batch, 1) % 32 + 1),
    }
    model = EBranchformerForCTC(EBranchformerConfig()).cuda().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    flops = step_flops(model, batch)

    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16 autocast", torch.bfloat16)):

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        achieved, peak = flops / seconds, matmul_peak(dtype)
        audio_per_second = args.batch * args.seconds / seconds
        rows.append([name, f"{seconds * 1000:.0f} ms", f"{audio_per_second:,.0f}", f"{achieved / 1e12:.1f}",
                     f"{peak / 1e12:.0f}", f"{100 * achieved / peak:.0f} %",
                     f"{torch.cuda.max_memory_allocated() / 2**30:.1f}",
                     f"{GOLOS_TRAIN_HOURS * 3600 / audio_per_second / 60:.0f} min"])  # fmt: skip
    print(f"\ntraining step, batch {args.batch} x {args.seconds:g} s, {flops / 1e12:.2f} TFLOP per step")
    print(table(["precision", "step", "audio s / s", "TFLOP/s", "matmul peak TFLOP/s", "of peak", "GiB",
                 "Golos epoch"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
