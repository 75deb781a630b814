"""An OpenAI-compatible transcription server with dynamic batching, live transcription over a WebSocket, and a
page to try it: the app that `ebranchformer-serve` runs (`ebranchformer_ru.commands.serve`, whose --help lists the
endpoints and docs/deployment.md the limits).

    ebranchformer-serve outputs/mini --port 8000
    curl -F file=@speech.wav -F model=mini http://127.0.0.1:8000/v1/audio/transcriptions

`make_app(args)` is the Starlette app of the command's parsed options (`Service` loads the model; the lifespan
runs its worker); `server(app, args)` is the uvicorn server that serves it, with the limits that hold against
hostile clients (`guarded_protocol`, `Server`). MODEL is a model folder (PyTorch, `--device`) or an
`export_onnx.py` folder (ONNX Runtime).

One worker thread owns the model and takes the requests that queued while it was busy as one batch of at most
--max_batch_size (an idle model waits up to --max_wait_ms while requests are being received); `Transcriber`
(ebranchformer_ru.inference, the path `transcribe.py` takes) chunks long audio and cuts the batch, sorted by length, into
forward passes of similar lengths, so a response is what `transcribe.py` gives for the same file. Uploads must
be 16 kHz mono (WAV, FLAC, Ogg/Opus, MP3: what soundfile decodes), as for `transcribe.py`; the page converts in
the browser.
"""

import asyncio
import collections
import functools
import hmac
import io
import json
import logging
import os
import queue
import re
import socket
import threading
import time
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from modeling_ebranchformer.text import normalize_text

from .audio import LOUD, read_audio
from .formats import cues, render
from .inference import InferenceError, LMDecoder, Transcriber, load_backend, load_decoder
from .itn import InverseNormalizer
from .streaming import ChunkModel, Endpointing, StreamingError, accept_audio, look_ahead_at, recognize
from .vad import VoiceActivity

try:  # the `serve` extra; --help and the package import work without it
    import prometheus_client
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocketDisconnect
except ImportError as error:
    MISSING = error
else:
    MISSING = None

log = logging.getLogger("ebranchformer_ru.serving")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "itn")
LANGUAGES = ("ru", "russian")
PARTIAL_EVERY = 0.5  # seconds between live partial transcripts
PAGE = Path(__file__).with_name("serving_page.html")
# A forward pass's fixed work in seconds of padded audio (`length_batches`): on 2 CPU cores outputs/mini takes
# about 16 ms + 3.6 ms per second of audio (16 x 3 s: 190 ms), so ~4 s; a GPU is not measured here, so its
# batches are cut by --max_batch_size alone, as transcribe.py's are.
FORWARD_COST_S = {"cpu": 4.0, "cuda": None}
OPEN_PATHS = ("/health", "/")  # answered without an API key (the page then asks for one)
ENDPOINTS = ("/v1/audio/transcriptions", "/v1/models", "/health", "/ready", "/metrics", "/", "/v1/audio/stream")
RESERVED_FILES = 128  # open files kept for the process itself (model files, logs, pipes) below the connections
# asyncio's loop (the server runs on it, not uvloop, which accepts all it can) accepts up to ACCEPT_BATCH connections
# a turn, and one over the connection limit holds its file for four turns (accepted, its transport made, seen,
# closed): 4 x 16 files within the reserve, so accept() never meets the open-files limit (at 64, 1,021 of 1,024 files
# were open in the slow-header test). asyncio also gives its batch to listen(), where it is the kernel's queue of
# connections not yet accepted: a queue of 16 dropped connections whenever the loop was busy for a moment, so it is
# raised to uvicorn's default once listening (the kernel caps it at net.core.somaxconn, 4,096 on Linux 5.4 and later).
ACCEPT_BATCH, LISTEN_QUEUE = 16, 2048
STREAM_FULL, GOING_AWAY = 1013, 1001  # WebSocket close codes: try again later; the server is stopping


class ApiError(Exception):
    """An HTTP error with OpenAI's JSON body {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status, message, param=None, headers=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers
        self.code = code or status

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self):
        return JSONResponse(self.body(), self.status, headers=self.headers)


def log_safe(text: str) -> str:
    """A client's string (a file name) on one log line: control characters escaped, so that it cannot forge
    a line of its own."""
    return json.dumps(str(text), ensure_ascii=False)[1:-1]


# ---------------------------------------------------------------------------------------------- batching


class Job:
    """One recording waiting for the model; `future` gets its record {"text", "words"} or an exception.
    `samples`: an array, or a function that decodes an upload into one (called by `Batcher.decode`)."""

    def __init__(self, samples, decoder, loop):
        self.samples, self.decoder, self.loop = samples, decoder, loop
        self.future = loop.create_future()
        self.queued = time.monotonic()
        self.started = self.finished = None
        self.abandoned = False  # its client left: skipped wherever the worker next looks (taken, decoded)


class WorkerFailed(Exception):
    """The model's worker thread has stopped: every request fails with 500 instead of waiting for it."""


