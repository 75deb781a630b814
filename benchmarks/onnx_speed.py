"""PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8 and PyTorch dynamic int8 (torch.ao, Linear layers) in
the same run, on the same threads (2):

- model throughput (features -> log-probabilities) in audio seconds per second at batch 1 x 10 s and
  16 x 8 s; rounds interleave the four (A, B, C, D, A, B, ...), median and min-max over rounds;
- resident memory: each variant runs each shape in a fresh process, which imports only what it needs (the
  ONNX Runtime processes never import torch); peak RSS of that process;
- WER/CER on the embedded test sets (crowd, farfield; 45 utterances each), each variant on its deployment
  path (ONNX: the numpy front end of `onnx_runtime.py`);
- `transcribe.py` end to end on the 90 embedded test files (whole process: start, load, read, transcribe,
  write) against a plain loop over `pipeline("automatic-speech-recognition")` (same process accounting).

    python benchmarks/onnx_speed.py outputs/mini [--onnx_dir outputs/mini_onnx] [--threads 2] [--rounds 7]

Without --onnx_dir the model is exported (with --int8) to a temporary folder first.
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, SETTLE_S, machine, table

from ebranchformer_ru.audio import AudioFile
from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.inference import OnnxBackend, TorchBackend, Transcriber
from ebranchformer_ru.manifest import audio_path, read_manifest
from ebranchformer_ru.metrics import cer, wer
from modeling_ebranchformer.text import normalize_text

TEST = EMBEDDED_CORPUS / "test_opus"
SETS = {"crowd": TEST / "crowd" / "manifest.jsonl", "farfield": TEST / "farfield" / "manifest.jsonl"}
SHAPES = {"1 x 10 s": (1, 10.0), "16 x 8 s": (16, 8.0)}
VARIANTS = ["PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8", "PyTorch int8 (torch.ao dynamic)"]


def manifest_entries(path):
    return [(audio_path(path, e["audio_filepath"]), e["text"]) for _, e in read_manifest(path)]


def joined_audio(seconds, offset=0):
    """Test utterances end to end (real speech), cut to `seconds`; `offset` picks where to start."""
    import soundfile as sf

    files = [p for s in SETS.values() for p, _ in manifest_entries(s)]
    pieces, total, i = [], 0, offset
    while total < seconds * 16000:
        wave, _ = sf.read(str(files[i % len(files)]), dtype="float32")
        pieces.append(wave)
        total += len(wave)
        i += 1
    return np.concatenate(pieces)[: int(seconds * 16000)]


def shape_audio(name):
    batch, seconds = SHAPES[name]
    return [joined_audio(seconds, offset=7 * i) for i in range(batch)]


class OnnxVariant:
    """The ONNX Runtime backend of the inference core; `forward` times the graph alone."""

    def __init__(self, onnx_dir, quantized, threads):
        self.backend = OnnxBackend(onnx_dir, threads=threads, quantized=quantized)
        self.model = self.backend.model

    def features(self, waveforms):
        return self.model.features.batch(waveforms)

    def forward(self, inputs):
        return self.model.run_features(*inputs)[0]

    def texts(self, waveforms):
        return [record["text"] for record in Transcriber(self.backend).transcribe(waveforms)]


class TorchVariant:
    """The PyTorch backend of the inference core (with `quantized`, torch.ao's dynamic int8 of the Linear
    layers, which leaves the `Float32Linear`s, the CTC head and the subsampling, in float32: under 1 % of the work);
    `forward` times the model alone."""

    def __init__(self, model_dir, quantized, threads):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.backend = TorchBackend.from_folder(model_dir)
        if quantized:
            self.backend.model = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.backend.model), {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model, self.processor = self.backend.model, self.backend.processor

    def features(self, waveforms):
        return self.backend.features(waveforms)

    def forward(self, inputs):
        with self.torch.inference_mode():
            return self.torch.log_softmax(self.model(**inputs).logits, -1)

    def texts(self, waveforms):
        return [record["text"] for record in Transcriber(self.backend).transcribe(waveforms)]


def make_variant(name, model_dir, onnx_dir, threads):
    if name.startswith("ONNX"):
        return OnnxVariant(onnx_dir, "int8" in name, threads)
    return TorchVariant(model_dir, "int8" in name, threads)


def memory_child(args):
    """One variant, one shape, in this fresh process: prints {"peak_mib", "loaded_mib"}."""
    variant = make_variant(args.memory_child, args.model, args.onnx_dir, args.threads)
    loaded = high_water_mib()
    inputs = variant.features(shape_audio(args.shape))
    for _ in range(2):
        variant.forward(inputs)
    print(json.dumps({"peak_mib": high_water_mib(), "loaded_mib": loaded, "torch_imported": "torch" in sys.modules}))


def high_water_mib() -> float:
    """Peak resident memory of this process image (VmHWM; unlike getrusage's ru_maxrss, which Linux carries
    over from the parent across fork and exec, it starts afresh in each new process)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def word_error_rates(variant):
    """(WER, CER) in % of each set, every utterance through the inference core's Transcriber (its batches)."""
    out = {}
    for name, manifest in SETS.items():
        entries = manifest_entries(manifest)
        references = [normalize_text(t) for _, t in entries]
        hypotheses = variant.texts([AudioFile(p) for p, _ in entries])
        out[name] = (100 * wer(references, hypotheses), 100 * cer(references, hypotheses))
    return out


