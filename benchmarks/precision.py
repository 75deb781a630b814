"""Precision on this CPU: float32 against bfloat16 (autocast), each also compiled as `--torch_compile` compiles it, and
the ONNX export's float32 and int8 models, for inference (the inference core's backend call: features, model,
log-softmax) and for training steps, in one process with the rounds interleaved (every variant once per round),
median and spread; then what each part of a served request costs (uploads' decoding, features, the model, CTC
decoding), which bounds what bf16 can do for a server; then the WER of each variant on the embedded test sets
through `Transcriber`, and how far it is from float32's: the words and the frames' best tokens it changes, the
RMS of its log-probabilities' difference, and how near a tie float32's two best tokens were where it changed one.

    python benchmarks/precision.py outputs/mini                          # 1x10 s and 16x8 s, 2 threads, 7 rounds
    python benchmarks/precision.py outputs/mini --rounds 9 --threads 2 --skip_compile true
    python benchmarks/precision.py outputs/mini --skip_speed true        # the WERs and the differences only
    python benchmarks/precision.py outputs/mini --float32_layers 1 3     # also bf16 with its first 1, 3 layers float32
    python benchmarks/precision.py outputs/mini --bf16_residual true     # also bf16 with its residual stream in bf16
    python benchmarks/precision.py outputs/mini --float32_parts cgmlp    # also bf16 with every layer's cgMLP float32

The CPU's model and its bf16/int8 flags are printed: the figures hold for this machine type only. Run it alone
(another CPU-heavy process slows both far more than twice).
"""

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SETTLE_S, machine, table

from ebranchformer_ru.audio import AudioFile, read_audio
from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.inference import OnnxBackend, TorchBackend, Transcriber
from ebranchformer_ru.manifest import audio_path, read_manifest
from ebranchformer_ru.metrics import wer
from modeling_ebranchformer.text import normalize_text

SETS = {name: EMBEDDED_CORPUS / "test_opus" / name / "manifest.jsonl" for name in ("crowd", "farfield")}
FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2")


def cpu_flags() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return ", ".join(f"{flag} {'yes' if flag in present else 'no'}" for flag in FLAGS)
    return "unknown"


def speech(batch: int, seconds: float) -> list[np.ndarray]:
    """`batch` stretches of `seconds` of real speech (the embedded train recordings, joined)."""
    files = sorted((EMBEDDED_CORPUS / "train_opus" / "crowd").glob("*.opus"))[:200]
    joined = np.concatenate([read_audio(path) for path in files])
    n = int(seconds * 16000)
    return [joined[i * n : (i + 1) * n] for i in range(batch)]


def variants(model_dir, onnx_dir, threads, compile_, float32_layers=(), bf16_residual=False, float32_parts=()):
    """name -> backend (a callable from waveforms to log-probabilities)."""
    out = {
        "float32": TorchBackend.from_folder(model_dir, threads=threads, language_model=False),
        "bfloat16": TorchBackend.from_folder(model_dir, threads=threads, language_model=False, dtype="bfloat16"),
    }
    if bf16_residual:
        out["bfloat16, residual stream in bf16"] = with_bf16_residual_stream(model_dir, threads)
    for count in float32_layers:
        layers = "layer 1" if count == 1 else f"layers 1-{count}"
        out[f"bfloat16, {layers} in float32"] = with_float32(model_dir, threads, first_layers(count))
    for part in float32_parts:
        out[f"bfloat16, every {part} in float32"] = with_float32(model_dir, threads, every_layers(part))
    if compile_:  # Inductor with freezing, dynamic shapes (`inference.compile_model`)
        for dtype in ("float32", "bfloat16"):
            out[f"{dtype} + torch.compile"] = TorchBackend.from_folder(
                model_dir, threads=threads, language_model=False, dtype=dtype, torch_compile=True
            )
    out["ONNX float32"] = OnnxBackend(onnx_dir, threads=threads)
    out["ONNX int8"] = OnnxBackend(onnx_dir, threads=threads, quantized=True)
    return out


