"""Export a CTC model folder (E-Branchformer or QuartzNet) to ONNX, checked against PyTorch.

    ebranchformer-export-onnx outputs/mini --output_dir outputs/mini_onnx          # model.onnx, processor, check
    ebranchformer-export-onnx outputs/mini --output_dir outputs/mini_onnx --int8   # + model.int8.onnx and its WER
    ebranchformer-transcribe outputs/mini_onnx recordings/ --output out.jsonl      # ONNX Runtime, no torch

The graph takes `input_features` (batch, frames, mel bins) float32 and `attention_mask` (batch, frames)
int64, with dynamic batch and frame axes, and gives `log_probs` (batch, steps, vocab) float32 and
`output_lengths` (batch,) int64; frames past an utterance's length are padding. It is made with
`torch.onnx.export`'s TorchScript exporter (opset 17): the dynamo exporter gives an equally fast graph but
takes 16x longer and needs a change to the model (its padding test is data-dependent), and Optimum's
exporter requires transformers < 4.58.

The output folder is self-contained: the model(s), `config.json`, the processor files (`processor_config.json`,
`vocab.json`, `tokenizer_config.json`, with the code for `trust_remote_code`) and `onnx_export.json`
(files, output frame rate, the check's figures, WER). Before anything is written, ONNX Runtime's
log-probabilities are compared with PyTorch's on real audio (each utterance alone and all together as one
padded batch) and must agree within `--tolerance` (1e-4). `--int8` adds a dynamically quantised model
(int8 weights of the matrix multiplications, `onnxruntime.quantization.quantize_dynamic`) and reports
WER/CER of fp32 and int8 on the embedded test sets; fp32 stays the default in transcribe.py
(`--quantized` picks int8). The folder appears complete or not at all, and an existing one is replaced
only with `--overwrite`.
"""

import json
import time
import warnings
from pathlib import Path

import numpy as np

from ebranchformer_ru.golos import EMBEDDED_CORPUS
from modeling_ebranchformer.text import normalize_text

from .audio import AudioFile, read_audio
from .errors import Error
from .files import OutputFolderError, check_output_folder, write_folder_atomically
from .inference import InferenceError, OnnxBackend, TorchBackend, Transcriber
from .manifest import audio_path, read_manifest
from .metrics import cer, wer
from .onnx_runtime import EXPORT_FILE, OnnxCTCModel, is_onnx_folder
from .streaming import TorchSteps

CORPUS = EMBEDDED_CORPUS / "test_opus"
DEFAULT_SETS = {"crowd": CORPUS / "crowd" / "manifest.jsonl", "farfield": CORPUS / "farfield" / "manifest.jsonl"}
OPSET = 17


class ExportError(Error, RuntimeError):
    pass