class Batcher:
    """Dynamic batching: one worker thread owns the model and takes what requests have queued, up to
    `max_batch_size` recordings; an idle model waits at most `max_wait_ms` for the requests on their way;
    `Transcriber.log_probs` chunks long ones and cuts their pieces, sorted by length, into forward passes of
    similar lengths (`length_batches`). At most `max_queue` recordings are admitted (waiting or in the model),
    but for the final transcripts of live streams (`reserved`: the streams are capped, and a stream cannot
    retry). Uploads are decoded by `decode_threads` threads between forward passes (`decode`)."""

    def __init__(self, transcriber, max_batch_size, max_wait_ms, max_queue, decode_threads=1, on_batch=None):
        self.transcriber, self.max_batch_size, self.max_queue = transcriber, max_batch_size, max_queue
        self.decoding = ThreadPoolExecutor(decode_threads, thread_name_prefix="asr-decode")
        self.max_wait = max_wait_ms / 1000
        self.jobs = queue.Queue()
        self.admitted = 0  # changed on the event loop only
        self.arriving = 0  # requests being received (changed on the event loop, read by the worker)
        self.batch_sizes = collections.deque(maxlen=10000)  # recordings per recent batch (for tests)
        self.on_batch = on_batch or (lambda size: None)
        self.failure = None  # what stopped the worker, once it has
        self.worker = threading.Thread(target=self.run, name="asr-model", daemon=True)

    def start(self):
        self.worker.start()

    def stop(self):
        """After what is queued: the worker finishes it, then exits."""
        self.jobs.put(None)
        self.worker.join()
        self.decoding.shutdown()

    def admit(self, reserved):
        if self.failure is not None:
            raise ApiError(500, f"the model worker has stopped ({self.failure}); the server must be restarted")
        if self.admitted >= self.max_queue and not reserved:
            raise ApiError(
                503,
                f"the server is busy: {self.admitted} recordings queued (--max_queue {self.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )

    async def transcribe(self, samples, decoder=None, gone=None, arrival=None, reserved=False) -> Job:
        """The finished job of `samples`; `gone`, an awaitable that completes when the client leaves, frees the
        place at once (the job is skipped if the worker has not taken it) and raises ClientGone; `arrival`, the
        request's `Arrival`, ends when the job is queued."""
        self.admit(reserved)
        job = Job(samples, decoder, asyncio.get_running_loop())
        self.admitted += 1
        try:
            self.jobs.put(job)
            if arrival is not None:
                arrival.end()
            if self.failure is not None:  # the worker stopped while this was queued: nobody takes it
                raise WorkerFailed(self.failure)
            waiters = {job.future} | ({gone} if gone is not None else set())
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if job.future not in done:
                raise ClientGone()
            job.future.result()  # the worker's exception, if any
            return job
        finally:
            job.abandoned = True
            job.future.cancel()  # a client that left: its result, when the model is done, goes nowhere
            self.admitted -= 1

    def run(self):
        batch = []
        try:
            while (batch := self.take()) is not None:
                batch = [j for j in batch if not j.abandoned]  # clients that left while queued
                if batch:
                    if recordings := sum(not isinstance(job, StreamRound) for job in batch):
                        self.batch_sizes.append(recordings)
                        self.on_batch(recordings)
                    self.process_safely(batch)
        except BaseException as error:  # the thread dies: its requests must not wait for it
            self.failure = f"{type(error).__name__}: {error}"
            log.critical(f"the model worker stopped: {self.failure}", exc_info=True)
            self.fail(batch or [])

    def fail(self, batch):
        """Fails `batch` and every job still queued (the worker has stopped)."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                batch.append(job)
        fail_jobs(batch, WorkerFailed(self.failure))

    def take(self) -> list | None:
        """The next batch, or None to stop. Requests that queued while the model was busy run at once (waiting
        would only idle the model); one that finds the model idle waits up to max_wait, while requests are being
        received, for them to share its forward pass, never for requests that may not come."""
        idle = self.jobs.empty()  # before the blocking get: was anything queued while the model was busy?
        if (job := self.jobs.get()) is None:
            return None
        batch, deadline = [job], time.monotonic() + (self.max_wait if idle else 0.0)
        while len(batch) < self.max_batch_size and (self.arriving or not self.jobs.empty()):
            try:  # short waits: an arriving request may also end in an error and never queue
                job = self.jobs.get(timeout=max(0.0, min(deadline - time.monotonic(), 0.002)))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                continue
            if job is None:  # stop: after this batch
                self.jobs.put(None)
                break
            batch.append(job)
        return batch

    def decode(self, batch) -> list:
        """The jobs of `batch` whose audio decodes, their `samples` now arrays; the others fail alone (415, 400,
        413). Decoding runs here, on all the decoding threads while the model waits, not in the request handlers
        while the model runs: there it takes cores from the model's OpenMP threads in the middle of a forward
        pass, and every barrier waits for the thread that lost its core (measured on 2 cores: 0.80x -> 0.84x
        of offline throughput at 16 clients, median of 6 interleaved rounds)."""
        decoding = [(job, self.decoding.submit(job.samples)) for job in batch if callable(job.samples)]
        failed = set()
        for job, future in decoding:
            if (error := future.exception()) is not None:
                job.loop.call_soon_threadsafe(settle, job.future, None, error)
                failed.add(job)
            else:
                job.samples = future.result()
        return [job for job in batch if job not in failed and not job.abandoned]  # left while decoded: not run

    def process_safely(self, batch):
        """`process`, whose failure (a thread that cannot start, memory) fails this batch's requests with 500
        and leaves the worker taking the next."""
        try:
            self.process(batch)
        except Exception as error:
            log.error(f"a batch of {len(batch)} failed: {type(error).__name__}: {error}")
            fail_jobs(batch, error)

    def process(self, batch):
        """The batch through the transcriber's one batching: each request is answered as the forward pass that
        completes it ends, with its own decoder; a request the model fails on fails alone. Live streams' chunks
        (a `StreamRound` in the batch) are stepped first: the model thread is theirs too."""
        for job in batch:
            if isinstance(job, StreamRound):
                try:
                    job.run()
                except Exception as error:  # the live streams fail, the uploads of this batch go on
                    log.error(f"a round of live streams failed: {type(error).__name__}: {error}")
                    job.live.fail(error)
        batch = [job for job in batch if not isinstance(job, StreamRound)]
        started = time.monotonic()
        if not (batch := self.decode(batch)):
            return
        for done in self.transcriber.stream([job.samples for job in batch]):
            for index, output in done:
                job = batch[index]
                try:
                    if isinstance(output, Exception):
                        raise output
                    result, failure = self.transcriber.decode(*output, decoder=job.decoder), None
                except Exception as error:
                    result, failure = None, error
                job.started, job.finished = started, time.monotonic()
                job.loop.call_soon_threadsafe(settle, job.future, result, failure)


class Arrival:
    """`with Arrival(batcher) as arrival:` around receiving a request, up to its
    `transcribe(..., arrival=)`: while it arrives, the worker, if idle, waits for it (up to max_wait). It stops
    counting in `Batcher.arriving` once its job is queued (not before: the worker would see neither) or when the
    request fails."""

    def __init__(self, batcher):
        self.batcher, self.counted = batcher, False

    def __enter__(self):
        self.batcher.arriving += 1
        self.counted = True
        return self

    def end(self):
        if self.counted:
            self.counted = False
            self.batcher.arriving -= 1

    def __exit__(self, *exc):
        self.end()


def fail_jobs(jobs, error):
    """Each request of `jobs` answered with `error`, and each round's live streams sent it."""
    for job in jobs:
        if isinstance(job, StreamRound):
            job.live.fail(error)
        else:
            job.loop.call_soon_threadsafe(settle, job.future, None, error)


def settle(future, result, failure):
    if future.done():  # its client left
        return
    if failure is not None:
        future.set_exception(failure)
    else:
        future.set_result(result)


class ClientGone(Exception):
    """The client disconnected before its transcript was ready."""


# ---------------------------------------------------------------------------------------------- requests


async def body_chunks(request, service):
    """The request's body as it arrives, cut with 408 when nothing arrives for --read_timeout_s or it takes
    over --upload_timeout_s, and with 503 once a stopping server's grace for uploads is over."""
    args, loop = service.args, asyncio.get_running_loop()
    deadline, stream = loop.time() + args.upload_timeout_s, request.stream()
    while True:
        step = asyncio.ensure_future(anext(stream, None))
        heard = loop.time()
        while not step.done():  # short waits: the shutdown's cut may come while this one waits
            await asyncio.wait({step}, timeout=0.25)
            now = loop.time()
            if step.done():
                break
            if now >= service.uploads_cut_at or now - heard >= args.read_timeout_s or now >= deadline:
                step.cancel()
                raise stalled_upload(service, now, heard, deadline)
        if (chunk := step.result()) is None:
            return
        yield chunk


def stalled_upload(service, now, heard, deadline) -> ApiError:
    service.metrics.rejected.labels("timeout").inc()
    close = {"Connection": "close"}
    if now >= service.uploads_cut_at:
        return ApiError(503, "the server is stopping: this upload was not complete; send it again", headers=close)
    if now - heard >= service.args.read_timeout_s:
        message = f"the upload stalled: nothing arrived for {service.args.read_timeout_s:g} s (--read_timeout_s)"
    else:
        message = f"the upload took over {service.args.upload_timeout_s:g} s (--upload_timeout_s)"
    return ApiError(408, message, "file", headers=close)


async def read_form(request, service):
    """The multipart form, refusing (413) a body over the upload limit while it arrives, before it is all read,
    and (400) one that ends before its closing boundary (truncated)."""
    limit_bytes = int(service.args.max_upload_mb * 2**20)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "the body must be multipart/form-data with the audio in `file` (OpenAI's audio API)")
    slack = 1 << 20  # the form's other fields and boundaries
    if int(request.headers.get("content-length") or 0) > limit_bytes + slack:
        raise too_large(f"the upload is {int(request.headers['content-length']) / 2**20:.2f} MiB, over", service)
    tail = bytearray()  # the body's last bytes: its closing boundary, if it is complete

    async def limited():
        size = 0
        async for chunk in body_chunks(request, service):
            size += len(chunk)
            if size > limit_bytes + slack:
                raise too_large("the upload is over", service)
            tail.extend(chunk)
            del tail[:-256]
            yield chunk

    try:
        form = await MultiPartParser(request.headers, limited(), max_files=1, max_fields=len(FIELDS) + 4).parse()
    except MultiPartException as error:
        check_complete(content_type, tail)
        raise ApiError(400, f"the multipart form cannot be read: {error.message}") from None
    check_complete(content_type, tail)
    return form


