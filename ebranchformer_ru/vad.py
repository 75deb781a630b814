"""Voice-activity segmentation of long recordings with Silero's VAD, run with ONNX Runtime and numpy (no torch).

    from ebranchformer_ru.vad import VoiceActivity
    segmenter = VoiceActivity()                 # Silero's ONNX model from the `silero-vad` package (MIT), offline
    segmenter(samples)                          # [(start sample, end sample), ...]: the segments to transcribe

Silero gives a speech probability for every 32 ms window. Speech starts where it reaches `threshold` and ends where
it stays under `threshold - 0.15` for `min_silence_s` (the hysteresis of Silero's `get_speech_timestamps`); regions
shorter than `min_speech_s` are dropped and the others padded by `speech_pad_s` of silence on each side. Regions are
then joined into segments while the pause between them is under `join_pause_s`, and a segment longer than
`max_segment_s` is cut at its longest pause (again, until every piece fits; one region longer than that with no
pause at all is cut into equal parts). Segments never touch: a pause of at least two output frames stays between
them, so the transcriber can tell them apart.

The model file is found through the package's files without importing it (`silero_vad/__init__.py` imports torch).
"""

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np

from .errors import Error

WINDOW = 512  # samples per probability at 16 kHz (Silero's window)
CONTEXT = 64  # samples of the previous window that Silero's model takes with each window
SAMPLING_RATE = 16000
MIN_GAP = 1280  # samples (two 40 ms output frames) kept between segments
PART_S, MAX_PARTS = 60, 32  # a long recording's probabilities: parts of at least 60 s, at most 32 side by side
LEAD_S = 2.0  # seconds each part hears before its own, for its state to settle


class VADError(Error, ValueError):
    """The VAD cannot run (its package is missing) or an option is out of range; the message says what to do."""


