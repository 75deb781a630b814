"""Front end and data pipeline speed, measured in the same run against their peers:

1. Log-mel features, one thread: EBranchformerFeatureExtractor (torch STFT, batched) against librosa with
   the same settings (the independent implementation the tests compare with), as x real time per core.
2. Data pipeline, one DataLoader worker = one thread: reading the embedded corpus's Opus files
   (train_ctc.py's path: golos.load_golos + soundfile decoding) and the collator (features, padding,
   labels), against what the default model consumes in training on the remaining cores.

    python benchmarks/features.py [--repeats 3]
"""

import argparse

import numpy as np
import torch
from common import machine, table, timed

from ebranchformer_ru import golos
from modeling_ebranchformer import (
    DataCollatorCTC,
    EBranchformerFeatureExtractor,
    EBranchformerProcessor,
)


def librosa_log_mel(wave):
    import librosa

    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=16000,
        n_fft=400,
        win_length=400,
        hop_length=160,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=64,
        fmin=0.0,
        fmax=8000.0,
        htk=True,
        norm=None,
    )
    return np.log(np.clip(mel, 1e-9, 1e9)).T


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_threads", type=int, default=2, help="threads of the training step peer")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(machine())

    train = golos.load_golos(split="train", decode="none")
    decoded = golos.decode_with_soundfile(train)
    waves = [decoded[i]["audio"]["array"] for i in range(len(decoded))]
    audio_seconds = sum(len(w) for w in waves) / 16000
    extractor = EBranchformerFeatureExtractor()

    # 1. Features alone, one thread: batches of 16 as the collator builds them, and one utterance at a time.
    batches = [waves[i : i + 16] for i in range(0, len(waves), 16)]
    ours_batched = timed(lambda: [extractor(b, sampling_rate=16000) for b in batches], args.repeats)
    ours_single = timed(lambda: [extractor(w, sampling_rate=16000) for w in waves], args.repeats)
    reference = timed(lambda: [librosa_log_mel(w) for w in waves], args.repeats)
    rows = [
        ["ours, batches of 16", f"{audio_seconds / ours_batched:,.0f}", f"{reference / ours_batched:.1f}"],
        ["ours, one utterance per call", f"{audio_seconds / ours_single:,.0f}", f"{reference / ours_single:.1f}"],
        ["librosa (same settings)", f"{audio_seconds / reference:,.0f}", "1.0"],
    ]
    difference = max(
        float(
            np.abs(extractor(w, sampling_rate=16000, return_tensors="np").input_features[0] - librosa_log_mel(w)).max()
        )
        for w in waves
    )
    print(
        f"\nlog-mel features of the embedded train set ({len(waves)} utterances, {audio_seconds / 60:.1f} min), 1 thread"
    )
    print(table(["implementation", "x real time per core", "speed-up vs librosa"], rows))
    print(f"same numbers: max |ours - librosa| in the log domain over the {len(waves)} utterances: {difference:.1e}")

    # 2. Data pipeline in one worker: Opus decoding + collator, batches of 16 from the Arrow dataset.
    processor = EBranchformerProcessor(extractor)
    collator = DataCollatorCTC(processor)
    indices = [list(range(i, min(i + 16, len(decoded)))) for i in range(0, len(decoded), 16)]
    decode_only = timed(lambda: [decoded[i] for i in indices], args.repeats)
    pipeline = timed(lambda: [collator([decoded[j] for j in i]) for i in indices], args.repeats)

    # The consumer: training steps of the default model on batches of 16 of this corpus.
    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC

    torch.set_num_threads(args.train_threads)
    model = EBranchformerForCTC(EBranchformerConfig()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    sample = [collator([decoded[j] for j in i]) for i in indices[:3]]
    sample_seconds = sum(float(b["attention_mask"].sum()) / 100 for b in sample)

    def train_steps():
        for batch in sample:
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()

    training = timed(train_steps, 1)
    supply, demand = audio_seconds / pipeline, sample_seconds / training
    print(
        f"\ndata pipeline, one worker (1 thread) vs training the default model ({args.train_threads} threads), "
        "audio seconds per second"
    )
    print(
        table(
            ["stage", "audio s / s"],
            [
                ["Arrow + Opus decoding (soundfile)", f"{audio_seconds / decode_only:,.0f}"],
                ["decoding + collator (features, padding, labels)", f"{supply:,.0f}"],
                ["training step consumes", f"{demand:,.1f}"],
                ["one worker supplies / training consumes", f"{supply / demand:,.0f} x"],
            ],
        )
    )


if __name__ == "__main__":
    main()
