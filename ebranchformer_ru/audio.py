"""Reading audio files without FFmpeg: soundfile (libsndfile) decodes WAV, FLAC and Ogg/Opus."""

import os

import numpy as np
import soundfile as sf

LOUD = 8.0  # float samples above this are integer PCM stored as floats (the feature extractor's threshold)


def read_audio(path, sampling_rate: int = 16000, name=None) -> np.ndarray:
    """Mono float32 samples of an audio file. Raises a `ValueError` naming the file when it cannot be
    decoded, is not at `sampling_rate`, is not mono, is empty or holds NaN or infinite samples (which would
    otherwise surface later as a NaN loss with no file named). `path` may be a binary file object (an upload),
    with `name` to name it in errors."""
    source = path if hasattr(path, "read") else str(path)
    path = path if name is None else name
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, sf.SoundFileError) as error:
        if isinstance(source, str) and not os.path.isfile(source):
            raise ValueError(f"{path}: audio file not found") from error
        reason = str(error).replace(f"{source!r}", str(path))  # a file object's repr says nothing
        raise ValueError(f"{path}: cannot decode audio ({reason})") from error
    if rate != sampling_rate:
        raise ValueError(f"{path}: sampling rate {rate} Hz, expected {sampling_rate} Hz")
    if samples.shape[1] != 1:
        raise ValueError(f"{path}: {samples.shape[1]} channels, expected mono")
    if samples.shape[0] == 0:
        raise ValueError(f"{path}: no samples")
    finite = np.isfinite(samples)  # 4 us a second of audio, next to 2 ms to decode it from Opus
    if not finite.all():
        raise ValueError(f"{path}: {finite.size - np.count_nonzero(finite)} non-finite samples (NaN or infinity)")
    return samples[:, 0]


class AudioFile:
    """A long recording read a stretch at a time: `len(audio)` samples, `audio[start:stop]` the mono float32
    samples of that stretch, read from the file only then, with `read_audio`'s checks. `Transcriber` takes it
    where it takes an array, so a two-hour file is never in memory whole (1.2 GB at 16 kHz float64)."""

    def __init__(self, path, sampling_rate: int = 16000):
        self.path = str(path)
        try:
            info = sf.info(self.path)
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            if not os.path.isfile(self.path):
                raise ValueError(f"{path}: audio file not found") from error
            raise ValueError(f"{path}: cannot decode audio ({error})") from error
        if info.samplerate != sampling_rate:
            raise ValueError(f"{path}: sampling rate {info.samplerate} Hz, expected {sampling_rate} Hz")
        if info.channels != 1:
            raise ValueError(f"{path}: {info.channels} channels, expected mono")
        if info.frames == 0:
            raise ValueError(f"{path}: no samples")
        self.frames, self.sampling_rate = info.frames, sampling_rate

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, stretch: slice) -> np.ndarray:
        start, stop, _ = stretch.indices(self.frames)
        try:
            samples, _ = sf.read(self.path, start=start, stop=stop, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, sf.SoundFileError) as error:
            if not os.path.isfile(self.path):
                raise ValueError(f"{self.path}: audio file not found") from error
            raise ValueError(f"{self.path}: cannot decode audio ({error})") from error
        finite = np.isfinite(samples)
        if not finite.all():
            raise ValueError(
                f"{self.path}: {finite.size - np.count_nonzero(finite)} non-finite samples (NaN or "
                f"infinity) from {start / self.sampling_rate:.1f} s"
            )
        return samples[:, 0]


def pipeline_input(path, sampling_rate: int = 16000) -> dict:
    """A file as the ASR pipeline's `{"raw", "sampling_rate"}` input, for machines without FFmpeg
    (the pipeline decodes a path with FFmpeg)."""
    return {"raw": read_audio(path, sampling_rate), "sampling_rate": sampling_rate}
