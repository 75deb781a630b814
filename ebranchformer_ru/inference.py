"""The one path from audio to text: waveforms -> features -> log-probabilities (a PyTorch or an ONNX Runtime
backend) -> a decoder (greedy, or beam search with the folder's language model) -> text and word times.

    from ebranchformer_ru.audio import read_audio
    from ebranchformer_ru.inference import Transcriber, load_backend, load_lm_decoder

    backend = load_backend("outputs/mini")                    # or an export_onnx.py folder (no torch then)
    transcriber = Transcriber(backend, decoder=load_lm_decoder("outputs/mini"), timestamps=True)
    transcriber.transcribe([read_audio("speech.opus")])       # [{"text": ..., "words": [{"word", "start", "end"}]}]

`transcribe.py`, `evaluate_ctc.py`, `tune_lm.py`, `export_onnx.py`'s checks and the benchmarks all go through
`Transcriber`: recordings longer than `chunk_length_s` are cut into overlapping chunks whose overlaps are
dropped before decoding (as Transformers' ASR pipeline does), and pieces are batched by length. This module
imports neither torch nor transformers: the PyTorch backend imports them when it is made.
"""

import math
import warnings
from pathlib import Path

import numpy as np

from . import onnx_runtime
from .errors import Error


class InferenceError(Error, ValueError):
    """A model folder, decoder or option that cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------- backends


class TorchBackend:
    """A Transformers model and processor run with PyTorch: the pipeline's features and outputs.
    `backend(waveforms)` gives one (frames, vocab) float32 log-probability array per waveform, padding removed."""

    def __init__(self, model, processor, device="cpu"):
        self.model, self.processor, self.device = model, processor, device
        self.sampling_rate = processor.feature_extractor.sampling_rate
        self.samples_per_frame = int(model.config.inputs_to_logits_ratio)
        tokenizer = processor.tokenizer
        self.vocabulary = onnx_runtime.CTCVocabulary(
            tokenizer.get_vocab(), tokenizer.pad_token, tokenizer.word_delimiter_token
        )

    @classmethod
    def from_folder(cls, model_dir, device="cpu", threads=None, trust_remote_code=False, language_model=True):
        """The folder's model and processor; `language_model=False` leaves its language model unread."""
        import torch

        import modeling_ebranchformer  # noqa: F401  (registers the model types)

        from .hub import ModelLoadError, load_ctc_model, load_processor

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InferenceError("--device cuda: no CUDA device is available to torch")
        if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
            raise InferenceError(
                f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s); start at "
                "most that many processes per machine"
            )
        if threads:
            torch.set_num_threads(threads)
        try:
            model = load_ctc_model(model_dir, trust_remote_code).to(device).eval()
            processor = load_processor(model_dir, trust_remote_code, language_model)
        except ModelLoadError as error:
            raise InferenceError(str(error)) from None
        return cls(model, processor, device)

    def __call__(self, waveforms):
        return self.run_features(self.features(waveforms))

    def features(self, waveforms):
        """The processor's padded `input_features` and `attention_mask` (torch tensors) of a batch. Its warning
        about loud float audio names an item of the batch; callers that read files name the file instead."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="float audio item", category=UserWarning)
            return self.processor.feature_extractor(waveforms, sampling_rate=self.sampling_rate, return_tensors="pt")

    def run_features(self, inputs):
        """Log-probabilities of `features`' output, one (frames, vocab) array per utterance, padding removed."""
        import torch

        inputs = inputs.to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            lengths = self.model.get_output_lengths(inputs["attention_mask"].sum(-1)).cpu().numpy()
        return [log_probs[i, : int(n)] for i, n in enumerate(lengths)]


class OnnxBackend:
    """A folder made by `export_onnx.py`, run with ONNX Runtime and numpy only."""

    def __init__(self, model_dir, device="cpu", threads=None, quantized=False):
        try:
            self.model = onnx_runtime.OnnxCTCModel(model_dir, quantized=quantized, num_threads=threads, device=device)
        except ValueError as error:  # a missing int8 model, no CUDA provider, a damaged folder: named
            raise InferenceError(str(error)) from None
        self.sampling_rate = self.model.sampling_rate
        self.samples_per_frame = self.model.samples_per_frame
        self.vocabulary = self.model.vocabulary

    def __call__(self, waveforms):
        return self.model(waveforms)