def check_complete(content_type, tail):
    boundary = re.search(r'boundary="?([^";]+)', content_type)
    if boundary and b"--" + boundary.group(1).encode("latin-1") + b"--" not in tail:
        raise ApiError(400, "the multipart form is truncated: the body ends before its closing boundary")


def too_large(what, service) -> ApiError:
    service.metrics.rejected.labels("too_large").inc()
    return ApiError(413, f"{what} the limit of {service.args.max_upload_mb:g} MiB (--max_upload_mb)", "file")


def prompt_words(prompt: str, characters) -> list:
    """A prompt's hotwords, normalised as transcripts are (punctuation and symbols dropped, case folded, ё as е);
    a 400 names what is too long, too many, or outside the model's alphabet."""
    from modeling_ebranchformer.beam_search import MAX_HOTWORD_LENGTH, MAX_HOTWORDS

    text = normalize_text("".join(" " if unicodedata.category(c)[0] in "PS" else c for c in prompt))
    words = list(dict.fromkeys(text.split()))
    if long := [w for w in words if len(w) > MAX_HOTWORD_LENGTH]:
        raise ApiError(
            400,
            f"prompt: the word {long[0][:40]!r}... is {len(long[0])} characters, over {MAX_HOTWORD_LENGTH}",
            "prompt",
        )
    if len(words) > MAX_HOTWORDS:
        raise ApiError(400, f"prompt: {len(words)} words, over the limit of {MAX_HOTWORDS} hotwords", "prompt")
    if unknown := sorted({c for w in words for c in w if c not in characters}):
        raise ApiError(
            400,
            f"prompt: characters {unknown[:20]} are outside the model's alphabet (after normalisation: "
            f"{text[:80]!r}); spell numbers out, transliterate the rest",
            "prompt",
        )
    return words


def prompt_fits(prompt: str):
    """A prompt far over what `prompt_words` takes is refused before it is read: at once, on the event loop."""
    from modeling_ebranchformer.beam_search import MAX_HOTWORD_LENGTH, MAX_HOTWORDS

    if len(prompt) > (most := 2 * MAX_HOTWORDS * (MAX_HOTWORD_LENGTH + 1)):
        raise ApiError(400, f"prompt: {len(prompt)} characters, over the limit of {most}", "prompt")


def ogg_truncated(data: bytes) -> bool:
    """An Ogg stream whose last page is cut short or is not marked the end of the stream (an interrupted upload:
    soundfile decodes it, shorter, without a word)."""
    if data[:4] != b"OggS":
        return False
    last = data.rfind(b"OggS")
    if len(data) < last + 27 or len(data) < last + 27 + data[last + 26]:
        return True
    segments = data[last + 27 : last + 27 + data[last + 26]]
    complete = last + 27 + len(segments) + sum(segments) <= len(data)
    return not (complete and data[last + 5] & 0x04)