def model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VADError(
            "voice-activity segmentation needs the silero-vad package: pip install 'ebranchformer-ru[vad]' "
            "(or pip install silero-vad)"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VADError(f"{path}: Silero's ONNX model is missing from the silero-vad package; reinstall it")
    return path


class VoiceActivity:
    """`segmenter(samples)`: the (start, end) samples of the segments of a 16 kHz recording (an array, or an
    `AudioFile`, read a stretch at a time)."""

    def __init__(
        self,
        threshold=0.5,
        min_speech_s=0.25,
        min_silence_s=0.1,
        speech_pad_s=0.1,
        join_pause_s=0.5,
        max_segment_s=25.0,
    ):
        if not 0 < threshold < 1:
            raise VADError(f"--vad_threshold must be between 0 and 1, got {threshold}")
        if not 1 <= max_segment_s < math.inf:
            raise VADError(f"--vad_max_segment_s must be at least 1 second, got {max_segment_s}")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # one window at a time: threads cost more
        self.session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
        self.threshold, self.min_speech = threshold, int(min_speech_s * SAMPLING_RATE)
        self.min_silence, self.pad = int(min_silence_s * SAMPLING_RATE), int(speech_pad_s * SAMPLING_RATE)
        self.join_pause, self.max_segment = int(join_pause_s * SAMPLING_RATE), int(max_segment_s * SAMPLING_RATE)

    def probabilities(self, samples, block_s: float = 30.0) -> np.ndarray:
        """The speech probability of every window of `samples`, read `block_s` at a time. A long recording is run
        as parts of at least `PART_S` side by side in one batch (Silero's model is recurrent, so one recording is
        otherwise one call a window: 37,500 calls for 20 minutes). Each part after the first starts `LEAD_S` early
        and drops those windows' probabilities: a fresh state takes a second or so to hear speech, and without the
        lead every part boundary inside speech became a pause (and the speech after it was lost)."""
        windows = -(-len(samples) // WINDOW)
        parts = max(1, min(MAX_PARTS, windows * WINDOW // (PART_S * SAMPLING_RATE)))
        per_part = -(-windows // parts)  # windows of each part (the last may have fewer)
        lead = int(LEAD_S * SAMPLING_RATE) // WINDOW if parts > 1 else 0
        state = np.zeros((2, parts, 128), np.float32)
        context = np.zeros((parts, CONTEXT), np.float32)
        rate = np.array(SAMPLING_RATE, np.int64)
        out, block = np.zeros((parts, per_part), np.float32), max(1, int(block_s * SAMPLING_RATE) // WINDOW)
        for first in range(-lead, per_part, block):
            count = min(block, per_part - first)
            stretch = np.zeros((parts, count * WINDOW), np.float32)
            for part in range(parts):
                begin = (part * per_part + first) * WINDOW
                end = max(0, min(begin + count * WINDOW, len(samples)))  # a lead block may end before 0
                piece = np.asarray(samples[max(0, begin) : end], np.float32)
                at = max(0, -begin)  # the first part's lead lies before the recording: silence
                stretch[part, at : at + len(piece)] = piece
            for index, window in enumerate(np.split(stretch, count, axis=1)):
                if first + index == 0:  # the first part starts as a recording does, not after its silent lead
                    state[:, 0], context[0] = 0, 0
                x = np.concatenate([context, window], axis=1)
                probability, state = self.session.run(None, {"input": x, "state": state, "sr": rate})
                context = x[:, -CONTEXT:]
                if first + index >= 0:
                    out[:, first + index] = probability[:, 0]
        return out.reshape(-1)[:windows]

    def regions(self, probabilities: np.ndarray, length: int) -> list[tuple[int, int]]:
        """Speech regions (samples) by hysteresis, short ones dropped, padded, clipped to the recording."""
        regions, start, silent_since = [], None, None
        low = max(self.threshold - 0.15, 0.01)
        for index, p in enumerate(probabilities):
            at = index * WINDOW
            if start is None:
                if p >= self.threshold:
                    start, silent_since = at, None
            elif p >= self.threshold:
                silent_since = None
            elif p < low:
                silent_since = at if silent_since is None else silent_since
                if at + WINDOW - silent_since >= self.min_silence:
                    regions.append((start, silent_since))
                    start, silent_since = None, None
        if start is not None:
            regions.append((start, length))
        regions = [(s, e) for s, e in regions if e - s >= self.min_speech]
        return [(max(0, s - self.pad), min(length, e + self.pad)) for s, e in regions]

    def segments(self, regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Regions joined across short pauses, split at the longest pause until each fits, kept apart."""
        groups = []
        for region in regions:
            if groups and region[0] - groups[-1][-1][1] < self.join_pause:
                groups[-1].append(region)
            else:
                groups.append([region])
        out = [segment for group in groups for segment in self._fit(group)]
        return [(s, e) for s, e in _apart(out) if e > s]

    def _fit(self, group) -> list[tuple[int, int]]:
        start, end = group[0][0], group[-1][1]
        if end - start <= self.max_segment:
            return [(start, end)]
        if len(group) == 1:  # no pause to cut at: equal parts
            parts = math.ceil((end - start) / self.max_segment)
            bounds = np.linspace(start, end, parts + 1).astype(int)
            return list(itertools.pairwise(bounds.tolist()))
        gaps = [group[i + 1][0] - group[i][1] for i in range(len(group) - 1)]
        cut = int(np.argmax(gaps)) + 1
        return self._fit(group[:cut]) + self._fit(group[cut:])

    def __call__(self, samples) -> list[tuple[int, int]]:
        return self.segments(self.regions(self.probabilities(samples), len(samples)))


def _apart(segments) -> list[tuple[int, int]]:
    """Segments whose padding met are pulled apart by MIN_GAP (their ends give way), except equal parts of one
    region, which may touch."""
    out = []
    for start, end in segments:
        if out and start - out[-1][1] < MIN_GAP and (start < out[-1][1] or start > out[-1][1]):
            middle = (out[-1][1] + start) // 2
            out[-1] = (out[-1][0], max(out[-1][0], middle - MIN_GAP // 2))
            start = middle + MIN_GAP // 2
        out.append((int(start), int(end)))
    return out
