"""Waveform augmentation for training: speed, reverberation, additive noise, volume.

SpecAugment works on features inside the model (`EBranchformerConfig.apply_spec_augment`); what is here
changes the audio before the features, in the DataLoader workers, on the training set only:

    speed       Kaldi's and ESPnet's speed perturbation (factors 0.9, 1.0, 1.1): resampling, so tempo and
                pitch change together, as `sox speed` does. ESPnet makes three copies of the data; one
                factor drawn per utterance and epoch (as Lhotse's and NeMo's online perturbation) gives the
                same mixture without tripling an epoch.
    reverb      convolution with a room impulse response: one from `rir_dir`, or a synthetic one
                (exponentially decaying noise with RT60 drawn from a range, after a direct path whose
                direct-to-reverberant ratio is drawn in [-5, 10] dB, a talker one to a few metres away; as in
                Kaldi's and ESPnet's simulated-RIR recipes). The wet signal keeps the dry one's length and
                level, so the transcript still fits and loudness is left to `volume`.
    noise       additive noise at an SNR drawn in dB (NeMo's NoisePerturbation, ESPnet's noise_scp): a
                random stretch of a file from `noise_dir`, or synthetic coloured noise (spectral slope
                between white and brown, like room hum and fans).
    volume      a gain drawn in dB (Kaldi's volume perturbation draws a factor in [0.125, 2], i.e. -18 to
                +6 dB). The course features are log-mel without normalisation, so the level reaches the model.

Audio is never clipped: if a step leaves a peak above 1, the whole utterance is scaled down to peak 0.99
(what a recording chain with automatic gain would give), never cut.

Determinism: the random draws of an utterance come from `numpy.random.default_rng((seed, epoch, hash(id)))` (a BLAKE2 hash),
so they depend only on the seed, the epoch and the utterance, not on the number of workers, the batch
or the order of reading, and a run resumed from a checkpoint sees exactly what the uninterrupted run saw.
The epoch lives in shared memory: `AugmentationCallback` sets it when each epoch begins, and persistent
DataLoader workers see it.
"""

import hashlib
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import fftconvolve, resample_poly
from transformers import TrainerCallback

from .errors import Error

AUDIO_SUFFIXES = (".wav", ".flac", ".opus", ".ogg")
PEAK = 0.99  # the highest peak augmentation leaves (scaled, never clipped)


class AugmentationError(Error, ValueError):
    """A noise or impulse-response folder or file that augmentation cannot use; the message names it."""


@dataclass
class AugmentationArguments:
    """Training-audio augmentation (`train_ctc.py` flags and preset keys). All off by default."""

    speed_perturbation: list[float] = field(
        default_factory=list,
        metadata={"help": "Speed factors drawn uniformly per utterance and epoch, e.g. 0.9 1.0 1.1 (Kaldi/ESPnet)."},
    )
    reverb_probability: float = field(default=0.0, metadata={"help": "Share of utterances reverberated."})
    reverb_rt60: list[float] = field(
        default_factory=lambda: [0.2, 0.8], metadata={"help": "Synthetic rooms: RT60 range in seconds (min max)."}
    )
    rir_dir: str | None = field(
        default=None, metadata={"help": "Folder of 16 kHz impulse responses (wav/flac/opus); synthetic rooms if unset."}
    )
    noise_probability: float = field(default=0.0, metadata={"help": "Share of utterances with added noise."})
    noise_snr_db: list[float] = field(
        default_factory=lambda: [5.0, 30.0], metadata={"help": "Signal-to-noise ratio range in dB (min max)."}
    )
    noise_dir: str | None = field(
        default=None, metadata={"help": "Folder of 16 kHz noise recordings; synthetic coloured noise if unset."}
    )
    volume_perturbation_db: list[float] = field(
        default_factory=list, metadata={"help": "Gain range in dB (min max), e.g. -18 6 (Kaldi); none if unset."}
    )

    def __post_init__(self):
        def pair(name, low=-math.inf, optional=False):
            values = getattr(self, name)
            if optional and not values:
                return
            if (
                not isinstance(values, (list, tuple))
                or len(values) != 2
                or not all(map(math.isfinite, values))
                or not low <= values[0] <= values[1]
            ):
                raise ValueError(f"--{name} takes a range 'min max' with {low} <= min <= max, got {values!r}")

        if not isinstance(self.speed_perturbation, (list, tuple)):
            raise ValueError(
                f"--speed_perturbation takes a list of factors, e.g. 0.9 1.0 1.1 (in a preset: "
                f"[0.9, 1.0, 1.1]), got {self.speed_perturbation!r}"
            )
        if any(not (0.5 <= f <= 2.0) for f in self.speed_perturbation):
            raise ValueError(f"--speed_perturbation factors must lie in [0.5, 2], got {self.speed_perturbation}")
        for name in ("reverb_probability", "noise_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} must lie in [0, 1], got {getattr(self, name)}")
        pair("reverb_rt60", low=0.05)
        pair("noise_snr_db")
        pair("volume_perturbation_db", optional=True)
        for name in ("rir_dir", "noise_dir"):
            folder = getattr(self, name)
            if folder is not None and not os.path.isdir(folder):
                raise AugmentationError(f"--{name}: no folder {folder} (give a folder of audio files)")

    @property
    def enabled(self) -> bool:
        return bool(
            set(self.speed_perturbation) - {1.0}
            or self.reverb_probability
            or self.noise_probability
            or any(self.volume_perturbation_db)
        )

    def describe(self) -> str:
        parts = []
        if set(self.speed_perturbation) - {1.0}:
            parts.append("speed " + "/".join(f"{f:g}" for f in self.speed_perturbation))
        if self.reverb_probability:
            source = (
                f"impulse responses from {Path(self.rir_dir).name}"
                if self.rir_dir
                else ("synthetic rooms, RT60 {:g}-{:g} s".format(*self.reverb_rt60))
            )
            parts.append(f"reverberation ({source}) on {self.reverb_probability:.0%}")
        if self.noise_probability:
            source = f"noise from {Path(self.noise_dir).name}" if self.noise_dir else "synthetic coloured noise"
            parts.append(
                f"{source} at {self.noise_snr_db[0]:g}-{self.noise_snr_db[1]:g} dB SNR on {self.noise_probability:.0%}"
            )
        if any(self.volume_perturbation_db):
            parts.append("volume {:+g} to {:+g} dB".format(*self.volume_perturbation_db))
        return ", ".join(parts) if parts else "none"