def with_float32(model_dir, threads, chosen):
    """A bf16 backend whose modules `chosen(model)` compute in float32 (their weights float32, autocast off inside
    them): what making a part of the model float32 again costs, and how much closer to float32 it brings bf16."""
    import torch

    from ebranchformer_ru.inference import cast_matmul_weights, float32_modules

    def in_float32(forward):
        def run(*args, **kwargs):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            with torch.autocast("cpu", enabled=False):
                return forward(*args, **kwargs)

        return run

    full = TorchBackend.from_folder(model_dir, threads=threads, language_model=False)
    kept = chosen(full.model)
    for module in kept:
        module.forward = in_float32(module.forward)
    skip = [*float32_modules(full.model), *(inner for module in kept for inner in module.modules())]
    cast_matmul_weights(full.model, torch.bfloat16, skip=skip)
    return TorchBackend(full.model, full.processor, "cpu", "bfloat16")


def first_layers(count):
    """The first `count` encoder layers (an error made early runs through every later layer)."""
    return lambda model: list(model.ebranchformer.layers)[:count]


def every_layers(part):
    """Module `part` of every encoder layer (`self_attn`, `cgmlp`, `merge`, `ffn1`, `ffn2`, `cgmlp.csgu`, ...)."""
    return lambda model: [layer.get_submodule(part) for layer in model.ebranchformer.layers]


def with_bf16_residual_stream(model_dir, threads):
    """A bf16 backend whose subsampling multiplies in bf16, as before the residual stream was kept float32: the
    stream starts in bf16 and stays bf16 (a CPU's layer norms keep their input's dtype). What float32 costs there."""
    import torch

    from ebranchformer_ru.inference import cast_matmul_weights

    full = TorchBackend.from_folder(model_dir, threads=threads, language_model=False)
    full.model.ebranchformer.subsampling.projection.__class__ = torch.nn.Linear
    cast_matmul_weights(full.model, torch.bfloat16, skip=[full.model.lm_head])
    return TorchBackend(full.model, full.processor, "cpu", "bfloat16")