def export_graph(model, path, opset=OPSET):
    """`model` as an ONNX graph at `path` (inputs and outputs in the module docstring)."""
    import torch

    class LogProbs(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_features, attention_mask):
            logits = self.model(input_features, attention_mask=attention_mask).logits
            return torch.log_softmax(logits.float(), dim=-1), self.model.get_output_lengths(attention_mask.sum(-1))

    wrapper = LogProbs(model).eval()
    bins = model.config.num_mel_bins
    # A padded example, so the traced graph keeps the padding masks (they change nothing where nothing is padded).
    features = torch.randn(2, 203, bins)
    mask = torch.ones(2, 203, dtype=torch.long)
    mask[1, 150:] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values: the masks are always applied
        torch.onnx.export(
            wrapper,
            (features, mask),
            str(path),
            input_names=["input_features", "attention_mask"],
            output_names=["log_probs", "output_lengths"],
            dynamic_axes={
                "input_features": {0: "batch", 1: "frames"},
                "attention_mask": {0: "batch", 1: "frames"},
                "log_probs": {0: "batch", 1: "steps"},
                "output_lengths": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )


STATE = ("keys", "values", "gate_inputs", "merge_inputs", "key_mask", "offset")


def export_step_graph(model, path, chunk_size, left_chunks, opset=OPSET) -> dict:
    """A streaming model's cached chunk step as an ONNX graph at `path`: `input_features` (batch, frames, mel bins)
    and the cache (`EBranchformerStreamingCache.tensors`) in, `log_probs` (batch, steps, vocab) and the next cache
    (`next_keys`, ...) out; dynamic batch and frame axes (a stream's last chunk is shorter), a bounded left context
    so that the cache's shapes are fixed. Returns what onnx_export.json says of it."""
    import torch

    from modeling_ebranchformer.modeling import EBranchformerStreamingCache

    class Step(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_features, *state):
            cache = EBranchformerStreamingCache.from_tensors(dict(zip(STATE, state)), chunk_size, left_chunks)
            logits = self.model.stream_step(input_features, cache)
            return torch.log_softmax(logits.float(), dim=-1), *cache.tensors().values()

    cache = model.new_cache(2, chunk_size, left_chunks)
    cache.key_mask[1, : chunk_size - 1] = True  # streams at different points: the mask is an input, not a constant
    state = cache.tensors()
    features = torch.randn(2, chunk_size * model.config.subsampling_stride, model.config.num_mel_bins)
    batch = {name: {0 if name in ("key_mask", "offset") else 1: "batch"} for name in STATE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the shapes the step depends on are fixed by the cache
        torch.onnx.export(
            Step(model).eval(),
            (features, *state.values()),
            str(path),
            input_names=["input_features", *STATE],
            output_names=["log_probs", *(f"next_{name}" for name in STATE)],
            dynamic_axes={
                "input_features": {0: "batch", 1: "frames"},
                "log_probs": {0: "batch", 1: "steps"},
                **batch,
                **{f"next_{name}": axes for name, axes in batch.items()},
            },
            opset_version=opset,
            dynamo=False,
        )
    shapes = {
        name: [
            [1, *t.shape[1:]] if name in ("key_mask", "offset") else [t.shape[0], 1, *t.shape[2:]],
            str(t.dtype).removeprefix("torch."),
        ]
        for name, t in state.items()
    }
    return {
        "file": path.name,
        "chunk_size": chunk_size,
        "left_chunks": left_chunks,
        "stride": model.config.subsampling_stride,
        "state": shapes,
    }


def step_parity_check(backend, folder, waveforms, tolerance) -> float:
    """Max |log-prob difference| between the exported chunk step and PyTorch's, each stepping the check audio as
    streams side by side (`streaming.transcribe_files`: the same chunks in the same batches)."""
    from .streaming import ChunkModel, Endpointing, transcribe_files

    outputs = []
    for model in (ChunkModel(backend), ChunkModel(OnnxBackend(folder))):
        model.steps = Recorded(model.steps)
        transcribe_files(model, waveforms, Endpointing())
        outputs.append(np.concatenate(model.steps.log_probs))
    worst = float(np.abs(outputs[0] - outputs[1]).max())
    if not worst <= tolerance:
        raise ExportError(
            f"ONNX Runtime's chunk step differs from PyTorch's by {worst:.3g} > {tolerance:g}; nothing written"
        )
    return worst


class Recorded:
    """A chunk-step runner that keeps every log-probability it gave, in order."""

    def __init__(self, steps):
        self.steps, self.log_probs = steps, []

    def __call__(self, chunks, states):
        log_probs, states = self.steps(chunks, states)
        self.log_probs += log_probs
        return log_probs, states

    def __getattr__(self, name):
        return getattr(self.steps, name)


def quantize_int8(source, target):
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-tensor int8 weights of the matrix multiplications; quantising the convolutions too made the model
    # 2x slower; per-channel weights or ONNX Runtime's pre-processing did not change the speed (measured).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice on the root logger, see above
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def parity_check(backend, onnx_model, waveforms, tolerance):
    """Max |log-prob difference| between the exported graph run by `onnx_model` (an `OnnxCTCModel`, as transcription
    runs it) and the PyTorch backend, on the same features, over valid frames: each waveform alone (batch 1) and
    all in one padded batch. Raises `ExportError` when either exceeds `tolerance`."""

    def compare(batch):
        inputs = backend.features(batch)
        reference = backend.run_features(inputs)
        lengths = np.array([len(r) for r in reference])
        log_probs, onnx_lengths = onnx_model.run_features(
            inputs["input_features"].numpy(), inputs["attention_mask"].numpy()
        )
        if log_probs.shape[:2] != (len(batch), lengths.max()) or not np.array_equal(onnx_lengths, lengths):
            raise ExportError(
                f"ONNX output shape {log_probs.shape}/lengths {onnx_lengths.tolist()} differ from PyTorch's "
                f"lengths {lengths.tolist()}"
            )
        return max(float(np.abs(log_probs[i, :n] - reference[i]).max()) for i, n in enumerate(lengths))

    single = max(compare([w]) for w in waveforms)
    padded = compare(waveforms)
    result = {
        "utterances": len(waveforms),
        "max_abs_diff_batch1": single,
        "max_abs_diff_padded_batch": padded,
        "tolerance": tolerance,
    }
    if not (single <= tolerance and padded <= tolerance):
        raise ExportError(
            f"ONNX Runtime's log-probabilities differ from PyTorch's by {max(single, padded):.3g} "
            f"(batch 1: {single:.3g}, padded batch: {padded:.3g}) > {tolerance:g}; nothing written"
        )
    return result


def _read_audio(path, option):
    try:
        return read_audio(path)
    except ValueError as error:  # names the file and what is wrong with it
        raise ExportError(f"{option}: {error}") from None


def word_error_rates(backend, sets, batch_size=16):
    """{set: {"wer", "cer", "utterances"}} (in %) of greedy transcripts of the backend on manifests."""
    transcriber = Transcriber(backend, batch_size)
    results = {}
    for name, manifest in sets.items():
        entries = [
            (audio_path(manifest, e["audio_filepath"]), normalize_text(e.get("text") or ""))
            for _, e in read_manifest(manifest)
        ]
        references = [text for _, text in entries]
        try:
            recordings = [AudioFile(path, backend.sampling_rate) for path, _ in entries]
            hypotheses = [record["text"] for record in transcriber.transcribe(recordings)]
        except ValueError as error:  # names the file and what is wrong with it
            raise ExportError(f"--wer_manifest {name}: {error}") from None
        results[name] = {
            "utterances": len(entries),
            "wer": round(100 * wer(references, hypotheses), 2),
            "cer": round(100 * cer(references, hypotheses), 2),
        }
    return results


def export(
    model_dir,
    out_dir,
    int8=False,
    overwrite=False,
    tolerance=1e-4,
    check_audio=None,
    wer_sets=None,
    threads=None,
    log=print,
    trust_remote_code=False,
):
    """Export, check and publish; returns the `onnx_export.json` content."""
    out_dir = Path(out_dir)
    try:
        check_output_folder(
            out_dir,
            {model_dir: f"the model folder {model_dir}"},
            overwrite,
            "a folder made by export_onnx.py",
            is_onnx_folder,
        )
    except OutputFolderError as error:
        raise ExportError(str(error)) from None
    backend = load_exportable(model_dir, trust_remote_code)
    if check_audio is None:
        check_audio = [
            audio_path(s, e["audio_filepath"]) for s in DEFAULT_SETS.values() for _, e in list(read_manifest(s))[:4]
        ]
    waveforms = [_read_audio(p, "--check_audio") for p in check_audio]
    wer_sets = DEFAULT_SETS if wer_sets is None else wer_sets
    info = {}

    def write(folder):
        info.update(write_export(backend, folder, int8, model_dir, log))
        write_info(folder, info)  # the folder is now one OnnxCTCModel opens: the check runs the graph through it
        onnx_model = OnnxCTCModel(folder, num_threads=threads)
        info["check"] = check = parity_check(backend, onnx_model, waveforms, tolerance)
        log(
            f"check on {check['utterances']} utterances: max |log-prob difference| batch 1 "
            f"{check['max_abs_diff_batch1']:.2e}, padded batch {check['max_abs_diff_padded_batch']:.2e} "
            f"(tolerance {tolerance:g})"
        )
        write_info(folder, info)
        if "streaming" in info:
            check["max_abs_diff_chunk_step"] = step_parity_check(backend, folder, waveforms, tolerance)
            log(f"check of the chunk step: max |log-prob difference| {check['max_abs_diff_chunk_step']:.2e}")
            write_info(folder, info)
        if int8 and wer_sets:
            info.update(compare_int8(folder, wer_sets, threads, log))
            write_info(folder, info)

    write_folder_atomically(out_dir, write, overwrite=overwrite)
    log(f"wrote {out_dir}")
    return info


def load_exportable(model_dir, trust_remote_code) -> TorchBackend:
    """The model folder in PyTorch; refuses a model that is not one of this package's."""
    import modeling_ebranchformer

    try:
        backend = TorchBackend.from_folder(model_dir, trust_remote_code=trust_remote_code)
    except InferenceError as error:
        raise ExportError(str(error)) from None
    if not isinstance(
        backend.model, (modeling_ebranchformer.EBranchformerForCTC, modeling_ebranchformer.QuartzNetForCTC)
    ):
        raise ExportError(f"{model_dir}: {type(backend.model).__name__} is not a model of this package")
    return backend


def write_export(backend, folder, int8, model_dir, log) -> dict:
    """The graph (and its int8 twin), the processor and the config in `folder`; returns what onnx_export.json says
    of them."""
    import torch
    import transformers

    model = backend.model
    started = time.perf_counter()
    export_graph(model, folder / "model.onnx")
    log(f"exported {type(model).__name__} to ONNX (opset {OPSET}) in {time.perf_counter() - started:.1f} s")
    backend.processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    files, streaming = {"fp32": "model.onnx"}, {}
    if getattr(model.config, "is_streaming", False):
        steps = TorchSteps(backend)
        if steps.left_chunks < 0:
            raise ExportError(
                "the chunk step exports with a bounded left context: set streaming_left_chunks in the model's config"
            )
        streaming = export_step_graph(model, folder / "model.step.onnx", steps.chunk_size, steps.left_chunks)
        log(f"exported the chunk step ({steps.chunk_size} steps a chunk, {steps.left_chunks} chunks of left context)")
    if int8:
        quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
        files["int8"] = "model.int8.onnx"
    return {
        "format": "ebranchformer-ctc-onnx",
        "model_type": model.config.model_type,
        "files": files,
        "default": "fp32",
        "inputs": {
            "input_features": ["batch", "frames", model.config.num_mel_bins],
            "attention_mask": ["batch", "frames"],
        },
        "outputs": {"log_probs": ["batch", "steps", model.config.vocab_size], "output_lengths": ["batch"]},
        "samples_per_frame": int(model.config.inputs_to_logits_ratio),
        "opset": OPSET,
        "exporter": f"torch.onnx.export (TorchScript), torch {torch.__version__}, transformers {transformers.__version__}",
        "source": Path(model_dir).resolve().name,  # a name, not a path of this machine
    } | ({"streaming": streaming} if streaming else {})


def write_info(folder, info):
    (folder / EXPORT_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def compare_int8(folder, wer_sets, threads, log) -> dict:
    """WER of the fp32 and int8 models on `wer_sets`, logged; whether int8 stays within 1 point of fp32."""
    rates = {
        variant: word_error_rates(OnnxBackend(folder, threads=threads, quantized=variant == "int8"), wer_sets)
        for variant in ("fp32", "int8")
    }
    for name in wer_sets:
        fp32, q = rates["fp32"][name], rates["int8"][name]
        log(
            f"{name}: WER fp32 {fp32['wer']:.2f} %, int8 {q['wer']:.2f} % ({q['wer'] - fp32['wer']:+.2f}); "
            f"CER fp32 {fp32['cer']:.2f} %, int8 {q['cer']:.2f} %"
        )
    worst = max(rates["int8"][n]["wer"] - rates["fp32"][n]["wer"] for n in wer_sets)
    if worst > 1.0:
        log(f"warning: int8 costs up to {worst:.2f} WER points (> 1); fp32 stays the default")
    return {"wer": rates, "int8_within_1_point_wer": worst <= 1.0}


def wer_sets_from(values) -> dict | None:
    """`--wer_manifest NAME=MANIFEST ...` as {name: manifest path} (the name defaults to the manifest's folder)."""
    if not values:
        return None
    sets = {}
    for value in values:
        name, _, path = value.rpartition("=")
        if not Path(path).is_file():
            raise ExportError(f"--wer_manifest {value}: {path} is not a file (give a manifest.jsonl, NAME=PATH)")
        sets[name or Path(path).parent.name] = Path(path)
    return sets
