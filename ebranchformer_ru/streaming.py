"""Streaming recognition: audio in as it arrives, a partial transcript after every chunk, final segments at endpoints.

    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, recognize
    model = ChunkModel(TorchBackend.from_folder("outputs/streaming"), chunk_ms=640)
    stream = model.stream(Endpointing())
    stream.accept(samples)                      # 16 kHz float samples, any amount at a time
    events = recognize(model, [stream])         # [(stream, [final segment, ...])] for streams with a chunk ready
    stream.partial()                            # {"start", "text"} of the segment under way
    stream.end(); recognize(model, [stream])    # the last chunk and the last segment

A streaming model (`config.is_streaming`: causal or chunk convolutions and attention in chunks, `train_ctc.py --preset
streaming`) computes each chunk of audio once, keeping what later chunks need of it (`EBranchformerStreamingCache`):
its frames equal the chunk-masked forward of the whole stream. Features are computed as their windows fill
(`StreamingFeatures`, equal to the whole recording's), frames are decoded greedily as they come, and `Endpointing`
cuts the stream into segments on trailing blank frames: a final segment has words with times on the stream's time
line and their confidences, decoded once (with the folder's language model when one is given), and a new segment
starts. A segment ends as soon as the audio received shows its endpoint: the frames of a chunk not yet complete are
computed ahead, the stream's state left as it was, and where they finish the silence after speech the segment ends
there, without waiting for the rest of the chunk (up to a chunk); the chunk's own frames then take their place.
`recognize` steps every stream that has a chunk ready in one batch per chunk length, each with its state, as the
server batches uploads; `transcribe_files` runs whole recordings the same way.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np

from .errors import Error
from .inference import beam_record, decode_frames

log = logging.getLogger(__name__)


class StreamingError(Error):
    """A model that cannot stream, or streaming options out of range."""


class StreamingFeatures:
    """The log-mel frames (`onnx_runtime.LogMelFeatures`) of a stream as its audio arrives, each computed once when
    its window is complete; together equal to the frames of the whole recording (reflect padding at both ends)."""

    def __init__(self, features):
        self.features, self.half, self.hop = features, features.n_fft // 2, features.hop_length
        self.pending = np.zeros(0, np.float32)  # the padded signal from the first window not yet framed
        self.started, self.samples, self.frames_out = False, 0, 0

    def accept(self, samples) -> np.ndarray:
        """The frames completed by `samples` (frames, mel bins)."""
        return accept_together([(self, samples)])[0]

    def add(self, samples):
        """`samples` join the signal waiting to be framed (`accept_together` frames it)."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self.samples += samples.size
        self.pending = np.concatenate([self.pending, samples])
        if not self.started and self.pending.size > self.half:  # reflecting needs more samples than the padding
            self.pending = np.concatenate([self.pending[1 : self.half + 1][::-1], self.pending])
            self.started = True

    def finish(self) -> np.ndarray:
        """The last frames, those whose windows reach into the end's padding."""
        if not self.started:  # no audio, or a clip too short to reflect: as the whole recording's features
            return self.features(self.pending) if self.samples else self._none()
        self.pending = np.concatenate([self.pending, self.pending[-(self.half + 1) : -1][::-1]])
        return self._take(self.features.num_frames(self.samples) - self.frames_out)

    def _take(self, limit=None) -> np.ndarray:
        return self._taken(self.features.frames(self.pending)[:limit])

    def _taken(self, frames) -> np.ndarray:
        self.pending = self.pending[len(frames) * self.hop :]
        self.frames_out += len(frames)
        return frames

    def _none(self) -> np.ndarray:
        return np.zeros((0, self.features.feature_size), np.float32)


