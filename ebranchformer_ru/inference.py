"""The one path from audio to text: waveforms -> features -> log-probabilities (a PyTorch or an ONNX Runtime
backend) -> a decoder (greedy, or beam search with the folder's language model) -> text and word times.

    from ebranchformer_ru.audio import read_audio
    from ebranchformer_ru.inference import Transcriber, load_backend, load_decoder

    backend = load_backend("outputs/mini")                    # or an export_onnx.py folder (no torch then)
    transcriber = Transcriber(backend, decoder=load_decoder("outputs/mini", "lm"), timestamps=True)
    transcriber.transcribe([read_audio("speech.opus")])       # [{"text": ..., "words": [{"word", "start", "end"}]}]

`transcribe.py`, `evaluate_ctc.py`, `tune_lm.py`, `export_onnx.py`'s checks and the benchmarks all go through
`Transcriber`: recordings longer than `chunk_length_s` are cut into overlapping chunks whose overlaps are
dropped before decoding (as Transformers' ASR pipeline does), and pieces are batched by length. This module
imports neither torch nor transformers: the PyTorch backend imports them when it is made.
"""

import contextlib
import itertools
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import onnx_runtime
from .audio import AudioFile
from .errors import Error


class InferenceError(Error, ValueError):
    """A model folder, decoder or option that cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------- precision

DTYPES = ("float32", "bfloat16", "auto")
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matrix instructions


def cpu_has_fast_bf16(cpuinfo="/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX or AVX-512 BF16); elsewhere bf16 is emulated
    and slower than float32."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            flags = next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in FAST_BF16_FLAGS)


def choose_dtype(dtype: str, device: str = "cpu") -> str:
    """The precision the model runs in: "float32", "bfloat16", or for "auto" bfloat16 where the hardware has a
    fast path for it (a CUDA device of compute capability 8 on; a CPU with AMX or AVX-512 BF16), float32 elsewhere."""
    if dtype not in DTYPES:
        raise InferenceError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "float32"
        check_cuda_device(device)  # before asking a device this machine does not have
        # Native bf16 matrix units: compute capability 8 (Ampere) on, or ROCm. `torch.cuda.is_bf16_supported()`
        # also counts emulation (a V100 or a T4 holds bf16 and multiplies it slowly), and asks the current device.
        native = torch.version.hip is not None or torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
        return "bfloat16" if native else "float32"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def check_cuda_device(device: str):
    """Raises `InferenceError` for a CUDA device torch cannot use: none available, or an index past the machine's
    devices (more processes per machine than GPUs)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError("--device cuda: no CUDA device is available to torch")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise InferenceError(
            f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s); start at "
            "most that many processes per machine"
        )


def resolved_dtype(model_dir, dtype: str, device: str = "cpu") -> str:
    """The precision `load_backend(model_dir, device, dtype=dtype)` computes in, without loading it: float32 for an
    ONNX export (int8 with --quantized is a setting of its own), `choose_dtype`'s choice on this machine otherwise.
    What a run records and its processes agree on: `auto` is bf16 on one machine and float32 on another."""
    path = Path(model_dir)
    if path.is_dir() and onnx_runtime.is_onnx_folder(path):
        return "float32"
    return choose_dtype(dtype, device)


