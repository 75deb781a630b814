"""Running an exported model (`export_onnx.py`) with ONNX Runtime and numpy only: no torch, no transformers.

It imports numpy, onnxruntime when a model is opened, and nothing of this package; `ebranchformer_ru` itself
imports nothing, so `import ebranchformer_ru.onnx_runtime` loads neither torch nor transformers. `inference`
builds its ONNX backend on it (`load_backend` of an `export_onnx.py` folder), which is how `transcribe.py` and
`serve.py` run an export where torch is not installed (`tests/test_export_onnx.py` runs `transcribe.py` where
`import torch` fails). It holds:

- `LogMelFeatures`: the course log-mel front end in numpy (the same computation as
  `EBranchformerFeatureExtractor`, read from the folder's `processor_config.json`);
- `CTCVocabulary`: greedy CTC decoding with the tokenizer's rules (`vocab.json`), plus word times;
- `OnnxCTCModel`: the folder's `model.onnx` (or `model.int8.onnx`) in an `onnxruntime.InferenceSession`,
  giving log-probabilities and valid lengths for a batch of waveforms.
"""

import json
from pathlib import Path

import numpy as np

EXPORT_FILE = "onnx_export.json"  # what export_onnx.py wrote: files, frame rate, checks, WER
FORMAT = "ebranchformer-ctc-onnx"


# ---------------------------------------------------------------------------------------------- features


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def htk_mel_filter_bank(num_frequency_bins, num_mel_filters, f_min, f_max, sampling_rate) -> np.ndarray:
    """(num_frequency_bins, num_mel_filters) triangular HTK filters without area normalisation, as
    `transformers.audio_utils.mel_filter_bank(..., norm=None, mel_scale="htk")` makes them."""
    fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    mel = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), num_mel_filters + 2)
    filter_freqs = _mel_to_hz(mel)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