def interleaved(functions: dict, rounds: int) -> dict:
    """name -> the seconds of each round; one warm-up call each, then every function once per round, each after a
    pause of SETTLE_S. Without the pause a PyTorch call right after an ONNX Runtime one ran at about half its speed
    (float32 at 1 x 10 s: 77 audio s/s against 144; with ONNX Runtime's threads not spinning, and with one thread,
    the same; after a 0.3 s pause, 178 against 170), which had made float32, measured after the int8 export, look
    twice as slow as it is."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def speed_rows(times: dict, audio_seconds: float, baseline: str) -> list[list]:
    base = statistics.median(times[baseline])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{audio_seconds / max(values):,.0f}-{audio_seconds / min(values):,.0f}"
        rows.append([name, f"{audio_seconds / median:,.0f}", spread, f"{base / median:.2f}x"])
    return rows


def training_times(model_dir, threads, rounds, compile_) -> dict:
    """Seconds of a training step (forward, CTC loss, backward, AdamW) on 16 x 8 s: float32, bf16 autocast, and
    bf16 with the model compiled (what `train_ctc.py --torch_compile true` does: Trainer compiles the model)."""
    import torch

    from ebranchformer_ru.training import backward_outside_autocast
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    torch.set_num_threads(threads)
    processor = EBranchformerProcessor.from_pretrained(model_dir)
    inputs = processor.feature_extractor(speech(16, 8.0), sampling_rate=16000, return_tensors="pt")
    labels = (torch.arange(64).repeat(16, 1) % 32 + 1).long()
    steps = {}
    for name in ("float32", "bfloat16", "bfloat16 + torch.compile")[: 3 if compile_ else 2]:
        model = EBranchformerForCTC.from_pretrained(model_dir, dtype=torch.float32).train()  # as training loads
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        forward = torch.compile(model) if name.endswith("compile") else model

        def step(forward=forward, optimizer=optimizer, bf16=name != "float32", compiled=forward is not model):
            with backward_outside_autocast(compiled):  # as train_ctc.py traces a compiled backward
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = forward(**inputs, labels=labels).loss
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        steps[name] = step
    return interleaved(steps, rounds)


def request_parts(backends: dict, rounds: int) -> tuple[dict, float]:
    """(name -> seconds of each round, audio seconds) of the parts of serving the embedded test files (Opus, 3 s
    on average) in the server's batches of 16: decoding the uploads, log-mel features, the model in float32 and in
    bf16, greedy CTC decoding. bf16 speeds up the model only, so the rest bounds what it can do for a server."""
    files = [path.read_bytes() for path in sorted((EMBEDDED_CORPUS / "test_opus").rglob("*.opus"))]
    waveforms = [read_audio(io.BytesIO(data)) for data in files]
    batches = [waveforms[i : i + 16] for i in range(0, len(waveforms), 16)]
    float32, bfloat16 = backends["float32"], backends["bfloat16"]
    features = {backend: [backend.features(batch) for batch in batches] for backend in (float32, bfloat16)}
    transcriber = Transcriber(float32)
    outputs = transcriber.log_probs(waveforms)
    parts = {
        "Opus decoding (soundfile)": lambda: [read_audio(io.BytesIO(data)) for data in files],
        "log-mel features": lambda: [float32.features(batch) for batch in batches],
        "model, float32": lambda: [float32.run_features(inputs) for inputs in features[float32]],
        "model, bfloat16": lambda: [bfloat16.run_features(inputs) for inputs in features[bfloat16]],
        "greedy CTC decoding": lambda: [transcriber.decode(*output) for output in outputs],
    }
    return interleaved(parts, rounds), sum(len(w) for w in waveforms) / 16000


def parts_rows(times: dict, audio_seconds: float) -> tuple[list[list], float]:
    """Rows of each part's core-independent cost (ms a second of audio), and the ratio bf16 can give a server
    whose requests are only these parts: (the rest + float32 model) / (the rest + bf16 model)."""
    cost = {name: 1000 * statistics.median(values) / audio_seconds for name, values in times.items()}
    rest = sum(value for name, value in cost.items() if not name.startswith("model"))
    rows = [
        [
            name,
            f"{value:.2f}",
            f"{min(times[name]) * 1000 / audio_seconds:.2f}-{max(times[name]) * 1000 / audio_seconds:.2f}",
        ]
        for name, value in cost.items()
    ]
    return rows, (rest + cost["model, float32"]) / (rest + cost["model, bfloat16"])


def word_error_rates(backends: dict) -> tuple[dict, dict, dict, np.ndarray]:
    """(name -> {set: WER %}, name -> {set: % of words changed}, name -> (RMS, frames changed, frames, widest),
    margins) of greedy transcripts through the Transcriber; a variant's words changed are the word error rate of its
    transcripts against float32's (0: the same words); RMS: of its log-probabilities' difference from float32's over
    every frame of both sets; the frames whose best token differs from float32's, and the widest float32 margin
    among them; margins: float32's margin at every frame, its best token's log-probability less the second's (a
    near-tie is a small one)."""
    rates, changed, errors, float32 = {}, {}, {}, {}
    for name, backend in backends.items():
        rates[name], changed[name], differences, flipped, margins = {}, {}, [], [], []
        for set_name, manifest in SETS.items():
            entries = [entry for _, entry in read_manifest(manifest)]
            recordings = [AudioFile(audio_path(manifest, e["audio_filepath"])) for e in entries]
            transcriber = Transcriber(backend)
            outputs = transcriber.log_probs(recordings)
            texts = [transcriber.decode(*output)["text"] for output in outputs]
            reference, _ = float32.setdefault(set_name, (outputs, texts))
            rates[name][set_name] = 100 * wer([normalize_text(e["text"]) for e in entries], texts)
            changed[name][set_name] = 100 * wer(float32[set_name][1], texts)
            for (ours, _), (theirs, _) in zip(outputs, reference):
                differences.append((ours - theirs).ravel())
                best_two = np.sort(theirs, axis=-1)[:, -2:]
                margins.append(best_two[:, 1] - best_two[:, 0])
                flipped.append(margins[-1][ours.argmax(-1) != theirs.argmax(-1)])
        differences, flipped, margins = (np.concatenate(parts) for parts in (differences, flipped, margins))
        widest = float(flipped.max()) if len(flipped) else 0.0
        errors[name] = (float(np.sqrt(np.mean(differences**2))), len(flipped), len(margins), widest)
    return rates, changed, errors, margins


def print_speed(backends: dict, args):
    """The speed tables: inference at 1 x 10 s and 16 x 8 s, training steps, and a served request's parts."""
    header = ["variant", "audio s / s (median)", "spread (slowest-fastest round)", "vs float32"]
    for batch, seconds in ((1, 10.0), (16, 8.0)):
        waveforms = speech(batch, seconds)
        calls = {name: (lambda b=b, w=waveforms: b(w)) for name, b in backends.items()}
        times = interleaved(calls, args.rounds)
        print(f"inference, {batch} x {seconds:g} s, {args.threads} threads, {args.rounds} rounds")
        print(table(header, speed_rows(times, batch * seconds, "float32")) + "\n")
    times = training_times(args.model, args.threads, args.rounds, args.skip_compile == "false")
    print(f"training step, 16 x 8 s, {args.threads} threads, {args.rounds} rounds")
    print(table(header, speed_rows(times, 16 * 8.0, "float32")) + "\n")
    times, audio_seconds = request_parts(backends, args.rounds)
    rows, bound = parts_rows(times, audio_seconds)
    print(f"a served request's parts: the {audio_seconds:.0f} s of the embedded test files in batches of 16")
    print(table(["part", "ms a second of audio (median)", "spread"], rows))
    print(f"bf16 can speed up a server whose requests are these parts at most {bound:.2f}x (HTTP not counted)\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip_compile", choices=("true", "false"), default="false")
    parser.add_argument("--skip_speed", choices=("true", "false"), default="false", help="the WER part only")
    parser.add_argument(
        "--float32_layers", type=int, nargs="*", default=[], help="variants: bf16 with the first N layers in float32"
    )
    parser.add_argument(
        "--bf16_residual", choices=("true", "false"), default="false", help="also bf16 with a bf16 residual stream"
    )
    parser.add_argument(
        "--float32_parts",
        nargs="*",
        default=[],
        help="variants: bf16 with this module of every layer in float32 (self_attn, cgmlp, merge, ffn1, ffn2, ...)",
    )
    args = parser.parse_args()
    print(machine())
    print(f"CPU flags: {cpu_flags()}")
    print(f"command: python benchmarks/precision.py {' '.join(sys.argv[1:])}\n")

    from ebranchformer_ru.onnx_export import export

    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        export(args.model, onnx_dir, int8=True, wer_sets={}, threads=args.threads, log=lambda *_: None)
        compile_, bf16_residual = args.skip_compile == "false", args.bf16_residual == "true"
        backends = variants(
            args.model, onnx_dir, args.threads, compile_, args.float32_layers, bf16_residual, args.float32_parts
        )
        if args.skip_speed == "false":
            print_speed(backends, args)
        rates, changed, errors, margins = word_error_rates(backends)
        rows = [
            [
                name,
                *(f"{rates[name][s]:.2f} %" for s in SETS),
                *(f"{changed[name][s]:.2f} %" for s in SETS),
                f"{errors[name][0]:.4f}",
                f"{errors[name][1]:,}",
                f"{errors[name][3]:.4f}",
            ]
            for name in backends
        ]
        frames = errors["float32"][2]
        print("WER on the embedded test sets (greedy, the Transcriber's batches); the words that differ from float32's")
        print("transcripts (their WER against float32's); the RMS of the log-probabilities' difference from float32's")
        print(
            f"and the frames whose best token differs from float32's, of the {frames:,} frames of both sets, with the"
        )
        print("widest float32 margin among them (its best token's log-probability less the second's)")
        header = ["variant", *SETS, *(f"{s}: words changed" for s in SETS), "log-prob RMS", "frames changed"]
        print(table([*header, "their widest margin"], rows))
        near = ", ".join(f"{np.count_nonzero(margins < m):,} under {m:g}" for m in (0.01, 0.03, 0.1))
        print(f"float32's frames by margin: {near}")


if __name__ == "__main__":
    main()