def run_process(command, env=None):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result


PIPELINE_LOOP = """
import sys, time
import torch
torch.set_num_threads({threads})
import modeling_ebranchformer
from ebranchformer_ru.audio import pipeline_input
from transformers import pipeline
asr = pipeline("automatic-speech-recognition", model={model!r})
for path in {files!r}:
    asr(pipeline_input(path))["text"]
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a trained model folder (WER is meaningless for random weights)")
    parser.add_argument("--onnx_dir", help="its export_onnx.py --int8 folder (default: export to a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--e2e_rounds", type=int, default=3)
    parser.add_argument("--parts", default="throughput,memory,wer,e2e", help="which measurements (comma-separated)")
    parser.add_argument("--memory_child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return memory_child(args)

    import torch

    torch.set_num_threads(args.threads)
    import onnxruntime

    print(machine())
    print(
        f"onnxruntime {onnxruntime.__version__}; model {args.model}; load average at start "
        f"{' '.join(open('/proc/loadavg').read().split()[:3])}"
    )
    if args.onnx_dir is None:
        from ebranchformer_ru import onnx_export

        args.onnx_dir = str(Path(tempfile.mkdtemp()) / "onnx")
        onnx_export.export(args.model, args.onnx_dir, int8=True, wer_sets={}, threads=args.threads)
    variants = {name: make_variant(name, args.model, args.onnx_dir, args.threads) for name in VARIANTS}

    # Throughput, interleaved rounds.
    throughput = {}
    for shape in SHAPES:
        batch, seconds = SHAPES[shape]
        audio = shape_audio(shape)
        inputs = {name: v.features(audio) for name, v in variants.items()}
        for name, v in variants.items():
            v.forward(inputs[name])  # warm-up
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, v in variants.items():
                time.sleep(SETTLE_S)
                start = time.perf_counter()
                v.forward(inputs[name])
                times[name].append(time.perf_counter() - start)
        throughput[shape] = {name: [batch * seconds / t for t in ts] for name, ts in times.items()}

    # Memory: a fresh process per variant and shape.
    parts = set(args.parts.split(","))
    memory = {}
    for shape in SHAPES if "memory" in parts else []:
        for name in VARIANTS:
            command = [
                sys.executable,
                __file__,
                args.model,
                "--onnx_dir",
                args.onnx_dir,
                "--threads",
                str(args.threads),
                "--memory_child",
                name,
                "--shape",
                shape,
            ]
            _, result = run_process(command)
            memory[shape, name] = json.loads(result.stdout.strip().splitlines()[-1])

    # Accuracy.
    wer = {name: word_error_rates(v) for name, v in variants.items()} if "wer" in parts else {}
    del variants

    rows = []
    base = {shape: statistics.median(throughput[shape]["PyTorch fp32"]) for shape in SHAPES}
    best = {shape: max(throughput[shape]["PyTorch fp32"]) for shape in SHAPES}
    for shape in SHAPES:
        for name in VARIANTS:
            values = throughput[shape][name]
            median = statistics.median(values)
            mem = memory.get((shape, name), {"peak_mib": float("nan"), "torch_imported": name.startswith("PyTorch")})
            rows.append(
                [
                    shape,
                    name,
                    f"{median:.0f} ({min(values):.0f}-{max(values):.0f})",
                    f"**{median / base[shape]:.2f}**",
                    f"{max(values) / best[shape]:.2f}",
                    f"{mem['peak_mib']:.0f}",
                    "yes" if mem["torch_imported"] else "no",
                ]
            )
    print(
        f"\nModel throughput, audio s / s on {args.threads} threads: median (min-max) of {args.rounds} interleaved "
        "rounds; ratios of the medians and of the best rounds; memory: peak RSS of a fresh process running that "
        "variant and shape"
    )
    header = ["batch x length", "variant", "audio s/s", "vs PyTorch fp32", "best vs best", "peak RSS MiB"]
    print(table(header + ["torch imported"], rows))

    rows = []
    for name in VARIANTS if wer else []:
        (cw, cc), (fw, fc) = wer[name]["crowd"], wer[name]["farfield"]
        base_c, base_f = wer["PyTorch fp32"]["crowd"][0], wer["PyTorch fp32"]["farfield"][0]
        rows.append(
            [name, f"{cw:.2f} % ({cw - base_c:+.2f})", f"{cc:.2f} %", f"{fw:.2f} % ({fw - base_f:+.2f})", f"{fc:.2f} %"]
        )
    if rows:
        print("\nAccuracy on the embedded test sets (45 + 45 utterances; WER change against PyTorch fp32)")
        print(table(["variant", "crowd WER", "crowd CER", "farfield WER", "farfield CER"], rows))

    if "e2e" not in parts:
        return
    # End to end on the 90 test files.
    files = [str(p) for s in SETS.values() for p, _ in manifest_entries(s)]
    out = Path(tempfile.mkdtemp())
    commands = {
        "transcribe.py, PyTorch model": [sys.executable, "transcribe.py", args.model, *map(str, SETS.values())],
        "transcribe.py, ONNX fp32": [sys.executable, "transcribe.py", args.onnx_dir, *map(str, SETS.values())],
        "transcribe.py, ONNX int8": [
            sys.executable,
            "transcribe.py",
            args.onnx_dir,
            *map(str, SETS.values()),
            "--quantized",
        ],
        "loop over pipeline(...), PyTorch model": [
            sys.executable,
            "-c",
            PIPELINE_LOOP.format(threads=args.threads, model=args.model, files=files),
        ],
    }
    seconds = {name: [] for name in commands}
    for round_ in range(args.e2e_rounds):
        for name, command in commands.items():
            if command[1] == "transcribe.py":
                output = out / f"{len(seconds[name])}-{round_}-{abs(hash(name))}.jsonl"
                command = command + ["--output", str(output), "--threads", str(args.threads), "--no_progress"]
            elapsed, _ = run_process(command, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            seconds[name].append(elapsed)
    base = statistics.median(seconds["loop over pipeline(...), PyTorch model"])
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        rows.append(
            [
                name,
                f"{median:.1f} ({min(values):.1f}-{max(values):.1f})",
                f"{len(files) / median:.2f}",
                f"**{base / median:.2f}**",
            ]
        )
    print(
        f"\nEnd to end on the {len(files)} embedded test files (whole process incl. start-up and model loading; "
        f"median (min-max) of {args.e2e_rounds} interleaved rounds)"
    )
    print(table(["command", "wall s", "files / s", "vs pipeline loop"], rows))
    print(f"\nload average at the end {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