def cast_matmul_weights(model, dtype, pack=True, skip=()):
    """Casts the weights of `model`'s linear and convolution layers to `dtype` once, where autocast would cast
    them to it at every call: the outputs are the same, bit for bit. The norms and the rest keep float32. The casts
    weigh most where the batches are small: with them (and a float32 cache), a round of 128 live streams' chunk
    steps took 428 ms against 304 ms. On a CPU whose oneDNN multiplies bf16, the linear layers also get their
    weights laid out once for it (`pack_linear`; `pack=False`: not, for a model to compile). The modules listed in
    `skip` (not their children) are left as they are."""
    import torch

    pack = (
        pack
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    for module in model.modules():
        if any(module is kept for kept in skip):
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            module.to(dtype)
        # nn.Linear itself, not a subclass, whose forward may do more than the product
        if pack and type(module) is torch.nn.Linear and module.weight.device.type == "cpu":
            module.forward = pack_linear(module)


def float32_modules(model) -> list:
    """The modules of `model` that compute in float32 under bf16 autocast (`Float32Linear`: the CTC head, the
    E-Branchformer's subsampling), for `cast_matmul_weights` to skip. The head by name too: a folder's own code
    (`trust_remote_code`) has classes of its own."""
    from modeling_ebranchformer.ctc import Float32Linear

    return [model.lm_head, *(m for m in model.modules() if isinstance(m, Float32Linear) and m is not model.lm_head)]


def pack_linear(linear):
    """A forward for the bf16 `linear` (CPU) whose weight is reordered once into the blocked layout of oneDNN's
    matrix kernels (AMX), as Inductor's freezing does, where `F.linear` reorders it at every call. The same values
    bit for bit, except where `F.linear` rounds the product before adding the bias (a non-contiguous input of 3 or
    more dimensions): the kernel adds the bias before it rounds, once. Each layer is 1.1-1.8x faster at 16-8,000
    rows; the main job's model 1.14x at one 10 s recording and 1.03x at 16 x 8 s (AMX Xeon, 2 cores). The input is
    cast to bf16 as autocast casts it. The reordered copy takes as much memory as the bf16 weight it is made from.
    `torch.compile` cannot trace it: compile a model that is not packed (Inductor packs weights itself with
    `freezing`)."""
    import torch

    weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
    bias = None if linear.bias is None else linear.bias.detach()

    def forward(hidden_states):
        hidden_states = hidden_states.to(torch.bfloat16)
        return torch.ops.mkldnn._linear_pointwise(hidden_states, weight, bias, "none", [], "")

    return forward


def compile_model(model):
    """A forward of `model` compiled by Inductor with `freezing`: the weights become constants, laid out once for the
    CPU's matrix kernels, and the element-wise work between the products is fused; for inference only. Shapes are
    dynamic, so one compilation serves every length; it compiles at the first call and again at the first batch of
    more than one (`TorchBackend.compile_now`)."""
    import torch
    from torch._inductor import config

    compiled = torch.compile(model, dynamic=True)

    def forward(**inputs):
        # Dynamo reads `freezing` from the global config when it traces (whether the weights become constants):
        # torch.compile's `options` reach only Inductor's later steps, where it freezes nothing. So it is set around
        # every call, as any call may compile again.
        try:
            with config.patch(freezing=True):
                return compiled(**inputs)
        except torch._dynamo.exc.BackendCompilerFailed as error:  # no C++ compiler, say
            inner = getattr(error, "inner_exception", None) or error
            reason = f"{type(inner).__name__}: {inner}".strip().splitlines()[0]
            raise InferenceError(
                f"--torch_compile: Inductor failed to compile the model ({reason}); on a CPU it needs a C++ compiler "
                "(g++): install one, or leave out --torch_compile"
            ) from None

    return forward


# ---------------------------------------------------------------------------------------------- backends


class TorchBackend:
    """A Transformers model and processor run with PyTorch: the pipeline's features and outputs.
    `backend(waveforms)` gives one (frames, vocab) float32 log-probability array per waveform, padding removed."""

    def __init__(self, model, processor, device="cpu", dtype="float32"):
        self.model, self.processor, self.device = model, processor, device
        self.compiled = None  # `compile_model(model)`, which runs the whole-recording forward when set
        self.dtype = choose_dtype(dtype, device)
        # bf16 on a CPU runs on oneDNN, which builds a kernel for every shape it is given and keeps 1,024 of them: at
        # the lengths of real recordings nearly every batch was a new shape (a bf16 server served 1.17x the audio
        # once they were few). Frames padded to a multiple of 64 (0.64 s; the model masks them) make few shapes.
        self.pad_to_multiple_of = 64 if self.dtype == "bfloat16" and device == "cpu" else None
        self.sampling_rate = processor.feature_extractor.sampling_rate
        self.samples_per_frame = int(model.config.inputs_to_logits_ratio)
        self.vocabulary = onnx_runtime.CTCVocabulary.from_tokenizer(processor.tokenizer)

    @classmethod
    def from_folder(
        cls,
        model_dir,
        device="cpu",
        threads=None,
        trust_remote_code=False,
        language_model=True,
        dtype="float32",
        torch_compile=False,
    ):
        """The folder's model and processor; `language_model=False` leaves its language model unread; `dtype`:
        `choose_dtype`'s choices; `torch_compile`: whole-recording forwards through `compile_model`, compiled here for
        a batch of one, so that a model Inductor cannot compile is refused before any work."""
        import torch

        import modeling_ebranchformer  # noqa: F401  (registers the model types)

        from .hub import ModelLoadError, load_ctc_model, load_processor

        check_cuda_device(device)
        if threads:
            torch.set_num_threads(threads)
        try:
            # loaded in float32, also from a folder saved in bf16 (which loads in bf16 by default, its position table
            # too): the precision is `dtype`'s
            model = load_ctc_model(model_dir, trust_remote_code, dtype=torch.float32).to(device).eval()
            processor = load_processor(model_dir, trust_remote_code, language_model)
        except ModelLoadError as error:
            raise InferenceError(str(error)) from None
        backend = cls(model, processor, device, dtype)
        if backend.dtype == "bfloat16":  # the backend's own model, whose matrix products run in bf16 but a few
            cast_matmul_weights(model, backend.torch_dtype, pack=not torch_compile, skip=float32_modules(model))
        if torch_compile:
            backend.compiled = compile_model(model)
            backend.compile_now(largest_batch=1)
        return backend

    def compile_now(self, largest_batch=2):
        """Compiles the `compiled` forward now, as the first call and, where batches of `largest_batch` may come, the
        first batch of more than one would (1 s of silence each), so that no caller waits for it later. Nothing
        without `torch_compile`."""
        if self.compiled is not None:
            silence = np.zeros(self.sampling_rate, np.float32)
            self([silence])
            if largest_batch > 1:
                self([silence, silence[: len(silence) // 2]])

    @property
    def torch_dtype(self):
        """The torch dtype of the model's matrix products (`dtype`)."""
        import torch

        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32

    @contextlib.contextmanager
    def running(self):
        """Where the model runs: inference mode, and in bfloat16 autocast, which computes the matrix products in
        bf16 while the features, the masks, the subsampling and the CTC head (`float32_modules`) and the log-softmax
        stay float32."""
        import torch

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, torch.bfloat16, enabled=self.dtype == "bfloat16"):
            yield

    def __call__(self, waveforms):
        return self.run_features(self.features(waveforms))

    def features(self, waveforms):
        """The processor's padded `input_features` and `attention_mask` (torch tensors) of a batch (in bf16 on a CPU
        padded to a multiple of `pad_to_multiple_of` frames). Its warning about loud float audio names an item of
        the batch; callers that read files name the file instead."""
        extractor, multiple = self.processor.feature_extractor, self.pad_to_multiple_of
        if multiple:  # never past the position table, which the longest alone would fit
            steps = getattr(self.model.config, "max_position_embeddings", None)
            longest = max(extractor.num_frames(len(waveform)) for waveform in waveforms)
            if steps and -(-longest // multiple) * multiple > steps * self.samples_per_frame // extractor.hop_length:
                multiple = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="float audio item", category=UserWarning)
            return extractor(
                waveforms, sampling_rate=self.sampling_rate, return_tensors="pt", pad_to_multiple_of=multiple
            )

    def run_features(self, inputs):
        """Log-probabilities of `features`' output, one (frames, vocab) array per utterance, padding removed
        (`running`: in bfloat16 under autocast)."""
        import torch

        inputs = inputs.to(self.device)
        with self.running():
            logits = (self.model if self.compiled is None else self.compiled)(**inputs).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            lengths = self.model.get_output_lengths(inputs["attention_mask"].sum(-1)).cpu().numpy()
        return [log_probs[i, : int(n)] for i, n in enumerate(lengths)]


class OnnxBackend:
    """A folder made by `export_onnx.py`, run with ONNX Runtime and numpy only."""

    def __init__(self, model_dir, device="cpu", threads=None, quantized=False):
        self.dtype, self.compiled = "float32", None
        try:
            self.model = onnx_runtime.OnnxCTCModel(model_dir, quantized=quantized, num_threads=threads, device=device)
        except ValueError as error:  # a missing int8 model, no CUDA provider, a damaged folder: named
            raise InferenceError(str(error)) from None
        self.sampling_rate = self.model.sampling_rate
        self.samples_per_frame = self.model.samples_per_frame
        self.vocabulary = self.model.vocabulary

    def __call__(self, waveforms):
        return self.model(waveforms)


def load_backend(
    model_dir,
    device="cpu",
    threads=None,
    quantized=False,
    trust_remote_code=False,
    dtype="float32",
    torch_compile=False,
):
    """An ONNX backend for an `export_onnx.py` folder, otherwise a PyTorch one (a model folder or Hub id), in
    `dtype` (`choose_dtype`), compiled with `torch_compile`. The folder's language model is not read here
    (`load_decoder`)."""
    path = Path(model_dir)
    if path.is_dir() and onnx_runtime.is_onnx_folder(path):
        if dtype == "bfloat16":
            raise InferenceError(
                f"--dtype bfloat16: {model_dir} is an ONNX export, which runs in float32 (or int8 with --quantized)"
            )
        if torch_compile:
            raise InferenceError(f"--torch_compile: {model_dir} is an ONNX export, which ONNX Runtime runs")
        return OnnxBackend(path, device, threads, quantized)
    if quantized:
        raise InferenceError(
            f"--quantized needs a folder made by export_onnx.py --int8; {model_dir} is not an ONNX export"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise InferenceError(
            f"{model_dir}: neither a model folder (config.json) nor an ONNX export ({onnx_runtime.EXPORT_FILE})"
        )
    return TorchBackend.from_folder(
        model_dir, device, threads, trust_remote_code, language_model=False, dtype=dtype, torch_compile=torch_compile
    )


# ---------------------------------------------------------------------------------------------- decoders


class LMDecoder:
    """Beam search with a model folder's language model (`CTCBeamSearchDecoder`) and fixed search options
    (beam_width, hotwords, hotword_weight, ...); `decoder(log_probs)` gives the best `OutputBeam`."""

    def __init__(self, decoder, **options):
        from modeling_ebranchformer.ngram import LanguageModelError

        self.decoder = decoder
        self.options = {k: v for k, v in options.items() if v is not None}
        try:  # a bad option (a hotword outside the alphabet, a weight out of range) is named now, not per file
            decoder.decode_beams(np.zeros((1, len(decoder.labels)), np.float32), **self.options)
        except LanguageModelError as error:
            raise InferenceError(str(error)) from None

    def __call__(self, log_probs):
        return self.beams(log_probs)[0]

    def beams(self, log_probs) -> list:
        """Every beam the search kept, best first."""
        return self.decoder.decode_beams(log_probs, **self.options)

    def search(self):
        """A search with these options over frames to come (`beam_search.BeamSearch`: advance, then beams)."""
        return self.decoder.search(**self.options)

    @property
    def settings(self) -> dict:
        """What decoded: the LM file and order, attrs.json's values and the search options."""
        lm = self.decoder.language_model
        return {"language_model": Path(lm.path).name, "order": lm.order, **self.decoder.attrs, **self.options}


def load_decoder(model_dir, kind="lm", alpha=None, beta=None, **options) -> LMDecoder | None:
    """The model folder's decoder (`modeling_ebranchformer.beam_search.load_decoder`: "greedy" gives None, "lm" the
    folder's language model, "auto" the language model where there is one) as an `LMDecoder` with search `options`;
    `alpha`/`beta` override attrs.json. Errors name the folder and what to do."""
    from modeling_ebranchformer.beam_search import DECODER_KINDS, DEFAULT_BEAM_WIDTH
    from modeling_ebranchformer.beam_search import load_decoder as load_folder_decoder
    from modeling_ebranchformer.ngram import LanguageModelError

    if kind not in DECODER_KINDS:
        raise InferenceError(f"decoder must be one of {', '.join(DECODER_KINDS)}, got {kind!r}")
    try:
        decoder = load_folder_decoder(model_dir, kind, alpha=alpha, beta=beta)
    except LanguageModelError as error:
        raise InferenceError(str(error)) from None
    if decoder is None:
        return None
    options.setdefault("beam_width", DEFAULT_BEAM_WIDTH)
    return LMDecoder(decoder, **options)


# ---------------------------------------------------------------------------------------------- transcription


def length_batches(lengths: list, batch_size: int, forward_cost: float) -> list[tuple[int, int]]:
    """(begin, end) of the batches that `lengths` (ascending) are cut into: consecutive runs of at most
    `batch_size` that minimise the work estimated as, per batch, `forward_cost` (a forward pass's fixed work, in
    samples) plus its padded size (its count times its longest). For batches of whatever requests arrived
    together: one forward pass over lengths of 1 and 5 s pads the short ones to 5 s, while cutting a batch too
    small pays the fixed work again. A dynamic programme over the cut points (n x batch_size steps)."""
    assert batch_size >= 1, batch_size
    best, cut = [0.0] + [math.inf] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for begin in range(max(0, end - batch_size), end):
            cost = best[begin] + forward_cost + (end - begin) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    bounds, end = [], len(lengths)
    while end:
        bounds.append((cut[end], end))
        end = cut[end]
    return bounds[::-1]


class Transcriber:
    """Waveforms -> records {"text", "words"?}, with chunking of long recordings and length-sorted batches.
    `decoder`: an `LMDecoder`; None decodes greedily."""

    def __init__(
        self,
        backend,
        batch_size=16,
        chunk_length_s=30.0,
        stride_length_s=None,
        timestamps=False,
        decoder=None,
        forward_cost_s=None,
        segmenter=None,
        confidence=True,
    ):
        self.backend, self.batch_size, self.timestamps, self.decoder = backend, batch_size, timestamps, decoder
        # segmenter: a `vad.VoiceActivity` (pieces are its segments, silence is not transcribed); confidence: a
        # confidence per word wherever there are words (`modeling_ebranchformer.confidence`).
        self.segmenter, self.confidence = segmenter, confidence
        rate, spf = backend.sampling_rate, backend.samples_per_frame
        # None: pieces are cut into batches of batch_size (callers that sort a whole collection by length get
        # batches of similar lengths that way); a number: see `length_batches`.
        self.forward_cost = None if forward_cost_s is None else forward_cost_s * rate
        if not chunk_length_s > 0 or not math.isfinite(chunk_length_s):
            raise InferenceError(f"--chunk_length_s must be a positive number of seconds, got {chunk_length_s}")
        stride_length_s = chunk_length_s / 6 if stride_length_s is None else stride_length_s
        if not 0 <= stride_length_s < chunk_length_s / 2:
            raise InferenceError(f"--stride_length_s must be in [0, chunk_length_s / 2), got {stride_length_s}")
        # Chunk boundaries fall on whole output frames, so dropping the overlaps keeps frames aligned.
        self.chunk = max(spf, int(chunk_length_s * rate) // spf * spf)
        self.stride = int(stride_length_s * rate) // spf * spf
        if self.chunk - 2 * self.stride < spf:  # the rounding to whole frames left no step between chunks
            raise InferenceError(
                f"--stride_length_s {stride_length_s} leaves no audio between the overlaps of "
                f"--chunk_length_s {chunk_length_s}; make it smaller"
            )
        self.frame_seconds = spf / rate
        if segmenter is not None and segmenter.max_segment > int(chunk_length_s * rate):  # segments are never cut
            raise InferenceError(
                f"--vad_max_segment_s {segmenter.max_segment / rate:g} is longer than --chunk_length_s "
                f"{chunk_length_s:g}: a segment must fit one forward pass"
            )

    def chunks(self, samples):
        """(start sample, end sample, frames to drop on the left, frames to keep or None for all) of each chunk;
        `samples` is an array or an `AudioFile` (only its length is used here, unless a segmenter reads it)."""
        if self.segmenter is not None:
            return [(start, end, 0, None) for start, end in self.segmenter(samples)]
        n, spf = len(samples), self.backend.samples_per_frame
        if n <= self.chunk:
            return [(0, n, 0, None)]
        step = self.chunk - 2 * self.stride
        out = []
        for start in range(0, n, step):
            left = 0 if start == 0 else self.stride
            begin = start - left
            end = min(n, start + step + self.stride)
            keep_end = n if end >= n else start + step  # up to here this chunk is responsible for the frames
            out.append((begin, end, left // spf, math.ceil(keep_end / spf) - math.ceil(start / spf)))
            if end >= n:
                break
        return out

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """The one batching: indices of `lengths` (pieces, in samples) in forward passes, longest first, so that a
        batch holds similar lengths and the memory peaks in the first one (a batch too large fails at once, not
        after an hour); runs of `batch_size`, or with `forward_cost` the cuts of `length_batches`. Ties keep their
        order, so the same inputs give the same batches every run."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        if self.forward_cost is None:
            return [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        ascending = order[::-1]
        bounds = length_batches([lengths[i] for i in ascending], self.batch_size, self.forward_cost)
        return [ascending[begin:end][::-1] for begin, end in reversed(bounds)]

    def stream(self, recordings: list) -> Iterator[list[tuple[int, tuple | Exception]]]:
        """Log-probabilities of `recordings` (arrays, or `AudioFile`s read a stretch at a time), batched once
        (`batches`) over the pieces of all of them: after every forward pass, the recordings it completed, as
        (index, (log-probabilities (frames, vocab), start time of every frame in seconds)), long ones' chunks
        joined with their overlaps dropped; or (index, exception) for a recording that could not be read or that
        the model could not take (a failed batch is run again a piece at a time, so one bad recording fails
        alone). A piece's samples are read when its batch runs."""
        pieces, early = [], []  # early: recordings done before any forward pass (unreadable, or no speech)
        for owner, recording in enumerate(recordings):
            try:
                chunks = self.chunks(recording)
            except Exception as error:  # a recording the segmenter could not read
                early.append((owner, error))
                continue
            pieces += [(owner, chunk) for chunk in chunks]
            if not chunks:
                early.append(
                    (owner, (np.zeros((0, len(self.backend.vocabulary.id_to_token)), np.float32), np.zeros(0)))
                )
        if early:
            yield early
        owned = [[] for _ in recordings]  # each recording's pieces, in order
        for p, (owner, _) in enumerate(pieces):
            owned[owner].append(p)
        left = [len(p) for p in owned]
        outputs, failed = [None] * len(pieces), set()
        for batch in self.batches([end - start for _, (start, end, _, _) in pieces]):
            batch = [p for p in batch if pieces[p][0] not in failed]
            done = []
            for p, result in self._run_batch(batch, pieces, recordings):
                owner = pieces[p][0]
                if owner in failed:
                    continue
                if isinstance(result, Exception):
                    failed.add(owner)
                    done.append((owner, result))
                    for q in owned[owner]:  # what its other pieces gave is not kept
                        outputs[q] = None
                    continue
                outputs[p], left[owner] = result, left[owner] - 1
                if left[owner] == 0:
                    done.append((owner, self._join([(pieces[q][1], outputs[q]) for q in owned[owner]])))
                    for q in owned[owner]:  # joined: memory stays bounded by the recordings in progress
                        outputs[q] = None
            if done:
                yield sorted(done, key=lambda pair: pair[0])

    def forward(self, stretches: list) -> list[np.ndarray]:
        """One forward pass of the backend over a batch of stretches of samples (the place to time or hold it)."""
        return self.backend(stretches)

    def _run_batch(self, batch, pieces, recordings) -> list[tuple[int, np.ndarray | Exception]]:
        """(piece, log-probabilities or the exception) of one batch; a batch that fails runs a piece at a time."""
        results, stretches = [], []
        for p in batch:
            owner, (start, end, _, _) = pieces[p]
            try:
                stretches.append((p, recordings[owner][start:end]))
            except Exception as error:  # an unreadable file: its recording fails, the batch goes on
                results.append((p, error))
        if not stretches:
            return results
        try:
            return results + list(zip([p for p, _ in stretches], self.forward([s for _, s in stretches])))
        except Exception as error:
            if len(stretches) == 1:
                return results + [(stretches[0][0], error)]
        return results + [pair for p, _ in stretches for pair in self._run_batch([p], pieces, recordings)]

    def _join(self, chunks) -> tuple[np.ndarray, np.ndarray]:
        """One recording's frames and their start times from its chunks' log-probabilities, overlaps dropped."""
        frames, times = [], []
        for (start, _, drop, keep), log_probs in chunks:
            kept = log_probs[drop:] if keep is None else log_probs[drop : drop + keep]
            frames.append(kept)
            times.append(start / self.backend.sampling_rate + (drop + np.arange(len(kept))) * self.frame_seconds)
        return np.concatenate(frames), np.concatenate(times)

    def log_probs(self, recordings: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """`stream`'s results in the recordings' order; raises the first failure."""
        results = [None] * len(recordings)
        for done in self.stream(recordings):
            for index, result in done:
                if isinstance(result, Exception):
                    raise result
                results[index] = result
        return results

    def decode(self, log_probs: np.ndarray, times: np.ndarray, decoder=None) -> dict:
        """A record {"text", "words"?, "segments"?} from one recording's joined frames, with `decoder` (default:
        this transcriber's; greedy when None); word times in seconds. With a segmenter each segment is decoded on
        its own (a character run never joins across silence) and listed in "segments" {"start", "end", "text"}."""
        decoder = self.decoder if decoder is None else decoder
        self._check_finite(log_probs)
        if self.segmenter is None:
            return self._decode(log_probs, times, decoder)
        records, segments = [], []
        for frames in _spans(times, self.frame_seconds):
            records.append(self._decode(log_probs[frames], times[frames], decoder))
            end = round(float(times[frames][-1]) + self.frame_seconds, 3)
            segments.append({"start": round(float(times[frames][0]), 3), "end": end, "text": records[-1]["text"]})
        record = {"text": " ".join(r["text"] for r in records if r["text"])}
        if self.timestamps:
            record["words"] = [word for r in records for word in r["words"]]
        record["segments"] = segments
        return record

    @staticmethod
    def _check_finite(log_probs):
        finite = np.isfinite(log_probs).all(axis=-1)
        if not finite.all():  # broken weights (NaN) would otherwise decode to an empty text, silently
            raise InferenceError(
                f"the model gave NaN or infinite log-probabilities for {np.count_nonzero(~finite)} of "
                f"{len(finite)} frames, from frame {np.flatnonzero(~finite)[0]}: are its weights "
                "finite?"
            )

    def _decode(self, log_probs, times, decoder) -> dict:
        return decode_frames(
            log_probs, times, self.backend.vocabulary, self.frame_seconds, decoder, self.timestamps, self.confidence
        )

    def transcribe(self, recordings: list) -> list[dict]:
        """One record {"text", "words"?} per recording, in their order; raises the first failure."""
        return [self.decode(log_probs, times) for log_probs, times in self.log_probs(recordings)]

    def transcribe_each(self, recordings: list) -> Iterator[list[tuple[int, dict | Exception]]]:
        """`stream`, decoded: after every forward pass, (index, record or the exception) of the recordings it
        completed."""
        for done in self.stream(recordings):
            yield [(index, self._decoded(result)) for index, result in done]

    def _decoded(self, result):
        if isinstance(result, Exception):
            return result
        try:
            return self.decode(*result)
        except Exception as error:  # non-finite log-probabilities, a decoder that fails: this recording only
            return error


def decode_frames(log_probs, times, vocabulary, frame_seconds, decoder=None, timestamps=True, confidence=True) -> dict:
    """A record {"text", "words"?} of frames `log_probs` (frames, vocab) starting at `times` (seconds): greedy when
    `decoder` is None or "greedy", else with the `LMDecoder`; words with times (and confidences) when asked."""
    if decoder is None or decoder == "greedy":
        ids = log_probs.argmax(-1)
        record = {"text": vocabulary.decode(ids)}
        if timestamps:
            record["words"] = vocabulary.words(ids, times, frame_seconds)
            if confidence:
                for word, value in zip(record["words"], greedy_confidences(log_probs, ids, vocabulary)):
                    word["confidence"] = value
        return record
    beams = decoder.beams(log_probs) if timestamps and confidence else [decoder(log_probs)]
    return beam_record(beams, log_probs, times, vocabulary, frame_seconds, timestamps, confidence)


def beam_record(beams, log_probs, times, vocabulary, frame_seconds, timestamps=True, confidence=True) -> dict:
    """The record of the LM search's `beams` (best first) over frames `log_probs` starting at `times`."""
    beam = beams[0]
    record = {"text": beam.text}
    if timestamps:
        last = len(times) - 1
        record["words"] = [
            {
                "word": word,
                "start": round(float(times[min(begin, last)]), 3),
                "end": round(float(times[min(end, len(times)) - 1]) + frame_seconds, 3),
            }
            for word, (begin, end) in beam.word_offsets
        ]
        if confidence:
            for entry, value in zip(record["words"], beam_confidences(log_probs, beams, vocabulary)):
                entry["confidence"] = value
    return record


# ---------------------------------------------------------------------------------------------- confidence
# The formulas are `modeling_ebranchformer.confidence`'s (numpy only), which the Transformers pipeline class uses
# too; these give them a `CTCVocabulary`'s blank, word delimiter and spelling. They import it when first called:
# the model package's __init__ imports torch where it is installed, and this module imports no torch.


def greedy_confidences(log_probs: np.ndarray, ids: np.ndarray, vocabulary) -> list[float]:
    """One confidence per word of `vocabulary.words(ids, ...)`, in order."""
    from modeling_ebranchformer import confidence

    delimiter = next((i for i, t in vocabulary.id_to_token.items() if t == vocabulary.word_delimiter_token), None)
    return confidence.greedy_confidences(log_probs, ids, vocabulary.blank_id, delimiter)


def beam_confidences(log_probs: np.ndarray, beams: list, vocabulary) -> list[float]:
    """One confidence per word of `beams[0]` (the best beam of the LM search), in order."""
    from modeling_ebranchformer import confidence

    return confidence.beam_confidences(log_probs, beams, vocabulary.blank_id, vocabulary.ids)


def _spans(times: np.ndarray, frame_seconds: float) -> list[slice]:
    """The runs of consecutive frames of `times` (segments of a segmented recording are apart in time)."""
    cuts = np.flatnonzero(np.diff(times) > 1.5 * frame_seconds) + 1
    bounds = [0, *cuts.tolist(), len(times)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


# ---------------------------------------------------------------------------------------------- test sets
# What evaluation and LM tuning share: a Golos-layout folder's test sets, their log-probabilities computed once,
# then decoded by every decoder being compared (greedy, the LM, each alpha and beta being tuned).


def choose_test_sets(data_dir, sets=None) -> list[str]:
    """`sets` (default: every test set of `data_dir`), checked against the folder's before any work."""
    from ebranchformer_ru.golos import find_test_sets

    if not Path(data_dir).expanduser().is_dir():
        raise Error(
            f"data folder not found: {data_dir} (--data_dir: a Golos-layout folder holding "
            "test_opus/<set>/manifest.jsonl)"
        )
    available = find_test_sets(data_dir)
    if not available:
        raise Error(f"{data_dir}: no test set (no test_opus/<set>/manifest.jsonl)")
    sets = list(dict.fromkeys(sets)) if sets else available
    if unknown := [name for name in sets if name not in available]:
        raise Error(f"unknown test set(s) {unknown}: the test sets of {data_dir} are {', '.join(available)}")
    return sets


def load_test_sets(data_dir, sets, tokenizer, max_samples=None) -> dict:
    """name -> (dataset, its `SelectionReport`) of each test set, texts normalised and checked as the tokenizer
    needs, cut to the first `max_samples` utterances; raises before any work if one is unreadable or empty."""
    from ebranchformer_ru.golos import load_golos, normalize_and_check_texts

    loaded = {}
    for name in sets:
        try:
            dataset = load_golos(data_dir, name, "test", decode="none")
            dataset, report = normalize_and_check_texts(dataset, tokenizer)
        except (OSError, ValueError) as error:  # the message names the folder, manifest or line
            raise Error(f"{type(error).__name__}: {error}") from None
        if max_samples:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        if len(dataset) == 0:
            raise Error(f"test set {name} of {data_dir} has no utterances left to evaluate ({report})")
        loaded[name] = (dataset, report)
    return loaded


def set_log_probs(transcriber, dataset) -> list:
    """Log-probabilities (frames, labels) of every utterance of a test set (`load_test_sets`: its `audio` column
    holds paths), in the dataset's order; the audio is read when its batch runs."""
    recordings = [AudioFile(audio["path"], transcriber.backend.sampling_rate) for audio in dataset["audio"]]
    return [log_probs for log_probs, _ in transcriber.log_probs(recordings)]


def decode_all(transcriber, log_probs, decoder="greedy") -> list[str]:
    """Texts of `set_log_probs`' output with `decoder` ("greedy" or an `LMDecoder`)."""
    return [transcriber.decode(values, None, decoder)["text"] for values in log_probs]