class Metrics:
    """The server's Prometheus metrics (`/metrics`), in a registry of their own (several apps in one process)."""

    def __init__(self, batcher):
        p, self.registry = prometheus_client, prometheus_client.CollectorRegistry()
        made = functools.partial(dict, registry=self.registry)
        self.requests = p.Counter("asr_requests", "requests by endpoint and status", ["endpoint", "status"], **made())
        self.latency = p.Histogram(
            "asr_request_duration_seconds", "time to answer, by endpoint", ["endpoint"], **made()
        )
        self.queue_time = p.Histogram("asr_queue_seconds", "time a recording waited for the model", **made())
        buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256)
        self.batch_size = p.Histogram("asr_batch_size", "recordings per batch", buckets=buckets, **made())
        self.audio = p.Counter("asr_audio_seconds", "seconds of audio transcribed", **made())
        self.streams = p.Gauge("asr_live_streams", "live streams open", **made())
        depth = p.Gauge("asr_queue_depth", "recordings admitted: waiting or in the model", **made())
        depth.set_function(lambda: batcher.admitted)
        self.rejected = p.Counter("asr_rejected", "requests refused, by reason", ["reason"], **made())

    def text(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class Service:
    """The model, its decoders and the limits, shared by the endpoints."""

    def __init__(self, args):
        self.args = args
        self.model_id = Path(args.model).resolve().name
        # Loaded by a thread that then ends, not by this one (the main thread, which serves HTTP): torch's OpenMP
        # (libgomp) keeps a team of helper threads for each thread that ever ran a parallel op, and once it manages
        # more threads than there are cores, every barrier sleeps at once instead of spinning. A team left on the
        # main thread by loading did that to the model thread's forward passes (on 2 cores: ~1,700 sleeps a second
        # against 6; at 16 clients, the worst of 6 interleaved rounds fell to 0.35x of offline throughput, not 0.69x).
        with ThreadPoolExecutor(1) as loader:
            self.backend = loader.submit(self.load_backend, args).result()
        self.decoder = load_decoder(args.model, args.decoder, hotword_weight=args.hotword_weight)
        self.itn = InverseNormalizer(args.itn_cache_dir, log=log.info) if getattr(args, "itn", False) else None
        segmenter = None
        if getattr(args, "vad", False):
            segmenter = VoiceActivity(threshold=args.vad_threshold, max_segment_s=args.vad_max_segment_s)
        # Word times and confidences always: srt, vtt and verbose_json need them, and they never change the text.
        transcriber = Transcriber(
            self.backend,
            args.max_batch_size,
            args.chunk_length_s,
            args.stride_length_s,
            timestamps=True,
            decoder=self.decoder,
            forward_cost_s=FORWARD_COST_S[args.device],
            segmenter=segmenter,
            confidence=True,
        )
        decode_threads = min(args.max_batch_size, args.threads or os.cpu_count() or 1)
        self.batcher = Batcher(transcriber, args.max_batch_size, args.max_wait_ms, args.max_queue, decode_threads)
        self.metrics = Metrics(self.batcher)
        self.batcher.on_batch = self.metrics.batch_size.observe
        self.rate = self.backend.sampling_rate
        self.live = None  # with --streaming: the live streams of the streaming model
        if getattr(args, "streaming", False):
            self.live = LiveStreams(self.chunk_model(args), self.endpointing(args), self.batcher)
        self.streams = 0  # live streams open
        self.stopping = None  # an asyncio.Event, set when the server begins to stop (made on the serving loop)
        self.uploads_cut_at = float("inf")  # loop time from which uploads still arriving are cut

    @staticmethod
    def load_backend(args):
        """The model's backend; with --torch_compile compiled now for the batches to come, before the server is
        ready."""
        compile_ = getattr(args, "torch_compile", False)
        if compile_:
            log.info("--torch_compile: compiling the model before serving")
        backend = load_backend(
            args.model,
            args.device,
            args.threads,
            args.quantized,
            args.trust_remote_code,
            getattr(args, "dtype", "float32"),
            compile_,
        )
        if compile_:
            backend.compile_now(args.max_batch_size)
        return backend

    def chunk_model(self, args) -> ChunkModel:
        try:
            model = ChunkModel(self.backend, args.chunk_ms, args.left_chunks, self.decoder)
        except StreamingError as error:
            raise InferenceError(f"--streaming: {args.model}: {error}") from None
        if model.left_chunks < 0:  # a step's cost and memory would grow with the stream, without a limit
            raise InferenceError("--streaming: the server needs a bounded left context: give --left_chunks N (e.g. 8)")
        return model

    @staticmethod
    def endpointing(args) -> Endpointing:
        return Endpointing(args.silence_after_speech_s, args.silence_without_speech_s, args.max_segment_s)

    async def transcribe(self, samples, decoder=None, reserved=False) -> dict:
        """The record {"text", "words"} of `samples`, through the batcher."""
        return (await self.batcher.transcribe(samples, decoder, reserved=reserved)).future.result()

    async def request_decoder(self, prompt):
        """The decoder of a request: `prompt`'s words are hotwords for this request (LM folders only), built off
        the event loop (a long prompt takes a while)."""
        if not prompt or not prompt.strip():
            return self.decoder
        if self.decoder is None:
            raise ApiError(
                400,
                "`prompt` carries hotwords, which need beam search with a language model: start the "
                "server with --decoder lm on a folder with language_model/ (build_lm.py)",
                "prompt",
            )
        prompt_fits(prompt)
        return await asyncio.to_thread(self.prompt_decoder, prompt)

    def prompt_decoder(self, prompt):
        words = prompt_words(prompt, self.decoder.decoder.characters)
        try:
            return LMDecoder(self.decoder.decoder, **{**self.decoder.options, "hotwords": words})
        except InferenceError as error:
            raise ApiError(400, f"prompt: {error}", "prompt") from None

    def samples(self, data: bytes, name: str, notes=None) -> np.ndarray:
        """Decoded upload: 415 with the decoder's reason when it is no audio it reads, 400 when it is audio but
        not 16 kHz mono finite speech audio, 413 when longer than --max_audio_s. What the response should say
        of it (a truncated Ogg stream) is appended to `notes`."""
        try:
            samples = read_audio(io.BytesIO(data), self.rate, name=name)
        except ValueError as error:
            raise ApiError(415 if "cannot decode audio" in str(error) else 400, str(error), "file") from None
        seconds = len(samples) / self.rate
        if seconds > self.args.max_audio_s:
            raise ApiError(
                413,
                f"{name}: {seconds:.1f} s of audio, over the limit of {self.args.max_audio_s:g} s (--max_audio_s)",
                "file",
            )
        if (peak := float(np.abs(samples).max())) > LOUD:
            log.warning(f"{log_safe(name)}: float samples peak at {peak:g}, far above 1: integer PCM stored as floats?")
        if ogg_truncated(data):
            note = f"{name}: the Ogg stream is truncated (its last page is missing): transcribed as far as it goes"
            log.warning(log_safe(note))
            (notes if notes is not None else []).append(note)
        return samples

    async def stop(self, grace_s):
        """The server is stopping: live streams get the final transcript of what they sent, uploads still arriving
        have half the grace to complete; returns when the streams are done or the grace is over."""
        loop = asyncio.get_running_loop()
        self.uploads_cut_at = loop.time() + grace_s / 2
        if self.stopping is not None:
            self.stopping.set()
        deadline = loop.time() + grace_s
        while self.streams and loop.time() < deadline:
            await asyncio.sleep(0.05)


def parse_fields(form, service) -> dict:
    """The request's options, checked: an unknown field or value is a 400 that names it."""
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; this server takes {', '.join(FIELDS)}", unknown[0])
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "no audio: send it as the multipart file field `file`", "file")
    model = form.get("model")
    if model is None:
        raise ApiError(400, f"`model` is required (OpenAI's API); this server has {service.model_id!r}", "model")
    if model != service.model_id:
        raise ApiError(
            400, f"model {model!r} is not served here; this server has {service.model_id!r} (GET /v1/models)", "model"
        )
    response_format = form.get("response_format", "json")
    if response_format not in FORMATS:
        raise ApiError(400, f"response_format {response_format!r}: one of {', '.join(FORMATS)}", "response_format")
    language = form.get("language")
    if language is not None and language.lower() not in LANGUAGES:
        raise ApiError(400, f"language {language!r}: this model transcribes Russian only (ru)", "language")
    check_temperature(form.get("temperature"))
    granularities = form.getlist("timestamp_granularities[]")
    if bad := [g for g in granularities if g not in ("segment", "word")]:
        raise ApiError(400, f"timestamp_granularities[] {bad[0]!r}: segment or word", "timestamp_granularities[]")
    if granularities and response_format != "verbose_json":
        raise ApiError(400, "timestamp_granularities[] needs response_format verbose_json", "timestamp_granularities[]")
    fields = {
        "upload": upload,
        "format": response_format,
        "words": "word" in granularities,
        "prompt": form.get("prompt"),
    }
    return fields | {"itn": request_itn(form.get("itn"), service)}


def request_itn(value, service):
    """The inverse normaliser a request asks for (`itn` true or false; default: the server's --itn), or None."""
    if value is None:
        return service.itn
    if value.lower() not in ("true", "false"):
        raise ApiError(400, f"itn {value!r}: true or false", "itn")
    if value.lower() == "false":
        return None
    if service.itn is None:
        raise ApiError(400, "itn: this server normalises no text; start it with --itn (the itn extra)", "itn")
    return service.itn


def check_temperature(temperature):
    try:
        if temperature is not None and float(temperature) != 0:
            raise ValueError
    except ValueError:
        raise ApiError(
            400,
            f"temperature {temperature!r}: decoding is deterministic here (greedy or beam search); only 0 is taken",
            "temperature",
        ) from None


def respond(record, fields, seconds, notes=()):
    """The response in the requested format; srt and vtt are what `transcribe.py --output x.srt` writes. With
    --vad, verbose_json's segments are the voice-activity segments; with `itn`, texts are normalised (subtitles and
    words keep the spoken words) and verbose_json keeps the spoken text as raw_text."""
    words, itn = record["words"], fields["itn"] or (lambda text: text)
    text = itn(record["text"])
    if fields["format"] == "json":
        return JSONResponse({"text": text})
    if fields["format"] == "text":
        return PlainTextResponse(text)
    if fields["format"] in ("srt", "vtt"):
        return PlainTextResponse(render([record], "." + fields["format"]))
    spans = [(s["start"], s["end"], s["text"]) for s in record["segments"]] if "segments" in record else cues(record)
    segments = [
        {"id": n, "seek": 0, "start": start, "end": end, "text": itn(cue), "tokens": [], "temperature": 0.0}
        for n, (start, end, cue) in enumerate(spans)
    ]
    body = {"task": "transcribe", "language": "russian", "duration": seconds, "text": text, "segments": segments}
    if fields["itn"]:
        body["raw_text"] = record["text"]
    if fields["words"]:
        body["words"] = words
    if notes:
        body["warnings"] = list(notes)
    return JSONResponse(body)


# ---------------------------------------------------------------------------------------------- access


def header(scope, name: bytes):
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


