"""Log-mel front end of the course (torchaudio's `MelSpectrogram` defaults, computed with plain torch).

power = |STFT(x)|^2   Hann window (periodic) of 400, hop 160, n_fft 400, centred with reflect padding
mel   = power @ HTK mel filter bank (64 bins, 0..8000 Hz, no area normalisation)
out   = log(clamp(mel, 1e-9, 1e9))

An utterance of n samples gives 1 + n // 160 frames. No dither, pre-emphasis or normalisation.
"""

import numbers
import warnings

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank

# At most this many values per row of a 2-D array (or per list item) reads as channels, not a batch.
MAX_CHANNELS = 8
# Float audio peaking above this (18 dB over full scale) is almost surely integer PCM stored as floats.
FLOAT_PEAK_WARNING = 8.0
# Integer PCM formats: offset subtracted and scale divided by. uint8 is offset binary (8-bit WAV); int64 and
# other integer types are not PCM formats, and their full scale cannot be guessed.
PCM_FORMATS = {
    np.dtype(np.uint8): (128.0, 2.0**7),
    np.dtype(np.int16): (0.0, 2.0**15),
    np.dtype(np.int32): (0.0, 2.0**31),
}


class EBranchformerFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns 16 kHz mono waveforms into `input_features` of shape (batch, frames, feature_size) and an
    `attention_mask` over frames.

    Accepted audio: a 1-D array (one utterance), a list of 1-D arrays, or a 2-D array of shape
    (batch, samples); numpy arrays, torch tensors or lists of numbers.

    Sample formats are those audio readers return. Float samples are taken as they are (nominally in
    [-1, 1]; a warning is given when they peak far above, as integer PCM stored as floats does). int16 and
    int32 PCM is scaled by 1 / 2^(bits-1) and uint8 (8-bit WAV, offset binary: 128 is silence) by
    (x - 128) / 128, so a WAV read as integers gives the same features as read as float. Other integer
    types have no known full scale and are rejected, int64 included, which is what a list of Python ints
    becomes: say which PCM format the numbers are (e.g. `np.asarray(audio, dtype=np.int16)`) or give
    floats.

    Stereo is rejected, which includes a channels-last (samples, channels) array such as `soundfile.read`
    returns: at most 8 "samples" per utterance and more utterances than that is read as one. Downmix first
    (e.g. `audio.mean(axis=1)`), a choice that belongs to the caller. A (channels, samples) array cannot be
    told from a batch and is read as a batch. Other sampling rates are rejected; resample first (e.g.
    `librosa.resample`).

    Args:
        feature_size (`int`, defaults to 64): mel bins.
        sampling_rate (`int`, defaults to 16000): the only rate accepted.
        hop_length (`int`, defaults to 160): samples between frames (10 ms).
        n_fft (`int`, defaults to 400): FFT size and Hann window length (25 ms).
        f_min, f_max (`float`, defaults to 0 and 8000): the mel filter bank's range in Hz.
        log_floor, log_ceiling (`float`, defaults to 1e-9 and 1e9): clamp of the mel power before the log.
        padding_value (`float`, defaults to 0.0): value of padded feature frames (the model zeroes them anyway).
    """

    model_input_names = ["input_features", "attention_mask"]

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
        return_attention_mask=True,
        **kwargs,
    ):
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.f_min = f_min
        self.f_max = f_max
        self.log_floor = log_floor
        self.log_ceiling = log_ceiling
        # Derived from the fields above, so kept out of the saved JSON (see to_dict).
        self._mel_filters = torch.from_numpy(
            mel_filter_bank(
                num_frequency_bins=n_fft // 2 + 1,
                num_mel_filters=feature_size,
                min_frequency=f_min,
                max_frequency=f_max,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="htk",
            )
        ).float()
        self._window = torch.hann_window(n_fft, periodic=True)

    def to_dict(self):
        output = super().to_dict()
        output.pop("_mel_filters", None)
        output.pop("_window", None)
        return output

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    # Longer than our ~60 lines: every input form Transformers' feature extractors accept (arrays, tensors, lists,
    # integer PCM), each refused with a message naming the item and its form.
    def _to_float_waveforms(self, raw_speech) -> list[np.ndarray]:
        if isinstance(raw_speech, torch.Tensor):
            raw_speech = tensor_to_numpy(raw_speech)
        shape = None
        if isinstance(raw_speech, np.ndarray):
            shape = raw_speech.shape
            if raw_speech.ndim == 1 and raw_speech.dtype == object:
                raw_speech = list(raw_speech)  # a ragged batch as pandas or datasets hold it, or boxed numbers
            elif raw_speech.ndim == 1:
                raw_speech = [raw_speech]
            elif raw_speech.ndim == 2:
                raw_speech = list(raw_speech)
            else:
                raise ValueError(
                    f"audio must be 1-D (one utterance) or 2-D (batch, samples), got shape {raw_speech.shape}"
                )
        elif not isinstance(raw_speech, (list, tuple)):
            raise ValueError(f"audio must be an array or a list of arrays, got {type(raw_speech).__name__}")
        if not raw_speech:
            raise ValueError("audio is an empty batch; give at least one utterance")
        if isinstance(raw_speech[0], (str, bytes)):
            raise ValueError(
                f"audio is a list of {type(raw_speech[0]).__name__} ({raw_speech[0]!r}, ...), not of samples; to "
                "transcribe files, read them first (e.g. ebranchformer_ru.audio.read_audio(path))"
            )
        if np.isscalar(raw_speech[0]):  # a list of numbers is one utterance
            speeches = [np.asarray(raw_speech)]
        else:
            speeches = [tensor_to_numpy(s) if isinstance(s, torch.Tensor) else np.asarray(s) for s in raw_speech]
            if speeches[0].ndim == 0:  # so is a list of 0-d arrays, as list(tensor) gives
                speeches = [np.stack(speeches)]
        longest = max(s.shape[0] if s.ndim else 0 for s in speeches)
        if len(speeches) > MAX_CHANNELS >= longest:
            # No utterance is this short (0.5 ms, a fiftieth of one analysis window): this is one
            # channels-last recording, which would otherwise cost an STFT per two samples and give garbage.
            given = f"an array of shape {shape}" if shape is not None else f"a list of {len(speeches)} items"
            raise ValueError(
                f"audio is {given}, which reads as a batch of {len(speeches)} utterances of at most {longest} "
                "samples: it looks channels-last (samples, channels), which is what soundfile.read, "
                "librosa.load(mono=False) and scipy.io.wavfile.read return. Downmix it to mono first "
                "(e.g. audio.mean(axis=1)), so the weighting is yours to choose."
            )

        waveforms, loud = [], []
        for index, speech in enumerate(speeches):
            if speech.ndim != 1:
                hint = ""
                if speech.ndim == 2:
                    axis = 1 if speech.shape[1] <= MAX_CHANNELS else 0  # the channel axis is the short one
                    hint = f" (stereo? downmix first, e.g. audio.mean(axis={axis}))"
                raise ValueError(f"audio item {index} must be 1-D mono samples, got shape {speech.shape}{hint}")
            if speech.size == 0:
                raise ValueError(f"audio item {index} is empty")
            is_float = np.issubdtype(speech.dtype, np.floating)
            speech = pcm_to_float(speech, index)
            peak = np.abs(speech).max()
            if not np.isfinite(peak):
                bad = int(np.flatnonzero(~np.isfinite(speech))[0])
                raise ValueError(f"audio item {index} holds NaN or infinite samples (first at sample {bad})")
            if is_float and peak > FLOAT_PEAK_WARNING:
                loud.append((index, float(peak)))
            waveforms.append(speech)
        if loud:
            index, peak = loud[0]
            warnings.warn(
                f"float audio item {index} peaks at {peak:g} ({len(loud)} of {len(waveforms)} items peak above "
                f"{FLOAT_PEAK_WARNING:g}): float samples are taken as they are, nominally in [-1, 1], so integer "
                "PCM values stored as floats give wrong features and transcripts. Scale them (e.g. divide "
                "16-bit values by 32768) or pass the integer array itself.",
                UserWarning,
                stacklevel=3,
            )
        return waveforms

    def extract(self, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
        """Log-mel features of each waveform, computed in one STFT over all of them."""
        half, hop = self.n_fft // 2, self.hop_length
        # Each utterance is reflect-padded on its own (as center=True would) and laid end to end in one
        # signal at hop-aligned offsets: its frames lie inside its own span, so they are exactly its frames
        # alone, and unlike padding to the longest utterance no work is spent on padding.
        spans = [center_pad(torch.from_numpy(w), half) for w in waveforms]
        starts = np.cumsum([0] + [-(-len(span) // hop) * hop for span in spans])
        signal = torch.zeros(int(starts[-1]) + self.n_fft)
        for start, span in zip(starts, spans):
            signal[start : start + len(span)] = span
        spectrum = torch.stft(signal, self.n_fft, hop, window=self._window, center=False, return_complex=True)
        power = spectrum.real.square() + spectrum.imag.square()  # (freq, frames)
        log_mel = (power.T @ self._mel_filters).clamp(self.log_floor, self.log_ceiling).log()  # (frames, mels)
        return [log_mel[start // hop : start // hop + self.num_frames(len(w))] for start, w in zip(starts, waveforms)]

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            raw_speech: the audio (see the class docstring).
            sampling_rate: rate of `raw_speech`; anything but `self.sampling_rate` raises. Pass it: without it
                the audio is assumed to be at 16 kHz.
            padding, max_length, truncation, pad_to_multiple_of: as `SequenceFeatureExtractor.pad`; lengths
                are counted in feature frames (100 per second).
            return_tensors: "pt" or "np"; lists of arrays when None.
        """
        if sampling_rate is not None and (
            isinstance(sampling_rate, (bool, np.bool_)) or not isinstance(sampling_rate, numbers.Real)
        ):
            raise ValueError(
                f"sampling_rate must be a number of samples per second, got {sampling_rate!r} "
                f"({type(sampling_rate).__name__}); e.g. sampling_rate={self.sampling_rate}"
            )
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio at {sampling_rate} Hz given to a feature extractor for {self.sampling_rate} Hz; "
                f"resample it first (e.g. librosa.resample(audio, orig_sr={sampling_rate}, "
                f"target_sr={self.sampling_rate}))"
            )
        features = self.extract(self._to_float_waveforms(raw_speech))
        batch = BatchFeature({"input_features": [f.numpy() for f in features]})
        return self.pad(
            batch,
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=return_attention_mask if return_attention_mask is not None else True,
            return_tensors=return_tensors,
        )


