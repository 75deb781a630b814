"""Real-time factor (wall time / audio duration) of pipeline("automatic-speech-recognition") with the default
E-Branchformer at batch size 1 on 2 threads, against the bare model call (features + forward + argmax)
measured in the same run, so the pipeline's own overhead shows:

- a 10 s utterance (goal: RTF <= 0.01);
- a 5-minute recording with chunk_length_s=30 (the model's positions cover 200 s; longer input must be chunked).

Audio: utterances of the embedded corpus joined end to end. Weights are random: speed does not depend on them.

    python benchmarks/pipeline_latency.py [--threads 2] [--repeats 5]
"""

import argparse
import tempfile

import numpy as np
import torch
from common import machine, table, timed
from transformers import pipeline

from ebranchformer_ru import golos
from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor


def joined_audio(seconds: float) -> np.ndarray:
    decoded = golos.decode_with_soundfile(golos.load_golos(split="train", decode="none"))
    pieces, total, i = [], 0, 0
    while total < seconds * 16000:
        wave = decoded[i % len(decoded)]["audio"]["array"]
        pieces.append(wave)
        total += len(wave)
        i += 1
    return np.concatenate(pieces)[: int(seconds * 16000)].astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine())

    folder = tempfile.mkdtemp()
    model = EBranchformerForCTC(EBranchformerConfig()).eval()
    processor = EBranchformerProcessor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    asr = pipeline("automatic-speech-recognition", model=folder)

    def bare(wave):
        with torch.inference_mode():
            inputs = processor(audio=wave, sampling_rate=16000, return_tensors="pt")
            return processor.batch_decode(model(**inputs).logits.argmax(-1))

    rows = []
    short = joined_audio(10.0)
    t_pipe = timed(lambda: asr({"raw": short, "sampling_rate": 16000}), args.repeats)
    t_bare = timed(lambda: bare(short), args.repeats)
    rows.append(
        [
            "10 s, one pass",
            f"{t_pipe * 1000:.0f} ms",
            f"{t_pipe / 10:.4f}",
            f"{t_bare / 10:.4f}",
            f"{t_pipe / t_bare:.2f}",
        ]
    )

    long = joined_audio(300.0)
    t_long = timed(lambda: asr({"raw": long, "sampling_rate": 16000}, chunk_length_s=30), max(1, args.repeats // 2))
    # The bare peer for long audio: the same 30 s windows with 5 s strides, one forward each.
    windows = [long[s : s + 30 * 16000] for s in range(0, len(long), 20 * 16000)]
    t_long_bare = timed(lambda: [bare(w) for w in windows], max(1, args.repeats // 2))
    rows.append(
        [
            "5 min, chunk_length_s=30",
            f"{t_long:.2f} s",
            f"{t_long / 300:.4f}",
            f"{t_long_bare / 300:.4f}",
            f"{t_long / t_long_bare:.2f}",
        ]
    )
    print(f"\npipeline at batch size 1, {args.threads} threads")
    print(table(["input", "wall time", "RTF pipeline", "RTF bare model", "pipeline / bare"], rows))


if __name__ == "__main__":
    main()