def load_backend(model_dir, device="cpu", threads=None, quantized=False, trust_remote_code=False):
    """An ONNX backend for an `export_onnx.py` folder, otherwise a PyTorch one (a model folder or Hub id). The
    folder's language model is not read here (`load_lm_decoder`)."""
    path = Path(model_dir)
    if path.is_dir() and onnx_runtime.is_onnx_folder(path):
        return OnnxBackend(path, device, threads, quantized)
    if quantized:
        raise InferenceError(
            f"--quantized needs a folder made by export_onnx.py --int8; {model_dir} is not an ONNX export"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise InferenceError(
            f"{model_dir}: neither a model folder (config.json) nor an ONNX export ({onnx_runtime.EXPORT_FILE})"
        )
    return TorchBackend.from_folder(model_dir, device, threads, trust_remote_code, language_model=False)


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
        return self.decoder.decode_beams(log_probs, **self.options)[0]

    @property
    def settings(self) -> dict:
        """What decoded: the LM file and order, attrs.json's values and the search options."""
        lm = self.decoder.language_model
        return {"language_model": Path(lm.path).name, "order": lm.order, **self.decoder.attrs, **self.options}


def load_lm_decoder(model_dir, alpha=None, beta=None, **options) -> LMDecoder:
    """The model folder's language model (`build_lm.py`) as an `LMDecoder`; `alpha`/`beta` override attrs.json.
    Errors name the folder and what to do."""
    from modeling_ebranchformer.beam_search import DEFAULT_BEAM_WIDTH, CTCBeamSearchDecoder, has_language_model
    from modeling_ebranchformer.ngram import LanguageModelError

    if not has_language_model(model_dir):
        raise InferenceError(
            f"{model_dir} has no language_model/ folder; add one with `python build_lm.py "
            f"{model_dir}`, or decode greedily"
        )
    try:
        decoder = CTCBeamSearchDecoder.load_from_dir(model_dir, alpha=alpha, beta=beta)
    except LanguageModelError as error:
        raise InferenceError(str(error)) from None
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
    ):
        self.backend, self.batch_size, self.timestamps, self.decoder = backend, batch_size, timestamps, decoder
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

    def chunks(self, samples):
        """(start sample, end sample, frames to drop on the left, frames to keep or None for all) of each chunk;
        `samples` is an array or an `AudioFile` (only its length is used here)."""
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

    def log_probs(self, waveforms: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """(log-probabilities (frames, vocab), start time of every frame in seconds) per waveform (an array, or an
        `AudioFile` read a chunk at a time): chunks of long ones joined, overlaps dropped. Pieces are batched
        shortest first, so that a batch holds similar lengths (and, given in a fixed order, the same batches
        every run); a piece's samples are taken when its batch runs."""
        pieces = [(i, c) for i, w in enumerate(waveforms) for c in self.chunks(w)]
        lengths = [end - start for _, (start, end, _, _) in pieces]
        order = sorted(range(len(pieces)), key=lengths.__getitem__)
        if self.forward_cost is None:
            bounds = [(b, min(b + self.batch_size, len(order))) for b in range(0, len(order), self.batch_size)]
        else:
            bounds = length_batches([lengths[p] for p in order], self.batch_size, self.forward_cost)
        outputs = [None] * len(pieces)
        for begin, end in bounds:
            batch = order[begin:end]
            stretches = [waveforms[pieces[p][0]][pieces[p][1][0] : pieces[p][1][1]] for p in batch]
            for index, log_probs in zip(batch, self.backend(stretches)):
                outputs[index] = log_probs
        frames, times = [[] for _ in waveforms], [[] for _ in waveforms]
        for (owner, (start, _, drop, keep)), log_probs in zip(pieces, outputs):
            kept = log_probs[drop:] if keep is None else log_probs[drop : drop + keep]
            frames[owner].append(kept)
            times[owner].append(start / self.backend.sampling_rate + (drop + np.arange(len(kept))) * self.frame_seconds)
        return [(np.concatenate(f), np.concatenate(t)) for f, t in zip(frames, times)]

    def decode(self, log_probs: np.ndarray, times: np.ndarray, decoder=None) -> dict:
        """A record {"text", "words"?} from one recording's joined frames, with `decoder` (default: this
        transcriber's; greedy when None); word times in seconds."""
        decoder = self.decoder if decoder is None else decoder
        finite = np.isfinite(log_probs).all(axis=-1)
        if not finite.all():  # broken weights (NaN) would otherwise decode to an empty text, silently
            raise InferenceError(
                f"the model gave NaN or infinite log-probabilities for {np.count_nonzero(~finite)} of "
                f"{len(finite)} frames, from frame {np.flatnonzero(~finite)[0]}: are its weights "
                "finite?"
            )
        if decoder is None or decoder == "greedy":
            ids = log_probs.argmax(-1)
            record = {"text": self.backend.vocabulary.decode(ids)}
            if self.timestamps:
                record["words"] = self.backend.vocabulary.words(ids, times, self.frame_seconds)
            return record
        beam = decoder(log_probs)
        record = {"text": beam.text}
        if self.timestamps:
            last = len(times) - 1
            record["words"] = [
                {
                    "word": word,
                    "start": round(float(times[min(begin, last)]), 3),
                    "end": round(float(times[min(end, len(times)) - 1]) + self.frame_seconds, 3),
                }
                for word, (begin, end) in beam.word_offsets
            ]
        return record

    def transcribe(self, waveforms: list[np.ndarray]) -> list[dict]:
        """One record {"text", "words"?} per waveform."""
        return [self.decode(log_probs, times) for log_probs, times in self.log_probs(waveforms)]


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
    """Log-probabilities (frames, labels) of every utterance of a test set, in the dataset's order; audio is read
    a batch at a time, shortest first (batches of similar length)."""
    from ebranchformer_ru.golos import decode_with_soundfile

    order = sorted(range(len(dataset)), key=dataset["duration"].__getitem__)
    audio = decode_with_soundfile(dataset)
    log_probs = [None] * len(dataset)
    for start in range(0, len(order), transcriber.batch_size):
        indices = order[start : start + transcriber.batch_size]
        for index, (values, _) in zip(indices, transcriber.log_probs([audio[i]["audio"]["array"] for i in indices])):
            log_probs[index] = values
    return log_probs


def decode_all(transcriber, log_probs, decoder="greedy") -> list[str]:
    """Texts of `set_log_probs`' output with `decoder` ("greedy" or an `LMDecoder`)."""
    return [transcriber.decode(values, None, decoder)["text"] for values in log_probs]
