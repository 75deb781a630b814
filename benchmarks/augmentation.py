"""The main job without and with augmentation, at equal training time: WER on the embedded corpus's
in-voice test sets (crowd, farfield), on the held-out voice (heldout_voice: espeak-ng's Klatt voices, never
trained on), and the transcript and CER of real Golos recordings.

    python benchmarks/augmentation.py                        # trains each variant, then evaluates (about 1 h)
    python benchmarks/augmentation.py --variants none,full --epochs 35 --out outputs/augmentation
    python benchmarks/augmentation.py --skip_training        # evaluate the folders of an earlier run

Every variant is `train_ctc.py --preset mini` with the same epochs, seed and data order; only the options
below differ, all given explicitly so that the comparison does not depend on what the preset holds. The
variants train one after the other: on 2 cores, two runs at once would slow each other unevenly. Real
recordings: a manifest (`--recordings`, default ../shared/golos_example/manifest.jsonl, absent in a user's
checkout: then that column is left out).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, machine, table

OFF = ["--speed_perturbation", "1.0", "--reverb_probability", "0", "--noise_probability", "0",
       "--volume_perturbation_db", "0", "0"]  # fmt: skip
WAVEFORM = ["--speed_perturbation", "0.9", "1.0", "1.1", "--reverb_probability", "0.3", "--noise_probability", "0.3",
            "--noise_snr_db", "5", "30", "--volume_perturbation_db", "-18", "6"]  # fmt: skip
SPEC_AUGMENT = ("apply_spec_augment=true,mask_time_prob=0.12,mask_time_length=10,mask_feature_prob=0.3,"
                "mask_feature_length=10,mask_feature_min_masks=2")  # fmt: skip
VARIANTS = {
    "none": [*OFF, "--config_overrides", "apply_spec_augment=false"],
    "waveform": [*WAVEFORM, "--config_overrides", "apply_spec_augment=false"],
    "specaugment": [*OFF, "--config_overrides", SPEC_AUGMENT],
    "full": [*WAVEFORM, "--config_overrides", SPEC_AUGMENT],
}


def train(name, out, epochs, extra):
    command = [sys.executable, str(ROOT / "train_ctc.py"), "--preset", "mini", "--output_dir", str(out / name),
               "--num_train_epochs", str(epochs), "--eval_strategy", "no", "--do_eval", "false",
               "--report_to", "none", "--disable_tqdm", "true", "--overwrite_output_dir", "true",
               *VARIANTS[name], *extra]  # fmt: skip
    print("$", " ".join(command[1:]), flush=True)
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def transcribe_recordings(folder, manifest):
    """(reference, hypothesis) of each line of a manifest of real recordings."""
    import jiwer

    from modeling_ebranchformer.audio import read_audio
    from modeling_ebranchformer.hub import load_ctc_model, load_processor

    model, processor = load_ctc_model(folder).eval(), load_processor(folder)
    results = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        audio = read_audio(manifest.parent / entry["audio_filepath"])
        inputs = processor(audio=audio, sampling_rate=16000, return_tensors="pt")
        hypothesis = processor.batch_decode(model.generate(**inputs))[0]
        results.append((entry["text"], hypothesis, jiwer.cer(entry["text"], hypothesis)))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="none,full", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=float, default=35)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "augmentation")
    parser.add_argument("--recordings", type=Path, default=ROOT.parent / "shared" / "golos_example" / "manifest.jsonl")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the folders already in --out")
    args, extra = parser.parse_known_args()  # anything else goes to train_ctc.py
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {unknown}: use {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)

    from evaluate_ctc import evaluate_model

    rows, transcripts = [], []
    for name in variants:
        if not args.skip_training:
            train(name, args.out, args.epochs, extra)
        state = json.loads((args.out / name / "trainer_state.json").read_text())
        seconds = json.loads((args.out / name / "all_results.json").read_text())["train_runtime"]
        results = {r["set"]: r for r in evaluate_model(str(args.out / name), output_dir=args.out / name / "eval")}
        row = [name, state["global_step"], f"{seconds / 60:.1f}"]
        row += [f"{results[s]['wer'] * 100:.2f} %" for s in results]
        if args.recordings.is_file():
            recordings = transcribe_recordings(args.out / name, args.recordings)
            row.append(" / ".join(f"{cer * 100:.1f} %" for *_, cer in recordings))
            transcripts += [f"{name}: «{hypothesis}» (reference «{reference}»)" for reference, hypothesis, _ in recordings]
        rows.append(row)
    header = ["variant", "steps", "train min"] + [f"{s} WER" for s in results]
    header += ["real recording CER"] if args.recordings.is_file() else []
    print(table(header, rows))
    print("\n".join(transcripts))


if __name__ == "__main__":
    main()