def accept_together(pairs: list) -> list[np.ndarray]:
    """`StreamingFeatures.accept` of several streams' (features, samples) at once, each stream once and all with the
    same `LogMelFeatures`: their frames computed together (`LogMelFeatures.frames_of`), each stream's own to float32
    rounding (the mel product's kernel varies with its rows: 5e-7 at most seen). A signal not started (no longer
    than the reflect padding) is shorter than a window: it gives no frames yet."""
    for audio, samples in pairs:
        audio.add(samples)
    framed = pairs[0][0].features.frames_of([audio.pending for audio, _ in pairs]) if pairs else []
    return [audio._taken(frames) for (audio, _), frames in zip(pairs, framed)]


@dataclass(frozen=True)
class Endpointing:
    """Where a segment ends, by the trailing blank frames of the greedy decoding (sherpa-onnx's endpoint rules): after
    `silence_after_speech_s` of them once the segment has speech; after `silence_without_speech_s` of them with none
    (the segment is dropped: nothing was said); and when the segment reaches `max_segment_s`."""

    silence_after_speech_s: float = 0.8
    silence_without_speech_s: float = 2.4
    max_segment_s: float = 20.0

    def __post_init__(self):
        for name in ("silence_after_speech_s", "silence_without_speech_s", "max_segment_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise StreamingError(f"--{name} must be a positive number of seconds, got {value!r}")


class StreamDecoder:
    """One stream's frames decoded as they come, cut into segments by `Endpointing` (on the greedy labels'
    trailing blanks): greedily, or with `decoder` (an `inference.LMDecoder`) by a beam search that takes each frame
    once (`BeamSearch.advance`) and gives the partials and, at the endpoint, the segment. `push(log_probs)` returns
    the segments those frames finished; `partial()` is the segment under way."""

    def __init__(self, vocabulary, frame_seconds, endpointing: Endpointing, decoder=None, confidence=True):
        self.vocabulary, self.frame_seconds, self.endpointing = vocabulary, frame_seconds, endpointing
        self.decoder, self.confidence = decoder, confidence
        self.silent = {vocabulary.blank_id, *vocabulary.ids(vocabulary.word_delimiter_token)}
        self.frames, self.start = 0, 0  # frames seen; the segment's first frame
        self.looked_ahead = 0  # frames a look ahead took (`look_ahead`), which the chunk's own frames replace
        self.wait_for_chunk = False  # no look ahead until the chunk's own frames: one found speech in it, or failed
        self._new_segment()

    def _new_segment(self):
        self.start, self.rows, self.ids, self.trailing, self.speech = self.frames, [], [], 0, False
        self.search = self.decoder.search() if self.decoder is not None else None
        self.searched = 0  # rows the search has taken

    def _search(self):
        """The LM search takes the segment's rows it has not seen."""
        if self.search is not None and self.searched < len(self.rows):
            self.search.advance(np.stack(self.rows[self.searched :]))
            self.searched = len(self.rows)

    def push(self, log_probs: np.ndarray) -> list[dict]:
        log_probs = self._replace_looked_ahead(log_probs)
        self.wait_for_chunk = False  # a new chunk: a look ahead may try again
        return self._push_rows(log_probs)

    def _push_rows(self, log_probs: np.ndarray) -> list[dict]:
        finals = []
        for row in log_probs:
            label = int(row.argmax())
            self.rows.append(row)
            self.ids.append(label)
            self.frames += 1
            self.trailing = self.trailing + 1 if label in self.silent else 0
            self.speech |= label not in self.silent
            final = self._endpoint()
            if final is not None:
                finals.append(final)
        self._search()
        return finals

    def _ends(self, trailing: int, length: int, silence_s: float) -> bool:
        """Whether a segment of `length` frames, the last `trailing` of them silent, ends by the rules."""
        seconds = self.frame_seconds
        return trailing * seconds >= silence_s or length * seconds >= self.endpointing.max_segment_s

    def frames_to_end(self, limit: int) -> int | None:
        """The fewest silent frames, at most `limit`, after which the segment under way (which has speech) would
        end: what a look ahead must see; None when none would do, or a look ahead is not wanted now."""
        if not self.speech or self.looked_ahead or self.wait_for_chunk:
            return None
        after_speech = self.endpointing.silence_after_speech_s
        for count in range(1, limit + 1):
            if self._ends(self.trailing + count, len(self.ids) + count, after_speech):
                return count
        return None

    def look_ahead(self, log_probs: np.ndarray) -> list[dict]:
        """Frames of the audio not yet in a complete chunk (`ChunkModel.look_ahead`: the chunk's first frames, computed
        before the rest of it has arrived): where they are silent until the segment ends by the rules, it ends now,
        at that frame, rather than when its chunk is complete; those frames are taken, and the chunk's own frames
        replace them when they come (`push`). A look ahead that finds speech first takes nothing."""
        count = self.frames_to_end(len(log_probs))
        if count is None:
            return []
        if any(int(label) not in self.silent for label in log_probs[:count].argmax(-1)):
            self.wait_for_chunk = True  # the speech stays in the chunk: a later look ahead would find it again
            return []
        self.looked_ahead = count
        return self._push_rows(log_probs[:count])  # the segment ends at the last of them

    def _replace_looked_ahead(self, log_probs: np.ndarray) -> np.ndarray:
        """The chunk's frames after those a look ahead took. The segment it ended stands. Where the chunk's own
        frames are not all silent there (the rest of the chunk changed them), the next segment starts at the first
        that is not, so that nothing they hold is lost; its start then lies before the endpoint of the one before."""
        ahead, self.looked_ahead = self.looked_ahead, 0
        labels = log_probs[:ahead].argmax(-1)
        spoken = [index for index, label in enumerate(labels) if int(label) not in self.silent]
        if not spoken:
            return log_probs[ahead:]
        self.frames -= ahead - spoken[0]
        self._new_segment()
        return log_probs[spoken[0] :]

    def _endpoint(self) -> dict | None:
        rules = self.endpointing
        if self.speech and self._ends(self.trailing, len(self.ids), rules.silence_after_speech_s):
            return self._cut()
        if not self.speech and self._ends(self.trailing, len(self.ids), rules.silence_without_speech_s):
            self._new_segment()
        return None

    def _cut(self) -> dict:
        """The segment as a record {"start", "end", "endpoint", "text", "words"}, decoded once; a new segment
        starts."""
        times = (self.start + np.arange(len(self.rows))) * self.frame_seconds
        log_probs = np.stack(self.rows)
        if self.search is None:
            record = decode_frames(log_probs, times, self.vocabulary, self.frame_seconds, None, True, self.confidence)
        else:
            self._search()
            beams = self.search.beams()
            record = beam_record(beams, log_probs, times, self.vocabulary, self.frame_seconds, True, self.confidence)
        speech_end, seconds = self.start + len(self.ids) - self.trailing, self.frame_seconds
        segment = {"start": round(self.start * seconds, 3), "end": round(speech_end * seconds, 3)}
        segment["endpoint"] = round(self.frames * seconds, 3)  # the stream time at which the segment ended
        self._new_segment()
        return {**segment, **record}

    def partial(self) -> dict:
        if self.search is not None:
            self._search()
            text = self.search.best_text()
        else:
            text = self.vocabulary.decode(np.array(self.ids))
        return {"start": round(self.start * self.frame_seconds, 3), "text": text}

    def finish(self) -> list[dict]:
        """The last segment, if it has speech."""
        return [self._cut()] if self.speech else []


class Stream:
    """One stream: its audio becomes feature chunks for the model, the model's log-probabilities become segments."""

    def __init__(self, features, chunk_frames: int, decoder: StreamDecoder, state):
        self.audio, self.chunk_frames, self.decoder, self.state = (
            StreamingFeatures(features),
            chunk_frames,
            decoder,
            state,
        )
        self.waiting = self.audio.accept([])
        self.ended = self.finished = False  # no more audio; its last segment given
        self.failure = None  # what stopped it
        self.state_start = 0  # the frame at which `state` began (`ChunkModel.renew`)

    def accept(self, samples):
        accept_audio([(self, samples)])

    def end(self):
        """No more audio: the features of the end, and the last (shorter) chunk, are ready."""
        self.waiting = np.concatenate([self.waiting, self.audio.finish()])
        self.ended = True

    def next_chunk(self) -> np.ndarray | None:
        """The next chunk of features for the model, if one is complete (or the stream has ended)."""
        take = self.chunk_frames if len(self.waiting) >= self.chunk_frames else len(self.waiting) * self.ended
        if take == 0:
            return None
        chunk, self.waiting = self.waiting[:take], self.waiting[take:]
        return chunk

    def fail(self, error):
        """The model could not step it: it ends here, without a last segment."""
        self.failure, self.waiting, self.ended, self.finished = error, self.waiting[:0], True, True

    @property
    def done(self) -> bool:
        return self.ended and len(self.waiting) == 0

    def partial(self) -> dict:
        return self.decoder.partial()


class ChunkModel:
    """A streaming model run chunk by chunk: with PyTorch (`TorchSteps`, an `inference.TorchBackend`) or with ONNX
    Runtime (`OnnxSteps`, an export folder's chunk step). `chunk_ms` of audio a step (a multiple of the model's 40 ms
    frame; default the config's `streaming_chunk_size`, else 640 ms; an export steps in the chunk it was exported
    with) and `left_chunks` earlier chunks of attention (default the config's)."""

    def __init__(self, backend, chunk_ms=None, left_chunks=None, decoder=None, confidence=True):
        self.backend, self.decoder, self.confidence = backend, decoder, confidence
        self.frame_seconds = backend.samples_per_frame / backend.sampling_rate
        frame_ms = round(1000 * self.frame_seconds)
        if left_chunks is not None and left_chunks < -1:
            raise StreamingError(f"--left_chunks must be -1 (all) or a number of chunks, got {left_chunks}")
        if chunk_ms is not None and (chunk_ms <= 0 or chunk_ms % frame_ms):
            raise StreamingError(
                f"--chunk_ms must be a positive multiple of the model's {frame_ms} ms frame, got {chunk_ms}"
            )
        chunk_size = None if chunk_ms is None else chunk_ms // frame_ms
        if hasattr(backend, "processor"):
            self.steps = TorchSteps(backend, chunk_size, left_chunks)
            from .onnx_runtime import LogMelFeatures

            self.features = LogMelFeatures(**backend.processor.feature_extractor.to_dict())
        else:
            self.steps = OnnxSteps(backend.model, chunk_size, left_chunks)
            self.features = backend.model.features
        self.chunk_size, self.left_chunks = self.steps.chunk_size, self.steps.left_chunks
        self.chunk_frames = self.chunk_size * self.steps.stride

    def stream(self, endpointing: Endpointing) -> Stream:
        decoder = StreamDecoder(self.backend.vocabulary, self.frame_seconds, endpointing, self.decoder, self.confidence)
        return Stream(self.features, self.chunk_frames, decoder, self.steps.new_state())

    def step(self, chunks: list[np.ndarray], states: list) -> tuple[list[np.ndarray], list]:
        """The log-probabilities of one chunk (all of one length) of each stream, and the streams' next states."""
        return self.steps(chunks, states)

    def look_ahead(self, chunks: list[np.ndarray], states: list) -> list[np.ndarray]:
        """The log-probabilities of chunks not yet complete (all of one length), the streams' states left as they
        were: the complete chunk is stepped when it has arrived."""
        return self.step(chunks, [self.steps.fork(state) for state in states])[0]

    def renew(self, stream: Stream):
        """A model with a position table (`max_position_embeddings` steps) starts a stream's state afresh at the
        first chunk after an endpoint from which the next segment could outrun the table: the stream goes on for
        as long as it has endpoints (a segment lasts at most `max_segment_s`), its next segment without the
        earlier audio as left context."""
        limit, decoder = self.steps.position_limit, stream.decoder
        if limit is None or decoder.start < decoder.frames - self.chunk_size:  # no endpoint in the last chunk
            return
        longest = math.ceil(decoder.endpointing.max_segment_s / self.frame_seconds) + 2 * self.chunk_size
        if decoder.frames - stream.state_start > limit - longest:
            stream.state, stream.state_start = self.steps.new_state(), decoder.frames


def accept_audio(pairs: list[tuple[Stream, np.ndarray]]):
    """`Stream.accept` of several streams' audio, their features computed together (`accept_together`)."""
    for (stream, _), frames in zip(pairs, accept_together([(stream.audio, samples) for stream, samples in pairs])):
        stream.waiting = np.concatenate([stream.waiting, frames])


def cannot_stream(what) -> StreamingError:
    return StreamingError(
        f"{what} cannot stream (it needs causal or chunk convolutions and attention in chunks: train it with train_ctc.py "
        "--preset streaming); decode whole recordings with transcribe.py without --streaming"
    )


class TorchSteps:
    """The model's cached chunk step (`EBranchformerForCTC.stream_step`), streams batched by stacking their caches."""

    def __init__(self, backend, chunk_size=None, left_chunks=None):
        config = backend.model.config
        if not getattr(config, "is_streaming", False):
            raise cannot_stream("the model")
        self.backend, self.stride = backend, config.subsampling_stride
        self.chunk_size = chunk_size or config.streaming_chunk_size or 16
        self.left_chunks = config.streaming_left_chunks if left_chunks is None else left_chunks
        sinusoidal = config.position_embedding_type == "sinusoidal"
        self.position_limit = config.max_position_embeddings if sinusoidal else None

    def new_state(self):
        return self.backend.model.new_cache(1, self.chunk_size, self.left_chunks, self.backend.torch_dtype)

    @staticmethod
    def fork(state):
        return state.fork()

    def __call__(self, chunks, states):
        import torch

        from modeling_ebranchformer.modeling import EBranchformerStreamingCache

        backend = self.backend
        cache = states[0] if len(states) == 1 else EBranchformerStreamingCache.stack(states)
        features = torch.from_numpy(np.stack(chunks)).to(backend.device)
        with backend.running():
            logits = backend.model.stream_step(features, cache)
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return list(log_probs), [cache] if len(states) == 1 else cache.split()


class OnnxSteps:
    """An export folder's chunk step (`model.step.onnx`, export_onnx.py of a streaming model), run with ONNX Runtime
    and numpy: the state is the graph's cache inputs, stacked along the batch axis for streams stepped together."""

    def __init__(self, onnx_model, chunk_size=None, left_chunks=None):
        info = onnx_model.info.get("streaming")
        if not info:
            raise cannot_stream(f"{onnx_model.folder} (an export without a chunk step)")
        self.chunk_size, self.left_chunks, self.stride = info["chunk_size"], info["left_chunks"], info["stride"]
        for asked, exported, name in ((chunk_size, self.chunk_size, "chunk"), (left_chunks, self.left_chunks, "left")):
            if asked is not None and asked != exported:
                raise StreamingError(
                    f"{onnx_model.folder} steps in the {name} setting it was exported with ({exported}), not {asked}: "
                    "export again with that setting in the model's config"
                )
        self.state_shapes, self.session = info["state"], onnx_model.open(onnx_model.folder / info["file"])
        self.position_limit = onnx_model.max_steps or None

    def new_state(self) -> dict:
        return {name: np.zeros(shape, np.dtype(dtype)) for name, (shape, dtype) in self.state_shapes.items()}

    @staticmethod
    def fork(state: dict) -> dict:
        return state  # a step reads the arrays and gives new ones

    @staticmethod
    def batch_axis(name) -> int:
        return 0 if name in ("key_mask", "offset") else 1  # the layered tensors are (layers, batch, ...)

    def __call__(self, chunks, states):
        inputs = {name: np.concatenate([s[name] for s in states], self.batch_axis(name)) for name in self.state_shapes}
        steps = -(-len(chunks[0]) // self.stride)
        if self.position_limit and int(inputs["offset"].max()) + steps > self.position_limit:  # ONNX would not say
            raise StreamingError(f"a stream passed the model's {self.position_limit} positions without an endpoint")
        outputs = self.session.run(None, {"input_features": np.stack(chunks).astype(np.float32), **inputs})
        log_probs, state = outputs[0], dict(zip(self.state_shapes, outputs[1:]))
        split = [
            {name: np.take(value, [b], self.batch_axis(name)) for name, value in state.items()}
            for b in range(len(chunks))
        ]
        return list(log_probs), split


def recognize(model: ChunkModel, streams: list[Stream], look_ahead=True) -> list[tuple[Stream, list[dict]]]:
    """Steps every stream with a complete chunk, one batch per chunk length, until none has one, then looks ahead
    at the chunks under way whose frames could end a segment (`look_ahead_at`; a server that sends the partials
    first calls it after); the final segments that ended on the way, per stream that had any (and for ended
    streams, their last segment). A stream whose step fails (a batch that fails is stepped again a stream at a
    time) ends with its `failure` set."""
    finals: dict[int, list[dict]] = {}
    while True:
        ready = [(stream, chunk) for stream in streams if (chunk := stream.next_chunk()) is not None]
        if not ready:
            break
        for length in sorted({len(chunk) for _, chunk in ready}, reverse=True):
            for stream, frames in _step(model, [(stream, chunk) for stream, chunk in ready if len(chunk) == length]):
                finals.setdefault(id(stream), []).extend(_decoded(stream, stream.decoder.push, frames))
                model.renew(stream)
    for stream, ended in look_ahead_at(model, streams) if look_ahead else []:
        finals.setdefault(id(stream), []).extend(ended)
    for stream in streams:
        if stream.done and not stream.finished:
            stream.finished = True
            finals.setdefault(id(stream), []).extend(stream.decoder.finish())
    return [(stream, finals[id(stream)]) for stream in streams if finals.get(id(stream))]


def look_ahead_at(model: ChunkModel, streams: list[Stream]) -> list[tuple[Stream, list[dict]]]:
    """(stream, the segments it ended early) of each stream looked at (the segments may be none, and the stream
    may have failed): each stream whose chunk under way holds enough frames to end its segment,
    were they silent (`StreamDecoder.frames_to_end`), has them computed now (`ChunkModel.look_ahead`), and its
    segment ends at once where they are silent that long (`StreamDecoder.look_ahead`). Without it a segment waits
    for the end of the chunk its endpoint falls in: up to a chunk later. A look ahead that fails is only logged:
    the chunk's own step follows, and fails the stream if it fails too."""
    stride, wanted = model.steps.stride, []
    for stream in streams:
        available = len(stream.waiting) // stride  # whole encoder steps of the chunk under way
        if not stream.ended and (needed := stream.decoder.frames_to_end(available)) is not None:
            wanted.append((stream, needed, available))
    ended = []
    for steps, group in _common_lengths(wanted):
        try:
            log_probs = model.look_ahead([s.waiting[: steps * stride] for s in group], [s.state for s in group])
        except Exception as error:
            log.warning(f"a look ahead of {len(group)} live streams failed: {type(error).__name__}: {error}")
            for stream in group:
                stream.decoder.wait_for_chunk = True
            continue
        ended += [
            (stream, _decoded(stream, stream.decoder.look_ahead, frames)) for stream, frames in zip(group, log_probs)
        ]
    return ended


def _decoded(stream: Stream, decode, frames: np.ndarray) -> list[dict]:
    """The segments that `decode` (a method of the stream's decoder) ends on `frames`; a decoder that fails (an LM
    error) fails its stream alone."""
    try:
        return decode(frames)
    except Exception as error:
        stream.fail(error)
        return []


def _common_lengths(wanted: list[tuple[Stream, int, int]]):
    """(steps, streams) batches for `wanted` (stream, steps needed, steps available): any length between the two
    serves a stream, so the streams are taken by the steps they have and each batch's length is the first one's
    available steps, which the rest need no more than: few batches (one model call each), however spread the
    streams' chunks are."""
    batches, steps = {}, 0
    for stream, needed, available in sorted(wanted, key=lambda item: item[2]):
        if needed > steps:
            steps = available
        batches.setdefault(steps, []).append(stream)
    return batches.items()


def _step(model: ChunkModel, batch: list) -> list[tuple[Stream, np.ndarray]]:
    """(stream, log-probabilities) of one chunk of each stream in `batch`, their states advanced."""
    try:
        log_probs, states = model.step([chunk for _, chunk in batch], [stream.state for stream, _ in batch])
    except Exception as error:
        if len(batch) == 1:
            batch[0][0].fail(error)
            return []
        return [result for pair in batch for result in _step(model, [pair])]
    for (stream, _), state in zip(batch, states):
        stream.state = state
    return [(stream, frames) for (stream, _), frames in zip(batch, log_probs)]


def transcribe_files(model: ChunkModel, waveforms: list[np.ndarray], endpointing: Endpointing) -> list[dict]:
    """Whole recordings streamed side by side: one record {"text", "words", "segments"} each, the segments being
    the stream's final segments."""
    streams = [model.stream(endpointing) for _ in waveforms]
    for stream, samples in zip(streams, waveforms):
        stream.accept(samples)
        stream.end()
    segments = {id(stream): finals for stream, finals in recognize(model, streams)}
    for stream in streams:
        if stream.failure is not None:
            raise stream.failure
    records = []
    for stream in streams:
        finals = segments.get(id(stream), [])
        records.append(
            {
                "text": " ".join(f["text"] for f in finals if f["text"]),
                "words": [word for f in finals for word in f.get("words", [])],
                "segments": [{"start": f["start"], "end": f["end"], "text": f["text"]} for f in finals],
            }
        )
    return records


class StreamingTranscriber:
    """`inference.Transcriber`'s `transcribe_each` for a streaming model: recordings streamed side by side,
    `batch_size` at a time; records {"text", "segments", "words" (with `timestamps`)}. A batch that fails runs
    again a recording at a time, so one bad recording fails alone."""

    def __init__(self, model: ChunkModel, endpointing: Endpointing, batch_size=16, timestamps=False):
        self.model, self.endpointing, self.batch_size, self.timestamps = model, endpointing, batch_size, timestamps
        self.backend = model.backend

    def transcribe_each(self, recordings: list):
        for first in range(0, len(recordings), self.batch_size):
            yield self._batch(list(range(first, min(first + self.batch_size, len(recordings)))), recordings)

    def _batch(self, indices, recordings) -> list[tuple[int, dict | Exception]]:
        results, read = [], []
        for index in indices:
            try:
                read.append((index, np.asarray(recordings[index][0 : len(recordings[index])], np.float32)))
            except Exception as error:  # an unreadable file fails alone
                results.append((index, error))
        try:
            records = transcribe_files(self.model, [samples for _, samples in read], self.endpointing)
        except Exception as error:
            if len(read) == 1:
                return results + [(read[0][0], error)]
            return results + [pair for index, _ in read for pair in self._batch([index], recordings)]
        for (index, _), record in zip(read, records):
            if not self.timestamps:
                record.pop("words")
            results.append((index, record))
        return sorted(results, key=lambda pair: pair[0])