def center_pad(waveform: torch.Tensor, half: int) -> torch.Tensor:
    """`half` samples of reflect padding on each side, as torch.stft(center=True) adds. Reflection needs
    more samples than the pad, so clips shorter than that (< 12.5 ms) are padded with zeros instead."""
    mode = "reflect" if waveform.shape[0] > half else "constant"
    return torch.nn.functional.pad(waveform[None], (half, half), mode=mode)[0]


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array; float types numpy lacks (bfloat16, float8) become float32."""
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.numpy(force=True)


def pcm_to_float(speech: np.ndarray, index: int) -> np.ndarray:
    """float32 samples of one utterance: floats as they are, integer PCM scaled to [-1, 1]; anything else,
    whose scale would be a guess, raises."""
    if speech.dtype in PCM_FORMATS:
        offset, scale = PCM_FORMATS[speech.dtype]
        return (speech.astype(np.float32) - np.float32(offset)) / np.float32(scale)
    if np.issubdtype(speech.dtype, np.integer):
        source = " (numpy's and torch's default for Python ints, e.g. from a list)" if speech.dtype == np.int64 else ""
        raise ValueError(
            f"audio item {index} has dtype {speech.dtype}{source}, which is not a PCM format, so its full scale "
            "is unknown: give float samples in [-1, 1] or int16, int32 or uint8 PCM (e.g. "
            "np.asarray(audio, dtype=np.int16) if the values are 16-bit samples)"
        )
    if not np.issubdtype(speech.dtype, np.floating):
        raise ValueError(
            f"audio item {index} has unsupported dtype {speech.dtype}; give float samples in [-1, 1] "
            "(e.g. np.asarray(audio, dtype=np.float32)) or int16/int32/uint8 PCM"
        )
    # A read-only array (e.g. from a memory map) is copied: torch cannot share it safely.
    return speech.astype(np.float32, copy=not speech.flags.writeable)
