"""The main job without and with augmentation, at equal training time: WER on the embedded corpus's
in-voice test sets (crowd, farfield), on the held-out voice (heldout_voice: espeak-ng's Klatt voices, never
trained on), and the transcript and CER of real Golos recordings.

    python benchmarks/augmentation.py                        # trains each variant, then evaluates (about 1 h)
    python benchmarks/augmentation.py --variants none,full --epochs 32 --out outputs/augmentation
    python benchmarks/augmentation.py --skip_training        # evaluate the folders of an earlier run
    python benchmarks/augmentation.py --probe 200 --variants none,speed,reverb,noise,volume   # how fast each learns

Every variant is `train_ctc.py --preset mini` with the same epochs, seed and data order; only the options
below differ, all given explicitly so that the comparison does not depend on what the preset holds. The
variants train one after the other: on 2 cores, two runs at once would slow each other unevenly. Real
recordings: a manifest (`--recordings`, default ../shared/golos_example/manifest.jsonl, absent in a user's
checkout: then that column is left out). `--probe N` stops each run after N steps of the same schedule and
prints the training loss logged there instead (each augmentation alone: how much it slows learning).
"""

import argparse
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, table

OFF = [
    "--speed_perturbation",
    "1.0",
    "--reverb_probability",
    "0",
    "--noise_probability",
    "0",
    "--volume_perturbation_db",
    "0",
    "0",
]
SPEED = ["--speed_perturbation", "0.9", "1.0", "1.1"]
ROOM = ["--reverb_probability", "0.3", "--noise_probability", "0.3", "--noise_snr_db", "5", "30"]
VOLUME = ["--volume_perturbation_db", "-18", "6"]
SPEC_AUGMENT = (
    "apply_spec_augment=true,mask_time_prob=0.12,mask_time_length=10,mask_feature_prob=0.3,"
    "mask_feature_length=10,mask_feature_min_masks=2"
)
NO_SPEC_AUGMENT = ["--config_overrides", "apply_spec_augment=false"]
VARIANTS = {  # later options override OFF's
    "none": [*OFF, *NO_SPEC_AUGMENT],
    "speed": [*OFF, *SPEED, *NO_SPEC_AUGMENT],
    "speed_room": [*OFF, *SPEED, *ROOM, *NO_SPEC_AUGMENT],
    "waveform": [*OFF, *SPEED, *ROOM, *VOLUME, *NO_SPEC_AUGMENT],
    "full": [*OFF, *SPEED, *ROOM, *VOLUME, "--config_overrides", SPEC_AUGMENT],
    # each alone, for --probe
    "reverb": [*OFF, "--reverb_probability", "0.3", *NO_SPEC_AUGMENT],
    "noise": [*OFF, "--noise_probability", "0.3", "--noise_snr_db", "5", "30", *NO_SPEC_AUGMENT],
    "volume": [*OFF, *VOLUME, *NO_SPEC_AUGMENT],
    "specaugment": [*OFF, "--config_overrides", SPEC_AUGMENT],
}
LOGGING_STEPS = 20


def train(name, out, epochs, extra, probe=None):
    """Trains one variant; with `probe`, stops after that many steps and returns the losses logged so far."""
    command = [
        sys.executable,
        str(ROOT / "train_ctc.py"),
        "--preset",
        "mini",
        "--output_dir",
        str(out / name),
        "--num_train_epochs",
        str(epochs),
        "--eval_strategy",
        "no",
        "--do_eval",
        "false",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--overwrite",
        "true",
        "--logging_steps",
        str(LOGGING_STEPS),
        *VARIANTS[name],
        *extra,
    ]
    if probe:
        command += ["--save_strategy", "no"]
    print("$", " ".join(command[1:]), flush=True)
    log_path = out / f"{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while process.poll() is None:
            losses = logged_losses(log_path)
            if probe and len(losses) * LOGGING_STEPS >= probe:
                process.terminate()
                process.wait()
                return losses
            time.sleep(2)
    if process.returncode:
        raise SystemExit(f"{name}: train_ctc.py failed, see {log_path}")
    return logged_losses(log_path)


def logged_losses(log_path) -> list:
    """The training losses in a train_ctc.py log (the Trainer prints one dict per logging step)."""
    return [
        float(ast.literal_eval(line.strip())["loss"])
        for line in open(log_path, encoding="utf-8", errors="replace")
        if line.startswith("{'loss'")
    ]


def transcribe_recordings(folder, manifest):
    """(reference, hypothesis, CER) of each line of a manifest of real recordings."""
    from ebranchformer_ru.audio import AudioFile
    from ebranchformer_ru.inference import TorchBackend, Transcriber
    from ebranchformer_ru.manifest import audio_path, read_manifest
    from ebranchformer_ru.metrics import cer

    entries = [entry for _, entry in read_manifest(manifest)]
    recordings = [AudioFile(audio_path(manifest, entry["audio_filepath"])) for entry in entries]
    records = Transcriber(TorchBackend.from_folder(folder)).transcribe(recordings)
    return [(e["text"], r["text"], cer([e["text"]], [r["text"]])) for e, r in zip(entries, records)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="none,full", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=float, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "augmentation")
    parser.add_argument("--recordings", type=Path, default=ROOT.parent / "shared" / "golos_example" / "manifest.jsonl")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the folders already in --out")
    parser.add_argument("--probe", type=int, help="stop each run after N steps and report its training loss there")
    args, extra = parser.parse_known_args()  # anything else goes to train_ctc.py
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {unknown}: use {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)

    from ebranchformer_ru.evaluation import evaluate_model

    if args.probe:
        rows = [
            [name, args.probe, f"{train(name, args.out, args.epochs, extra, args.probe)[-1]:.3f}"] for name in variants
        ]
        print(table(["variant", "steps", "training loss there"], rows))
        return
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
            transcripts += [
                f"{name}: «{hypothesis}» (reference «{reference}»)" for reference, hypothesis, _ in recordings
            ]
        rows.append(row)
    header = ["variant", "steps", "train min"] + [f"{s} WER" for s in results]
    header += ["real recording CER"] if args.recordings.is_file() else []
    print(table(header, rows))
    print("\n".join(transcripts))


if __name__ == "__main__":
    main()