class LogMelFeatures:
    """power = |STFT|^2 (periodic Hann, centred, reflect padding) -> HTK mel -> log(clamp); 1 + n // hop frames
    for n samples. Matches the torch feature extractor to float32 rounding (tested)."""

    def __init__(
        self,
        feature_size=64,
        sampling_rate=16000,
        hop_length=160,
        n_fft=400,
        f_min=0.0,
        f_max=8000.0,
        log_floor=1e-9,
        log_ceiling=1e9,
        padding_value=0.0,
        **_,
    ):
        self.feature_size = int(feature_size)
        self.sampling_rate = int(sampling_rate)
        self.hop_length = int(hop_length)
        self.n_fft = int(n_fft)
        self.log_floor, self.log_ceiling = float(log_floor), float(log_ceiling)
        self.padding_value = float(padding_value)
        self.mel_filters = htk_mel_filter_bank(
            self.n_fft // 2 + 1, self.feature_size, f_min, f_max, self.sampling_rate
        ).astype(np.float32)
        n = np.arange(self.n_fft)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.n_fft)).astype(np.float32)  # periodic Hann

    @classmethod
    def from_folder(cls, folder) -> "LogMelFeatures":
        folder = Path(folder)
        for name, key in (("processor_config.json", "feature_extractor"), ("preprocessor_config.json", None)):
            path = folder / name
            if path.is_file():
                values = _read_json(path)
                values = values.get(key, values) if key else values
                if "feature_size" in values:
                    return cls(**values)
        raise ValueError(f"{folder}: no feature extractor settings (processor_config.json or preprocessor_config.json)")

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """(frames, feature_size) float32 log-mel features of one mono waveform."""
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim != 1 or waveform.size == 0:
            raise ValueError(f"audio must be non-empty 1-D mono samples, got shape {waveform.shape}")
        half = self.n_fft // 2
        mode = "reflect" if waveform.size > half else "constant"
        padded = np.pad(waveform, half, mode=mode)
        return self.frames(padded)[: self.num_frames(waveform.size)]

    def frames(self, padded: np.ndarray) -> np.ndarray:
        """The log-mel frames of every whole window (n_fft samples, every hop) of an already padded signal."""
        return self.log_mel(self.windows(padded))

    def frames_of(self, signals: list) -> list[np.ndarray]:
        """`frames` of each of several padded signals, computed together: one FFT and one mel product for the
        windows of all (a live round's streams each bring a few frames, and numpy's cost a call outweighed them)."""
        if len(signals) < 2:  # one signal's windows stay a view (a whole recording's would be copied twice)
            return [self.frames(signal) for signal in signals]
        windows = [self.windows(signal) for signal in signals]
        ends = np.cumsum([len(w) for w in windows])[:-1]
        return np.split(self.log_mel(np.concatenate(windows)), ends)

    def windows(self, padded: np.ndarray) -> np.ndarray:
        """(frames, n_fft): the whole windows of a padded signal, every hop (a view of it)."""
        if padded.size < self.n_fft:
            return np.zeros((0, self.n_fft), np.float32)
        return np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_length]

    def log_mel(self, windows: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft(windows * self.window, axis=-1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        return np.log(np.clip(power @ self.mel_filters, self.log_floor, self.log_ceiling)).astype(np.float32)

    def batch(self, waveforms) -> tuple[np.ndarray, np.ndarray]:
        """Padded (batch, frames, bins) features and the (batch, frames) int64 mask of real frames."""
        features = [self(w) for w in waveforms]
        longest = max(f.shape[0] for f in features)
        out = np.full((len(features), longest, self.feature_size), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(features), longest), dtype=np.int64)
        for i, f in enumerate(features):
            out[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = 1
        return out, mask


# ---------------------------------------------------------------------------------------------- decoding


class CTCVocabulary:
    """Greedy CTC decoding as `EBranchformerCTCTokenizer.batch_decode(ids)` does it: repeated ids collapse,
    the blank (pad token) is dropped, the word delimiter becomes a space, the text is stripped."""

    def __init__(self, vocab: dict, blank_token="<pad>", word_delimiter_token="|"):
        self.id_to_token = {int(i): t for t, i in vocab.items()}
        if blank_token not in vocab:
            raise ValueError(f"blank token {blank_token!r} is not in the vocabulary")
        self.blank_id = int(vocab[blank_token])
        self.word_delimiter_token = word_delimiter_token

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "CTCVocabulary":
        """The vocabulary of a loaded `EBranchformerCTCTokenizer` (or any Wav2Vec2-style CTC tokenizer)."""
        return cls(tokenizer.get_vocab(), tokenizer.pad_token, tokenizer.word_delimiter_token)

    @classmethod
    def from_folder(cls, folder) -> "CTCVocabulary":
        folder = Path(folder)
        vocab_path = folder / "vocab.json"
        if not vocab_path.is_file():
            raise ValueError(f"{folder}: vocab.json is missing")
        settings = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        return cls(
            _read_json(vocab_path), settings.get("pad_token") or "<pad>", settings.get("word_delimiter_token") or "|"
        )

    def token_runs(self, ids: np.ndarray) -> list[tuple[str, int, int]]:
        """(character, first frame, end frame) of every non-blank run of equal ids."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return []
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ends = np.r_[starts[1:], ids.size]
        runs = []
        for start, end in zip(starts.tolist(), ends.tolist()):
            token = int(ids[start])
            if token == self.blank_id:
                continue
            char = self.id_to_token.get(token, "")
            runs.append((" " if char == self.word_delimiter_token else char, start, end))
        return runs

    def ids(self, word: str) -> list[int]:
        """The ids of a word's characters (characters outside the vocabulary are left out)."""
        if not hasattr(self, "_token_to_id"):
            self._token_to_id = {token: i for i, token in self.id_to_token.items()}
        return [self._token_to_id[c] for c in word if c in self._token_to_id]

    def decode(self, ids: np.ndarray) -> str:
        return "".join(char for char, _, _ in self.token_runs(ids)).strip()

    def words(self, ids: np.ndarray, frame_times: np.ndarray, frame_seconds: float) -> list[dict]:
        """Words with start and end in seconds: a word starts at its first character's first frame and ends
        at the end of its last character's last frame (`frame_times[i]` is where frame i starts)."""
        words, current = [], None
        for char, start, end in self.token_runs(ids):
            if char == " ":
                current = None
                continue
            begin, finish = float(frame_times[start]), float(frame_times[end - 1]) + frame_seconds
            if current is None:
                current = {"word": char, "start": begin, "end": finish}
                words.append(current)
            else:
                current["word"] += char
                current["end"] = finish
        for word in words:
            word["start"], word["end"] = round(word["start"], 3), round(word["end"], 3)
        return words


# ---------------------------------------------------------------------------------------------- the model


def is_onnx_folder(folder) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file()


def read_export_info(folder) -> dict:
    folder = Path(folder)
    info = _read_json(folder / EXPORT_FILE)
    if info.get("format") != FORMAT:
        raise ValueError(f"{folder / EXPORT_FILE}: not an export of this project (format {info.get('format')!r})")
    return info


class OnnxCTCModel:
    """A folder made by `export_onnx.py`: `model(waveforms)` -> list of (frames, vocab) float32 log-probabilities,
    one per waveform, padded frames removed."""

    def __init__(self, folder, quantized: bool = False, num_threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort  # here, so that decoding and features work without it

        self.folder = Path(folder)
        self.info = read_export_info(self.folder)
        variant = "int8" if quantized else "fp32"
        name = self.info["files"].get(variant)
        if name is None:
            raise ValueError(f"{self.folder}: no {variant} model in this export (run export_onnx.py with --int8)")
        path = self.folder / name
        if not path.is_file():
            raise ValueError(f"{path}: model file missing")
        self.features = LogMelFeatures.from_folder(self.folder)
        self.vocabulary = CTCVocabulary.from_folder(self.folder)
        self.samples_per_frame = int(self.info["samples_per_frame"])
        self.sampling_rate = self.features.sampling_rate
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        # ONNX Runtime's threads spin after each run by default, on the cores that the features, the decoding and
        # the caller's next call need: without spinning, one 10 s recording's features and run took 1.85x less
        # time on 2 cores (a batch of 16 x 8 s 1.08x less), with the same outputs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if device == "cuda" or device.startswith("cuda:"):  # cuda:N, the GPU of one of several processes
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
            gpu = (
                ("CUDAExecutionProvider", {"device_id": int(device[5:])})
                if device != "cuda"
                else "CUDAExecutionProvider"
            )
            providers = [gpu, "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.options, self.providers = options, providers
        self.session = self.open(path)
        config = _read_json(self.folder / "config.json") if (self.folder / "config.json").is_file() else {}
        # the sinusoidal table's length, which PyTorch checks with a message and ONNX Runtime with a broadcast error
        self.max_steps = (
            int(config.get("max_position_embeddings", 0))
            if config.get("position_embedding_type", "sinusoidal") == "sinusoidal"
            else 0
        )

    def open(self, path):
        """An ONNX Runtime session of the graph at `path` with this model's threads and device."""
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), self.options, providers=self.providers)
        except Exception as error:
            raise ValueError(
                f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: {error}); the file is "
                "damaged or truncated: export the model again"
            ) from None

    def run_features(self, input_features: np.ndarray, attention_mask: np.ndarray):
        steps = -(-np.asarray(input_features).shape[1] // 4)  # the stacking subsampling's stride
        if self.max_steps and self.info.get("model_type") == "ebranchformer" and steps > self.max_steps:
            raise ValueError(
                f"Input of {steps} encoder steps is longer than max_position_embeddings "
                f"({self.max_steps}); split the audio (e.g. transcribe.py --chunk_length_s 30)"
            )
        log_probs, lengths = self.session.run(
            ["log_probs", "output_lengths"],
            {
                "input_features": np.asarray(input_features, dtype=np.float32),
                "attention_mask": np.asarray(attention_mask, dtype=np.int64),
            },
        )
        return log_probs, lengths

    def __call__(self, waveforms) -> list[np.ndarray]:
        log_probs, lengths = self.run_features(*self.features.batch(waveforms))
        return [log_probs[i, : int(n)] for i, n in enumerate(lengths)]


def _read_json(path) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read JSON ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


__all__ = ["CTCVocabulary", "LogMelFeatures", "OnnxCTCModel", "htk_mel_filter_bank", "is_onnx_folder"]
