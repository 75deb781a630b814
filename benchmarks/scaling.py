"""How time and memory of the default E-Branchformer grow with utterance length and batch size.

- Batch 1, 1 s to 60 s: inference and training throughput, memory growth, and the shares of inference time
  spent in attention and in the projections' matrix multiplications (profiler), next to the attention share of the multiply-adds computed from the
  configuration. Attention costs 4*T^2*d per layer against ~2*T*P for the rest (P: a layer's weights),
  so the quadratic term takes over at T = P / (2 d) encoder steps.
- 8 s utterances, batch 1 to 64: training throughput and memory.

    python benchmarks/scaling.py [--threads 2] [--repeats 2]
"""

import argparse

import torch
from common import machine, model_speed, table

from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC


def time_shares(model, seconds: float) -> tuple[float, float]:
    """Fractions of the profiled inference self-time spent in attention kernels and in matrix multiplications."""
    from torch.profiler import profile

    frames = 1 + int(16000 * seconds) // 160
    features = torch.randn(1, frames, 64)
    with torch.inference_mode():
        model(features)
        with profile() as prof:
            model(features)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key or "_softmax" in e.key)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm"))
    return attention / total, matmul / total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lengths", default="1,5,10,20,30,60")
    parser.add_argument("--batches", default="1,4,16,64")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine())

    config = EBranchformerConfig()
    model = EBranchformerForCTC(config).eval()
    d = config.hidden_size
    per_layer = sum(p.numel() for p in model.ebranchformer.layers[0].parameters())
    crossover = per_layer / (2 * d)
    print(
        f"\nattention multiply-adds equal the rest of a layer's at T = {per_layer:,} / (2 * {d}) = {crossover:.0f} "
        f"encoder steps = {crossover * 0.04:.0f} s of audio"
    )

    rows = []
    for seconds in [float(s) for s in args.lengths.split(",")]:
        steps = -(-(1 + int(16000 * seconds) // 160) // 4)
        inference = model_speed("ebranchformer", "inference", 1, seconds, args.threads, args.repeats)
        training = model_speed("ebranchformer", "training", 1, seconds, args.threads, args.repeats)
        attention, matmul = time_shares(model, seconds)
        rows.append(
            [
                f"{seconds:g} s",
                steps,
                f"{inference['audio_per_second']:.0f}",
                f"{training['audio_per_second']:.1f}",
                f"{inference['memory_mib']:.0f}",
                f"{training['memory_mib']:.0f}",
                f"{100 * attention:.0f} %",
                f"{100 * steps / (steps + crossover):.0f} %",
                f"{100 * matmul:.0f} %",
            ]
        )
    print(f"\nbatch 1, {args.threads} threads: audio seconds per second, memory growth in MiB")
    print(
        table(
            [
                "length",
                "steps",
                "inference",
                "training",
                "inf. MiB",
                "train MiB",
                "attention time",
                "attention MACs",
                "matmul time",
            ],
            rows,
        )
    )

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        training = model_speed("ebranchformer", "training", batch, 8.0, args.threads, args.repeats)
        rows.append(
            [
                batch,
                f"{training['audio_per_second']:.1f}",
                f"{training['memory_mib']:.0f}",
                f"{training['memory_mib'] / batch:.0f}",
            ]
        )
    print(f"\n8 s utterances, training, {args.threads} threads")
    print(table(["batch", "audio s / s", "train MiB", "MiB per utterance"], rows))


if __name__ == "__main__":
    main()