def _audio_files(folder: str) -> list[str]:
    files = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise AugmentationError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def _check_rate(path: str, info, sampling_rate: int):
    if info.samplerate != sampling_rate:
        raise AugmentationError(f"{path}: sampling rate {info.samplerate} Hz, augmentation needs {sampling_rate} Hz")


def _check_finite(path: str):
    """Every sample of a noise or impulse-response file is read once at start-up (in blocks, ~1 s per hour of
    audio): a NaN drawn at some step would otherwise stop training there, with no file named, and a silent
    file would leave every utterance that draws it unaugmented, unnoticed."""
    audible = False
    for block in sf.blocks(path, blocksize=1 << 20, dtype="float32", always_2d=True):
        if not np.isfinite(block).all():
            raise AugmentationError(f"{path}: NaN or infinite samples; augmentation needs finite audio")
        audible = audible or bool(np.any(block))
    if not audible:
        raise AugmentationError(f"{path}: silent (every sample is 0); it would augment nothing: remove it")


def _mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1) if samples.ndim == 2 else samples


class AudioAugmentation:
    """The augmentation of one training run: `augment(samples, key)` for one utterance, `transform(batch)`
    for a decoded `datasets` batch (see `golos.decode_with_soundfile(..., augment=...)`)."""

    def __init__(self, args: AugmentationArguments, seed: int, sampling_rate: int = 16000):
        self.args = args
        self.seed = seed
        self.sampling_rate = sampling_rate
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by persistent workers
        self.rir_files = _audio_files(args.rir_dir) if args.rir_dir and args.reverb_probability else []
        for path in self.rir_files:
            info = sf.info(path)
            _check_rate(path, info, sampling_rate)
            if info.frames == 0:
                raise AugmentationError(f"{path}: an empty impulse response")
            _check_finite(path)
        self.noise_files, self.noise_frames = [], []
        if args.noise_dir and args.noise_probability:
            for path in _audio_files(args.noise_dir):
                info = sf.info(path)
                _check_rate(path, info, sampling_rate)
                if info.frames == 0:
                    raise AugmentationError(f"{path}: an empty noise file")
                _check_finite(path)
                self.noise_files.append(path)
                self.noise_frames.append(info.frames)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int):
        self._epoch.fill_(epoch)

    def rng(self, key: str) -> np.random.Generator:
        utterance = int.from_bytes(hashlib.blake2b(str(key).encode("utf-8"), digest_size=8).digest(), "little")
        return np.random.default_rng((self.seed, self.epoch, utterance))

    def augment(self, samples: np.ndarray, key: str) -> np.ndarray:
        """One utterance's training audio (float32 at `sampling_rate`); `key` (its id) picks the draws."""
        rng = self.rng(key)
        args = self.args
        samples = np.asarray(samples, dtype=np.float64)
        if samples.size == 0:
            return samples.astype(np.float32)
        # The same draws whatever is switched on, so that one setting never shifts another's draws.
        speed_draw, reverb_draw, noise_draw, gain_draw = rng.random(4)
        reverb_rng, noise_rng = rng.spawn(2)
        factors = args.speed_perturbation
        speed = factors[int(speed_draw * len(factors))] if factors else 1.0
        reverb, noise = reverb_draw < args.reverb_probability, noise_draw < args.noise_probability
        low, high = args.volume_perturbation_db or (0.0, 0.0)
        gain_db = low + gain_draw * (high - low)
        if speed != 1.0:
            samples = self.change_speed(samples, speed)
        if reverb:
            samples = self.reverberate(samples, reverb_rng)
        if noise:
            samples = self.add_noise(samples, noise_rng)
        samples = samples * 10 ** (gain_db / 20)
        peak = np.abs(samples).max(initial=0.0)
        if peak > PEAK:
            samples = samples * (PEAK / peak)
        return samples.astype(np.float32)

    @staticmethod
    def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
        """Speed `factor` by resampling: the result lasts 1/factor as long, pitch scaled by `factor`."""
        ratio = Fraction(factor).limit_denominator(100)
        return resample_poly(samples, ratio.denominator, ratio.numerator)

    def reverberate(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rir_files:
            path = self.rir_files[rng.integers(len(self.rir_files))]
            rir = _mono(sf.read(path, dtype="float64")[0])
            rir = rir[np.argmax(np.abs(rir)) :]  # start at the direct path: no delay of the transcript
        else:
            rt60 = rng.uniform(*self.args.reverb_rt60)
            t = np.arange(int(self.sampling_rate * rt60)) / self.sampling_rate
            rir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)  # -60 dB at t = rt60
            rir[0] = np.sqrt(np.sum(rir[1:] ** 2) * 10 ** (rng.uniform(-5.0, 10.0) / 10))  # the direct path
        wet = fftconvolve(samples, rir)[: samples.size]
        dry_rms, wet_rms = np.sqrt(np.mean(samples**2)), np.sqrt(np.mean(wet**2))
        return wet * (dry_rms / wet_rms) if wet_rms > 0 else samples

    def add_noise(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        snr_db = rng.uniform(*self.args.noise_snr_db)
        if self.noise_files:
            noise = self._noise_from_file(samples.size, rng)
        else:  # coloured noise: power spectrum ~ 1/f^slope, slope 0 (white) to 2 (brown)
            spectrum = np.fft.rfft(rng.standard_normal(samples.size))
            frequencies = np.fft.rfftfreq(samples.size, 1 / self.sampling_rate)
            spectrum /= np.maximum(frequencies, 20.0) ** (rng.uniform(0.0, 2.0) / 2)
            noise = np.fft.irfft(spectrum, n=samples.size)
        signal_power, noise_power = np.mean(samples**2), np.mean(noise**2)
        if signal_power == 0 or noise_power == 0:
            return samples
        return samples + noise * np.sqrt(signal_power / noise_power * 10 ** (-snr_db / 10))

    def _noise_from_file(self, length: int, rng: np.random.Generator) -> np.ndarray:
        index = rng.integers(len(self.noise_files))
        frames = self.noise_frames[index]
        start = int(rng.integers(max(1, frames - length + 1)))
        noise, _ = sf.read(self.noise_files[index], start=start, stop=start + length, dtype="float64")
        noise = _mono(noise)
        if noise.size == 0:
            return np.zeros(length)
        return np.resize(noise, length)  # a file shorter than the utterance is looped

    def transform(self, batch: dict) -> dict:
        """A decoded batch ({"id": [...], "audio": [{"array", ...}], ...}) with its audio augmented."""
        for key, audio in zip(batch["id"], batch["audio"]):
            audio["array"] = self.augment(audio["array"], key)
        return batch


class AugmentationCallback(TrainerCallback):
    """Tells the augmentation which epoch begins (the draws depend on it). `state.epoch` is the number of
    epochs done: whole at the start of an epoch, whole plus the fraction done when resuming mid-epoch."""

    def __init__(self, augmentation: AudioAugmentation):
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.set_epoch(int((state.epoch or 0) + 1e-6))