class Guard:
    """ASGI middleware in front of every endpoint: a request id on every response (X-Request-Id), the `Origin`
    allow-list (a page of another site must not use a local server: WebSockets are not bound by the same-origin
    policy), CORS headers for the allowed origins only, the API keys (`Authorization: Bearer`, compared in
    constant time; a browser's WebSocket sends one as the subprotocol `bearer.KEY`) and the request metrics."""

    def __init__(self, app, service, keys, allowed_origins, allowed_hosts=None):
        self.app, self.service = app, service
        self.keys = [key.encode() for key in keys]
        self.allowed = set(allowed_origins)
        # Host names answered (None: any). A server bound to loopback answers only loopback names by default: a
        # hostile site whose name resolves to 127.0.0.1 (DNS rebinding) would otherwise be this server's "own"
        # origin, and pass the Origin check.
        self.hosts = None if allowed_hosts is None else {name.lower() for name in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        scope["request_id"] = rid = uuid.uuid4().hex[:12]
        origin, endpoint = header(scope, b"origin"), scope["path"] if scope["path"] in ENDPOINTS else "other"
        cross = origin is not None and origin != own_origin(scope)
        if refusal := self.refusal(scope, origin, cross, endpoint):
            return await self.refuse(scope, send, refusal, endpoint, rid)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        if cross and scope["method"] == "OPTIONS":
            return await self.respond(scope, send, Response(status_code=204, headers=preflight(origin)), endpoint)
        extra = [(b"x-request-id", rid.encode())]
        if cross:
            extra += [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
        await self.respond(scope, send, None, endpoint, receive, extra)

    def refusal(self, scope, origin, cross, endpoint) -> ApiError | None:
        if self.hosts is not None and host_name(header(scope, b"host")) not in self.hosts:
            self.service.metrics.rejected.labels("host").inc()
            message = f"this server answers only to the host names {', '.join(sorted(self.hosts))} (--allowed_hosts)"
            return ApiError(403, message, code="host_not_allowed")
        if cross and origin not in self.allowed:
            self.service.metrics.rejected.labels("origin").inc()
            return ApiError(403, f"origin {origin!r} is not allowed (--allowed_origins)", code="origin_not_allowed")
        preflight_request = scope["type"] == "http" and scope["method"] == "OPTIONS" and cross
        if self.keys and endpoint not in OPEN_PATHS and not preflight_request and not self.authorized(scope):
            self.service.metrics.rejected.labels("unauthorized").inc()
            message = "a valid API key is required: send it as `Authorization: Bearer KEY`"
            return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"}, code="invalid_api_key")
        return None

    def authorized(self, scope) -> bool:
        given = (header(scope, b"authorization") or "").removeprefix("Bearer ").strip()
        if not given and scope["type"] == "websocket":
            offered = (header(scope, b"sec-websocket-protocol") or "").split(",")
            given = next((p.strip()[7:] for p in offered if p.strip().startswith("bearer.")), "")
        given = given.encode("utf-8", "replace")
        return sum(hmac.compare_digest(given, key) for key in self.keys) > 0  # every key compared: constant time

    async def refuse(self, scope, send, error, endpoint, rid):
        if scope["type"] == "http":
            response = error.response()
            response.headers["X-Request-Id"] = rid
            return await self.respond(scope, send, response, endpoint)
        self.service.metrics.requests.labels(endpoint, str(error.status)).inc()
        if "websocket.http.response" in scope.get("extensions", {}):  # a refusal the client can read
            body = json.dumps(error.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"x-request-id", rid.encode())]
            await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
            return await send({"type": "websocket.http.response.body", "body": body})
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})

    async def respond(self, scope, send, response, endpoint, receive=None, extra=()):
        """`response` (or the app's, with `extra` headers), counted by endpoint and status."""
        begun, status = time.monotonic(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await (response or self.app)(scope, receive, sending)
        finally:
            self.service.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.service.metrics.latency.labels(endpoint).observe(time.monotonic() - begun)


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def host_name(host: str | None) -> str:
    """The name of a Host header without its port ("[::1]:8000" -> "::1")."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def own_origin(scope) -> str:
    scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
    return f"{scheme}://{header(scope, b'host')}"


def preflight(origin) -> dict:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "authorization, content-type",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def api_keys(args) -> list:
    """--api_key (repeatable), the lines of --api_key_file, and EBRANCHFORMER_API_KEY."""
    keys = list(args.api_key or [])
    if args.api_key_file:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InferenceError(f"--api_key_file {args.api_key_file}: cannot be read ({error})") from None
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not keys:
            raise InferenceError(f"--api_key_file {args.api_key_file} holds no key (one a line)")
    if os.environ.get("EBRANCHFORMER_API_KEY"):
        keys.append(os.environ["EBRANCHFORMER_API_KEY"].strip())
    return keys


# ---------------------------------------------------------------------------------------------- the app


class Api:
    """The endpoints (`routes`), over one `Service`."""

    def __init__(self, service):
        self.service, self.args = service, service.args

    def routes(self) -> list:
        routes = [
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/models", self.models),
            Route("/health", self.health),
            Route("/ready", self.ready),
            Route("/", self.page),
            WebSocketRoute("/v1/audio/stream", self.stream),
        ]
        if self.args.metrics:
            routes.append(Route("/metrics", self.metrics))
        return routes

    async def transcriptions(self, request):
        rid, begun, answer = request.scope.get("request_id", "-"), time.monotonic(), {"audio": 0.0, "job": None}
        try:
            response = await self.transcription(request, answer)
        except ApiError as error:
            response = error.response()
        except (ClientGone, ClientDisconnect):
            response = PlainTextResponse("client disconnected", 499)  # nobody reads it; logged as such
        except InferenceError as error:
            response = ApiError(500, f"the model failed on this recording: {error}").response()
        except WorkerFailed as error:
            response = ApiError(500, f"the model worker has stopped ({error}); the server must be restarted").response()
        except Exception as error:
            log.exception(f"request {rid} failed")
            response = ApiError(500, f"{type(error).__name__}: {error}").response()
        job = answer["job"]
        queued = (job.started - job.queued) if job and job.started else 0.0
        in_model = (job.finished - job.started) if job and job.started else 0.0
        if job and job.started:
            self.service.metrics.queue_time.observe(queued)
        log.info(
            f"request {rid} status={response.status_code} duration={time.monotonic() - begun:.3f}s "
            f"audio={answer['audio']:.2f}s queue={queued:.3f}s model={in_model:.3f}s"
        )
        return response

    async def transcription(self, request, answer):
        """The response to a transcription request; `answer` gets its audio's length and its job."""
        service, notes = self.service, []
        if service.stopping is not None and service.stopping.is_set():
            raise ApiError(503, "the server is stopping", headers={"Connection": "close"})
        with Arrival(service.batcher) as arrival:
            form = await read_form(request, service)
            fields = parse_fields(form, service)
            upload, decoder = fields["upload"], await service.request_decoder(fields["prompt"])
            if upload.size is not None and upload.size > self.args.max_upload_mb * 2**20:
                raise too_large(f"{upload.filename}: {upload.size / 2**20:.2f} MiB, over", service)
            decode = functools.partial(service.samples, await upload.read(), upload.filename or "file", notes)
            # Once the body is read, the next ASGI message is the client's disconnect, if it leaves.
            gone = asyncio.ensure_future(request.receive())
            try:
                answer["job"] = job = await service.batcher.transcribe(decode, decoder, gone, arrival)
            except ApiError as error:
                if error.status == 503:
                    service.metrics.rejected.labels("queue_full").inc()
                raise
            finally:
                gone.cancel()
            answer["audio"] = round(len(job.samples) / service.rate, 3)
        service.metrics.audio.inc(answer["audio"])
        record = job.future.result()
        if fields["itn"] is None:
            return respond(record, fields, answer["audio"], notes)
        return await asyncio.to_thread(respond, record, fields, answer["audio"], notes)  # the grammars take a while

    async def models(self, request):
        created = int(os.stat(self.args.model).st_mtime)
        model = {"id": self.service.model_id, "object": "model", "created": created, "owned_by": "ebranchformer_ru"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request):
        backend = self.service.backend
        body = {"status": "ok", "dtype": backend.dtype, "torch_compile": backend.compiled is not None}
        if (live := self.service.live) is not None:
            body["streaming"] = {"chunk_ms": round(live.model.chunk_size * live.model.frame_seconds * 1000)}
        return JSONResponse(body)

    async def ready(self, request):
        batcher = self.service.batcher
        body = {"queued": batcher.admitted, "max_queue": batcher.max_queue}
        if batcher.failure is not None or not batcher.worker.is_alive():
            return JSONResponse({"status": "model worker not running", **body}, 503)
        if batcher.admitted >= batcher.max_queue:
            return JSONResponse({"status": "busy", **body}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", **body})

    async def page(self, request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def metrics(self, request):
        return Response(self.service.metrics.text(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def stream(self, websocket):
        await live(websocket, self.service)


def make_app(args, service=None):
    """The Starlette app of a parsed command line; the model worker runs while the app does (lifespan)."""
    if MISSING is not None:
        raise InferenceError(f"the server needs the `serve` extra: pip install '.[serve]' ({MISSING})")
    keys = api_keys(args)
    service = service or Service(args)

    def lifespan(app):
        class Lifespan:
            async def __aenter__(self):
                service.stopping = asyncio.Event()
                service.batcher.start()

            async def __aexit__(self, *exc):  # after uvicorn has finished the requests in flight
                await asyncio.get_running_loop().run_in_executor(None, service.batcher.stop)

        return Lifespan()

    async def http_error(request, error):  # an unknown path or method: JSON that names it, as every other error
        return ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}").response()

    app = Starlette(routes=Api(service).routes(), lifespan=lifespan, exception_handlers={HTTPException: http_error})
    hosts = getattr(args, "allowed_hosts", None)
    if hosts is None and (args.host in LOOPBACK_NAMES or args.host == "[::1]"):
        hosts = LOOPBACK_NAMES
    app.add_middleware(
        Guard, service=service, keys=keys, allowed_origins=args.allowed_origins or (), allowed_hosts=hosts
    )
    app.state.service = service
    return app


# ---------------------------------------------------------------------------------------------- serving


class RateLimitedLog(logging.Filter):
    """Warnings and errors of one cause (logger, level, message's start, exception type) pass once per `period`
    seconds, without their traceback after the first: a flood of failing connections must not write a traceback
    each (seen: 5 MB/s of accept() tracebacks). The next one that passes says how many were left out."""

    def __init__(self, period=60.0):
        super().__init__()
        self.period, self.seen = period, {}

    def filter(self, record) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = type(record.exc_info[1]).__name__ if record.exc_info else ""
        key = (record.name, record.levelno, str(record.msg)[:48], kind)
        now = time.monotonic()
        since, dropped = self.seen.get(key, (-self.period, 0))
        if now - since < self.period:
            self.seen[key] = (since, dropped + 1)
            return False
        if len(self.seen) > 1000:  # causes are few; a flood of distinct messages must not grow this
            self.seen.clear()
        self.seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.getMessage()} ({dropped} more like this in the last {now - since:.0f} s not logged)"
            record.args = ()
        if since >= 0:
            record.exc_info = record.exc_text = None
        return True


def guarded_protocol(max_connections, head_timeout_s, refused):
    """uvicorn's HTTP protocol with a connection limit and a timeout for a request's head (uvicorn has neither:
    ~1,030 connections sending a header byte a second took every file the process may open). A request head must
    arrive within `head_timeout_s` of the connection (or of the previous response); a connection over the limit
    closes the oldest connection still sending its head, or, if none is, itself. `refused(reason)` counts each."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting = {}  # connections waiting for a request head -> their timer; oldest first

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                slowest = next(iter(waiting), None)
                refused("slow_connection" if slowest else "connections_full")
                (slowest or self).cut()
                if slowest is None:
                    return
            self.await_head()

        def await_head(self):
            waiting[self] = self.loop.call_later(head_timeout_s, self.cut)

        def head_arrived(self):
            if (timer := waiting.pop(self, None)) is not None:
                timer.cancel()

        def cut(self):
            self.head_arrived()
            self.transport.abort()

        def data_received(self, data):
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle or self.transport.get_protocol() is not self:  # a request, or an upgrade
                self.head_arrived()

        def on_response_complete(self):
            cycle = self.cycle
            self.await_head()
            super().on_response_complete()
            if self.transport.is_closing() or self.cycle is not cycle:  # closed, or a pipelined request begun
                self.head_arrived()

        def connection_lost(self, exc):
            self.head_arrived()
            super().connection_lost(exc)

    return GuardedH11Protocol


def open_files_limit() -> int:
    """The process's open-files limit, raised to the hard limit where allowed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 16


def server(app, args):
    """The uvicorn server of `app`, with the limits of `args` (see docs/deployment.md)."""
    service = app.state.service
    files = open_files_limit()
    connections = args.max_connections or files - RESERVED_FILES
    if connections > files - RESERVED_FILES or connections < 1:
        raise InferenceError(
            f"--max_connections {connections}: the open-files limit is {files} (ulimit -n), of which "
            f"{RESERVED_FILES} are kept for the process: at most {files - RESERVED_FILES}"
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=False,  # serving logs one line per request
        log_config=None,  # the command's logging (with its rate limit) for uvicorn's loggers too
        http=guarded_protocol(connections, args.read_timeout_s, lambda why: service.metrics.rejected.labels(why).inc()),
        loop="asyncio",  # see ACCEPT_BATCH
        backlog=ACCEPT_BATCH,  # the kernel's queue is raised to LISTEN_QUEUE once listening (Server.startup)
        timeout_keep_alive=args.keep_alive_s,
        timeout_graceful_shutdown=args.shutdown_timeout_s,
        ws_max_size=1 << 20,  # 32 s of PCM a message: a live stream's messages are a fraction of a second
        ws_per_message_deflate=False,  # PCM hardly compresses: inflating it took 4 % of the server at 128 streams
        h11_max_incomplete_event_size=64 * 1024,  # a request head's size
    )
    log.info(f"at most {connections} connections (open-files limit {files}), {args.max_streams} live streams")
    return Server(config, service, args.shutdown_timeout_s)


if MISSING is None:

    class Server(uvicorn.Server):
        """uvicorn's server, whose stop (SIGTERM) first stops accepting, then lets the live streams send their
        final transcripts and the uploads arriving complete (within the grace), then does uvicorn's stop: the
        requests in flight are answered, those left after the grace cancelled."""

        def __init__(self, config, service, grace_s):
            super().__init__(config)
            self.service, self.grace_s = service, grace_s

        async def startup(self, sockets=None):
            await super().startup(sockets)
            for listening in self.servers:
                for sock in listening.sockets:  # listen() again on a listening socket sets its queue's length
                    with socket.fromfd(sock.fileno(), sock.family, sock.type) as same:
                        same.listen(LISTEN_QUEUE)

        async def shutdown(self, sockets=None):
            for listening in self.servers:
                listening.close()
            await self.service.stop(self.grace_s)
            await super().shutdown(sockets)


# ---------------------------------------------------------------------------------------------- live audio


class LiveStream:
    """Live transcription: PCM arrives as it is recorded; every PARTIAL_EVERY seconds the recent audio (the last
    --stream_window_s at most; words before it are kept as decoded) is decoded again and sent as a partial when
    there is new audio; at the end (or when the server stops) the whole stream is transcribed as an uploaded file
    would be, and sent as the final transcript. At most --max_streams at once; a stream that sends nothing for
    --stream_idle_s is closed."""

    def __init__(self, websocket, service, window_s=None):
        self.websocket, self.service, self.args = websocket, service, service.args
        self.window = int((window_s or self.args.stream_window_s) * service.rate)
        self.limit = int(self.args.max_audio_s * service.rate) * 2
        self.pcm = bytearray()
        self.committed, self.start, self.heard, self.text = [], 0, 0, ""  # heard: the samples `text` transcribes
        self.last_message = time.monotonic()
        self.rid = websocket.scope.get("request_id", uuid.uuid4().hex[:12])

    async def run(self):
        service, begun, status = self.service, time.monotonic(), "gone"
        if service.streams >= self.args.max_streams:
            return await self.refuse()
        service.streams += 1
        service.metrics.streams.inc()
        receiver = None
        try:
            await self.websocket.accept(subprotocol=self.subprotocol())
            receiver = asyncio.create_task(self.receive())
            status = await self.transcribe(receiver)
        except ApiError as error:
            status = f"error {error.status}"
            await self.websocket.send_json({"type": "error", "error": {"message": error.message, "code": error.status}})
            await self.websocket.close(1008 if error.status < 500 else 1011)
        except (ClientGone, WebSocketDisconnect):
            pass
        finally:
            if receiver is not None:
                receiver.cancel()
            service.streams -= 1
            service.metrics.streams.dec()
            service.metrics.requests.labels("/v1/audio/stream", status.split()[-1]).inc()
            audio = self.audio_bytes() // 2 / service.rate
            self.pcm = bytearray()  # the memory goes now, not when the connection's last reference does
            log.info(f"stream {self.rid} status={status} duration={time.monotonic() - begun:.3f}s audio={audio:.2f}s")

    def subprotocol(self):
        offered = self.websocket.scope.get("subprotocols") or []
        return next((p for p in offered if p.startswith("bearer.")), None)

    async def refuse(self):
        self.service.metrics.rejected.labels("streams_full").inc()
        message = f"the server has {self.args.max_streams} live streams open (--max_streams); retry later"
        await self.websocket.accept(subprotocol=self.subprotocol())
        await self.websocket.send_json({"type": "error", "error": {"message": message, "code": 503}})
        await self.websocket.close(STREAM_FULL, "too many live streams")
        log.info(f"stream {self.rid} status=refused (--max_streams {self.args.max_streams})")

    async def transcribe(self, receiver) -> str:
        """Partials while audio arrives, then the final; the stream's status."""
        loop, stopping = asyncio.get_running_loop(), asyncio.ensure_future(self.service.stopping.wait())
        next_partial = loop.time() + PARTIAL_EVERY
        try:
            while True:
                await asyncio.wait({receiver, stopping}, timeout=max(0.0, next_partial - loop.time()))
                if receiver.done() or stopping.done():
                    break
                if time.monotonic() - self.last_message > self.args.stream_idle_s:
                    idle = self.args.stream_idle_s
                    raise ApiError(408, f"nothing arrived for {idle:g} s (--stream_idle_s): the stream is closed")
                next_partial += PARTIAL_EVERY
                await self.partial()
        finally:
            stopping.cancel()
        if receiver.done():
            receiver.result()  # an error in the stream is raised here
        else:  # the server is stopping: the final of what was sent
            del self.pcm[len(self.pcm) // 2 * 2 :]
        await self.final(going_away=not receiver.done())
        return "final"

    async def receive(self):
        while True:
            message = await self.websocket.receive()
            self.last_message = time.monotonic()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            if message.get("bytes") is not None:
                if self.audio_bytes() + len(message["bytes"]) > self.limit:
                    raise ApiError(413, f"the stream is over the limit of {self.args.max_audio_s:g} s (--max_audio_s)")
                self.add(message["bytes"])
            elif message.get("text") is not None:
                return self.end(message["text"])

    def add(self, data: bytes):
        self.pcm.extend(data)

    def audio_bytes(self) -> int:
        return len(self.pcm)

    def end(self, text):
        try:
            end = json.loads(text).get("type") == "end"
        except (ValueError, AttributeError):
            end = False
        if not end:
            raise ApiError(
                400,
                f'unknown text message {text[:80]!r}; send audio as binary messages and {{"type": "end"}} at the end',
            )
        if self.audio_bytes() % 2:
            raise ApiError(400, "the stream ends with half a sample: send 16-bit PCM (2 bytes a sample)")

    def samples(self, start=0, end=None):
        end = len(self.pcm) // 2 if end is None else end
        return np.frombuffer(bytes(self.pcm[start * 2 : end * 2]), "<i2").astype(np.float32) / 32768

    async def partial(self):
        """A partial transcript of the recent audio, sent when there is new audio (never a repeat)."""
        service, received = self.service, len(self.pcm) // 2
        if received - self.start < service.rate // 10 or received == self.heard:
            return
        self.start = max(self.start, received - self.window)  # audio came faster than partials: they skip some
        recent = self.samples(self.start, received)
        try:
            words = (await service.transcribe(recent, service.decoder))["words"]
        except ApiError as error:  # a full queue: no partial this time
            if error.status != 503:
                raise
            return
        self.heard, offset = received, self.start / service.rate
        words = [{**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)} for w in words]
        if len(recent) > self.window // 2:  # keep the words of the older half; decode again after them
            keep_before = (received - self.window // 2) / service.rate
            done = [w for w in words if w["end"] < keep_before]
            self.committed += done
            words = words[len(done) :]
            self.start = int(done[-1]["end"] * service.rate) if done else received - self.window // 2
        self.text = " ".join(w["word"] for w in self.committed + words)
        await self.websocket.send_json(
            {"type": "partial", "text": self.text, "duration": round(self.heard / service.rate, 3)}
        )

    async def final(self, going_away=False):
        """The whole stream's transcript: it has reserved room in the queue (a stream cannot retry)."""
        audio = self.samples()
        if not len(audio):
            raise ApiError(400, "the stream held no audio")
        record = await self.service.transcribe(audio, self.service.decoder, reserved=True)
        duration = round(len(audio) / self.service.rate, 3)
        self.service.metrics.audio.inc(duration)
        final = {"type": "final", "text": record["text"], "words": record["words"], "duration": duration}
        await self.websocket.send_json(final)
        if going_away:
            await self.websocket.close(GOING_AWAY, "the server is stopping")
        else:
            await self.websocket.close()


async def live(websocket, service, window_s=None):
    """A live stream on `websocket`: `ChunkedLiveStream` with a streaming model (--streaming), else `LiveStream`."""
    if service.live is not None:
        await ChunkedLiveStream(websocket, service).run()
    else:
        await LiveStream(websocket, service, window_s).run()


# ---------------------------------------------------------------------------------------------- streaming models


class StreamRound:
    """A job for the model thread: step every live stream that has a chunk ready (`LiveStreams.round`)."""

    abandoned = False

    def __init__(self, live):
        self.live = live

    def run(self):
        self.live.round()


def drain(inbox) -> tuple[list, bool]:
    """Empties a live stream's `inbox`: its sample arrays up to the end marker (None), and whether it held one
    (what follows the end is dropped)."""
    pieces, ended = [], False
    while inbox:
        samples = inbox.popleft()
        ended |= samples is None
        if not ended:
            pieces.append(samples)
    return pieces, ended


class LiveEntry:
    """One live stream as the model thread sees it: audio handed over by the event loop (`inbox`: sample arrays,
    None at the end), the `streaming.Stream`, its final segments so far, and where its events go."""

    def __init__(self, stream, loop, send):
        self.stream, self.loop, self.send = stream, loop, send  # send(event) runs on the event loop
        self.inbox, self.finals, self.samples = collections.deque(), [], 0
        self.reported = 0.0  # the audio that the last partial covered

    def post(self, event):
        self.loop.call_soon_threadsafe(self.send, event)


class LiveStreams:
    """The live streams of a streaming model (serve.py --streaming). Audio arriving asks for a round on the model
    thread (one `StreamRound` queued at a time); a round hands every stream its audio, steps all the streams with a
    chunk ready together, each with its own state (`streaming.recognize`), then sends each stream a partial, its
    finished segments, and at its end the final transcript, built from the segments (nothing is decoded again);
    last, the segments that the chunks under way already end (`streaming.look_ahead_at`)."""

    def __init__(self, model: ChunkModel, endpointing: Endpointing, batcher):
        self.model, self.endpointing, self.batcher = model, endpointing, batcher
        self.entries, self.queued = set(), False  # queued: a round waits in the batcher's queue

    def open(self, send) -> LiveEntry:
        if self.batcher.failure is not None:
            raise ApiError(500, f"the model worker has stopped ({self.batcher.failure}); the server must be restarted")
        entry = LiveEntry(self.model.stream(self.endpointing), asyncio.get_running_loop(), send)
        self.entries.add(entry)
        return entry

    def close(self, entry):
        self.entries.discard(entry)

    def heard(self, entry, samples):
        """Audio of `entry` (None: its end), to be taken by the next round (which this asks for)."""
        entry.inbox.append(samples)
        entry.samples += 0 if samples is None else len(samples)
        if not self.queued:
            self.queued = True
            self.batcher.jobs.put(StreamRound(self))

    def round(self):
        """On the model thread. A stream that is done (its final or its error sent) leaves the round."""
        self.queued = False
        # A copy of the set, taken at once: the event loop opens and closes streams while the round runs.
        entries = [entry for entry in self.entries.copy() if not entry.stream.finished]
        arrived, ending = [], []
        for entry in entries:
            pieces, ended = drain(entry.inbox)
            if pieces and not entry.stream.ended:
                arrived.append((entry.stream, np.concatenate(pieces)))
            if ended and not entry.stream.ended:
                ending.append(entry.stream)
        accept_audio(arrived)  # every stream's new features at once: a call each was a fifth of a round, 128 streams
        for stream in ending:
            stream.end()
        streams = [entry.stream for entry in entries]
        finished = {id(stream): finals for stream, finals in recognize(self.model, streams, look_ahead=False)}
        for entry in entries:
            self.report(entry, finished.get(id(entry.stream), []))
        # then the segments that the chunks under way end (`look_ahead_at`), after the partials, which they would delay
        looked_at = {id(entry.stream): entry for entry in entries}
        for stream, finals in look_ahead_at(self.model, streams):
            if finals or stream.failure is not None:
                self.report(looked_at[id(stream)], finals)

    def report(self, entry, finals):
        """A partial when the stream has new frames (its `duration`: the audio they cover), its new segments, and
        the final once it has ended (an error if the model failed on it)."""
        if (failure := entry.stream.failure) is not None:
            log.error(f"a live stream failed: {type(failure).__name__}: {failure}")
            return entry.post(
                {"type": "error", "error": {"message": f"the model failed on the stream: {failure}", "code": 500}}
            )
        seconds = round(entry.stream.decoder.frames * self.model.frame_seconds, 3)
        if seconds == entry.reported and not entry.stream.finished:
            return
        entry.reported = seconds
        for final in finals:
            entry.finals.append(final)
            entry.post({"type": "segment", **final})
        if entry.stream.finished:
            words = [word for final in entry.finals for word in final["words"]]
            text = " ".join(final["text"] for final in entry.finals if final["text"])
            segments = [{k: f[k] for k in ("start", "end", "text")} for f in entry.finals]
            duration = round(entry.samples / self.model.backend.sampling_rate, 3)
            entry.post({"type": "final", "text": text, "words": words, "segments": segments, "duration": duration})
        else:
            texts = [final["text"] for final in entry.finals] + [entry.stream.partial()["text"]]
            entry.post({"type": "partial", "text": " ".join(t for t in texts if t), "duration": seconds})

    def fail(self, error):
        """Every open stream gets the error (a round failed, or the worker stopped)."""
        self.queued = False
        for entry in list(self.entries):
            entry.stream.fail(error)
            entry.post({"type": "error", "error": {"message": str(error), "code": 500}})


class ChunkedLiveStream(LiveStream):
    """A live stream of a streaming model: each piece of audio is computed once, chunk by chunk, on the model
    thread (`LiveStreams`); a partial after every chunk, a `segment` at every endpoint, and at the end the final
    transcript of the segments. The limits of `LiveStream` hold (--max_streams, --stream_idle_s, --max_audio_s)."""

    def __init__(self, websocket, service):
        super().__init__(websocket, service)
        self.events, self.received, self.odd, self.ended = asyncio.Queue(), 0, b"", False

    def add(self, data: bytes):
        if self.ended:  # the server is stopping: the final is of what came before
            return
        self.received += len(data)
        data, self.odd = self.odd + data, b""
        if len(data) % 2:
            data, self.odd = data[:-1], data[-1:]
        if data:
            self.service.live.heard(self.entry, np.frombuffer(data, "<i2").astype(np.float32) / 32768)

    def audio_bytes(self) -> int:
        return self.received

    async def transcribe(self, receiver) -> str:
        """Events from the model thread until the final; the stream's status."""
        live = self.service.live
        self.entry = live.open(self.events.put_nowait)
        stopping = asyncio.ensure_future(self.service.stopping.wait())
        try:
            while (event := await self.next_event(receiver, stopping)) is None or event["type"] not in (
                "final",
                "error",
            ):
                if event is not None:
                    await self.websocket.send_json(event)
        finally:
            stopping.cancel()
            if getattr(self, "getter", None) is not None:
                self.getter.cancel()
            live.close(self.entry)
        await self.websocket.send_json(event)
        if event["type"] == "error":
            await self.websocket.close(1011)
            return "error 500"
        self.service.metrics.audio.inc(self.received / 2 / self.service.rate)
        await self.websocket.close(GOING_AWAY if stopping.done() and not receiver.done() else 1000)
        return "final"

    async def next_event(self, receiver, stopping) -> dict | None:
        """The model thread's next event for this stream, or None after a second without one. Until the stream
        has ended (its end message, or the server stopping) it also watches the client: an error in what it sent
        is raised, and a client silent for --stream_idle_s is closed."""
        waiting = {self.events_getter()} | (set() if self.ended else {receiver, stopping})
        await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        if not self.ended and (receiver.done() or stopping.done()):
            if receiver.done():
                receiver.result()  # an error in the stream is raised here
            self.ended = True
            self.service.live.heard(self.entry, None)
        if not self.ended and time.monotonic() - self.last_message > self.args.stream_idle_s:
            idle = self.args.stream_idle_s
            raise ApiError(408, f"nothing arrived for {idle:g} s (--stream_idle_s): the stream is closed")
        return self.getter.result() if self.getter.done() else None

    def events_getter(self):
        """The pending `events.get()`, kept across waits so that no event is lost to a cancelled get."""
        if getattr(self, "getter", None) is None or self.getter.done():
            self.getter = asyncio.ensure_future(self.events.get())
        return self.getter
