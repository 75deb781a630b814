"""Log-mel front end of the course (torchaudio's `MelSpectrogram` defaults, computed with plain torch).

power = |STFT(x)|^2   Hann window (periodic) of 400, hop 160, n_fft 400, centred with reflect padding
mel   = power @ HTK mel filter bank (64 bins, 0..8000 Hz, no area normalisation)
out   = log(clamp(mel, 1e-9, 1e9))

An utterance of n samples gives 1 + n // 160 frames. No dither, pre-emphasis or normalisation.
"""

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank


class EBranchformerFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns 16 kHz mono waveforms into `input_features` of shape (batch, frames, feature_size) and an
    `attention_mask` over frames.

    Accepted audio: a 1-D array (one utterance), a list of 1-D arrays, or a 2-D array of shape
    (batch, samples). Float samples are taken as they are (nominally in [-1, 1]); integer PCM (int16,
    int32) is scaled by 1 / 2^(bits-1), so a WAV read as int16 gives the same features as read as float.
    Stereo is rejected: downmix first (e.g. `audio.mean(axis=1)`), which is a choice that belongs to
    the caller. Other sampling rates are rejected; resample first (e.g. `librosa.resample`).

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

    def _to_float_waveforms(self, raw_speech) -> list[np.ndarray]:
        if isinstance(raw_speech, torch.Tensor):
            raw_speech = raw_speech.numpy(force=True)
        if isinstance(raw_speech, np.ndarray):
            if raw_speech.ndim == 1:
                raw_speech = [raw_speech]
            elif raw_speech.ndim == 2:
                raw_speech = list(raw_speech)
            else:
                raise ValueError(
                    f"audio must be 1-D (one utterance) or 2-D (batch, samples), got shape {raw_speech.shape}"
                )
        elif not isinstance(raw_speech, (list, tuple)):
            raise ValueError(f"audio must be an array or a list of arrays, got {type(raw_speech).__name__}")
        elif raw_speech and np.isscalar(raw_speech[0]):
            raw_speech = [np.asarray(raw_speech)]

        waveforms = []
        for index, speech in enumerate(raw_speech):
            speech = np.asarray(speech.numpy(force=True) if isinstance(speech, torch.Tensor) else speech)
            if speech.ndim != 1:
                hint = " (stereo? downmix first, e.g. audio.mean(axis=1))" if speech.ndim == 2 else ""
                raise ValueError(f"audio item {index} must be 1-D mono samples, got shape {speech.shape}{hint}")
            if speech.size == 0:
                raise ValueError(f"audio item {index} is empty")
            if np.issubdtype(speech.dtype, np.signedinteger):
                speech = speech.astype(np.float32) / float(2 ** (8 * speech.itemsize - 1))
            elif not np.issubdtype(speech.dtype, np.floating):
                raise ValueError(f"audio item {index} has unsupported dtype {speech.dtype}; use float or int16/int32")
            # A read-only array (e.g. from a memory map) is copied: torch cannot share it safely.
            speech = speech.astype(np.float32, copy=not speech.flags.writeable)
            if not np.isfinite(speech).all():
                bad = int(np.flatnonzero(~np.isfinite(speech))[0])
                raise ValueError(f"audio item {index} holds NaN or infinite samples (first at sample {bad})")
            waveforms.append(speech)
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
