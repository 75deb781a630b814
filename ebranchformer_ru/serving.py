"""An OpenAI-compatible transcription server with dynamic batching, live transcription over a WebSocket, and a
page to try it: the app that `ebranchformer-serve` runs (`ebranchformer_ru.commands.serve`, whose --help lists the
endpoints).

    ebranchformer-serve outputs/mini --port 8000
    curl -F file=@speech.wav -F model=mini http://127.0.0.1:8000/v1/audio/transcriptions

`make_app(args)` is the Starlette app of the command's parsed options (`Service` loads the model; the lifespan
runs its worker); uvicorn serves it. MODEL is a model folder (PyTorch, `--device`) or an `export_onnx.py`
folder (ONNX Runtime).

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
import io
import json
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .audio import LOUD, read_audio
from .formats import render, subtitle_cues
from .inference import InferenceError, LMDecoder, Transcriber, load_backend, load_lm_decoder

try:  # the `serve` extra; --help and the package import work without it
    import uvicorn  # noqa: F401 (the extra's server, run by the command: checked with the rest)
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocketDisconnect
except ImportError as error:
    MISSING = error
else:
    MISSING = None

log = logging.getLogger("ebranchformer_ru.serving")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]")
LANGUAGES = ("ru", "russian")
PARTIAL_EVERY = 0.5  # seconds between live partial transcripts
PAGE = Path(__file__).with_name("serving_page.html")
# A forward pass's fixed work in seconds of padded audio (`length_batches`): on 2 CPU cores outputs/mini takes
# about 16 ms + 3.6 ms per second of audio (16 x 3 s: 190 ms), so ~4 s; a GPU is not measured here, so its
# batches are cut by --max_batch_size alone, as transcribe.py's are.
FORWARD_COST_S = {"cpu": 4.0, "cuda": None}


class ApiError(Exception):
    """An HTTP error with OpenAI's JSON body {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status, message, param=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers

    def response(self):
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------------- batching


class Job:
    """One recording waiting for the model; `future` gets its record {"text", "words"} or an exception.
    `samples`: an array, or a function that decodes an upload into one (called by `Batcher.decode`)."""

    def __init__(self, samples, decoder, loop):
        self.samples, self.decoder, self.loop = samples, decoder, loop
        self.future = loop.create_future()
        self.queued = time.monotonic()
        self.started = self.finished = None
        self.abandoned = False  # its client left before the worker took it: skipped


class Batcher:
    """Dynamic batching: one worker thread owns the model and takes what requests have queued, up to
    `max_batch_size` recordings; an idle model waits at most `max_wait_ms` for the requests on their way;
    `Transcriber.log_probs` chunks long ones and cuts their pieces, sorted by length, into forward passes of
    similar lengths (`length_batches`). At most `max_queue` recordings are admitted (waiting or in the model).
    Uploads are decoded by `decode_threads` threads between forward passes (`decode`)."""

    def __init__(self, transcriber, max_batch_size, max_wait_ms, max_queue, decode_threads=1):
        self.transcriber, self.max_batch_size, self.max_queue = transcriber, max_batch_size, max_queue
        self.decoding = ThreadPoolExecutor(decode_threads, thread_name_prefix="asr-decode")
        self.max_wait = max_wait_ms / 1000
        self.jobs = queue.Queue()
        self.admitted = 0  # changed on the event loop only
        self.arriving = 0  # requests being received (changed on the event loop, read by the worker)
        self.batch_sizes = collections.deque(maxlen=10000)  # recordings per recent batch (for tests)
        self.worker = threading.Thread(target=self.run, name="asr-model", daemon=True)

    def start(self):
        self.worker.start()

    def stop(self):
        """After what is queued: the worker finishes it, then exits."""
        self.jobs.put(None)
        self.worker.join()
        self.decoding.shutdown()

    async def transcribe(self, samples, decoder=None, gone=None, arrival=None) -> Job:
        """The finished job of `samples`; `gone`, an awaitable that completes when the client leaves, frees the
        place at once (the job is skipped if the worker has not taken it) and raises ClientGone; `arrival`, the
        request's `Arrival`, ends when the job is queued."""
        if self.admitted >= self.max_queue:
            raise ApiError(
                503,
                f"the server is busy: {self.admitted} recordings queued (--max_queue {self.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )
        job = Job(samples, decoder, asyncio.get_running_loop())
        self.admitted += 1
        try:
            self.jobs.put(job)
            if arrival is not None:
                arrival.end()
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
        while True:
            # Requests that queued while the model was busy run at once (waiting would only idle the model); one
            # that finds the model idle waits up to max_wait, while requests are being received, for
            # them to share its forward pass, never for requests that may not come.
            idle = self.jobs.empty()  # before the blocking get: was anything queued while the model was busy?
            if (job := self.jobs.get()) is None:
                break
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
            batch = [j for j in batch if not j.abandoned]
            if batch:
                self.batch_sizes.append(len(batch))
                self.process(batch)

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
        return [job for job in batch if job not in failed]

    def process(self, batch):
        started = time.monotonic()
        if not (batch := self.decode(batch)):
            return
        try:
            outputs = self.transcriber.log_probs([j.samples for j in batch])
        except Exception as error:
            if len(batch) > 1:
                for job in batch:
                    self.process([job])
                return
            outputs = [error]
        for job, output in zip(batch, outputs):
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


async def read_form(request, limit_bytes):
    """The multipart form, refusing (413) a body over the upload limit while it arrives, before it is all read."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "the body must be multipart/form-data with the audio in `file` (OpenAI's audio API)")
    slack = 1 << 20  # the form's other fields and boundaries
    if int(request.headers.get("content-length") or 0) > limit_bytes + slack:
        raise ApiError(
            413,
            f"the upload is {int(request.headers['content-length']) / 2**20:.2f} MiB, over the "
            f"limit of {limit_bytes / 2**20:g} MiB (--max_upload_mb)",
            "file",
        )

    async def limited():
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit_bytes + slack:
                raise ApiError(
                    413, f"the upload is over the limit of {limit_bytes / 2**20:g} MiB (--max_upload_mb)", "file"
                )
            yield chunk

    try:
        return await MultiPartParser(request.headers, limited(), max_files=1, max_fields=len(FIELDS) + 4).parse()
    except MultiPartException as error:
        raise ApiError(400, f"the multipart form cannot be read: {error.message}") from None


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
            self.backend = loader.submit(
                load_backend, args.model, args.device, args.threads, args.quantized, args.trust_remote_code
            ).result()
        self.decoder = load_lm_decoder(args.model, hotword_weight=args.hotword_weight) if args.decoder == "lm" else None
        # Word times always: srt, vtt and verbose_json need them, and they never change the text.
        transcriber = Transcriber(
            self.backend,
            args.max_batch_size,
            args.chunk_length_s,
            args.stride_length_s,
            timestamps=True,
            decoder=self.decoder,
            forward_cost_s=FORWARD_COST_S[args.device],
        )
        decode_threads = min(args.max_batch_size, args.threads or os.cpu_count() or 1)
        self.batcher = Batcher(transcriber, args.max_batch_size, args.max_wait_ms, args.max_queue, decode_threads)
        self.rate = self.backend.sampling_rate

    async def transcribe(self, samples, decoder=None) -> dict:
        """The record {"text", "words"} of `samples`, through the batcher."""
        return (await self.batcher.transcribe(samples, decoder)).future.result()

    def request_decoder(self, prompt):
        """The decoder of a request: `prompt`'s words are hotwords for this request (LM folders only)."""
        if not prompt or not prompt.strip():
            return self.decoder
        if self.decoder is None:
            raise ApiError(
                400,
                "`prompt` carries hotwords, which need beam search with a language model: start the "
                "server with --decoder lm on a folder with language_model/ (build_lm.py)",
                "prompt",
            )
        try:
            return LMDecoder(self.decoder.decoder, **{**self.decoder.options, "hotwords": prompt.split()})
        except InferenceError as error:
            raise ApiError(400, f"prompt: {error}", "prompt") from None

    def samples(self, data: bytes, name: str) -> np.ndarray:
        """Decoded upload: 415 with the decoder's reason when it is no audio it reads, 400 when it is audio but
        not 16 kHz mono finite speech audio, 413 when longer than --max_audio_s."""
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
            log.warning(f"{name}: float samples peak at {peak:g}, far above 1: integer PCM stored as floats?")
        return samples


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
    temperature = form.get("temperature")
    try:
        if temperature is not None and float(temperature) != 0:
            raise ValueError
    except ValueError:
        raise ApiError(
            400,
            f"temperature {temperature!r}: decoding is deterministic here (greedy or beam search); only 0 is taken",
            "temperature",
        ) from None
    granularities = form.getlist("timestamp_granularities[]")
    if bad := [g for g in granularities if g not in ("segment", "word")]:
        raise ApiError(400, f"timestamp_granularities[] {bad[0]!r}: segment or word", "timestamp_granularities[]")
    if granularities and response_format != "verbose_json":
        raise ApiError(400, "timestamp_granularities[] needs response_format verbose_json", "timestamp_granularities[]")
    return {
        "upload": upload,
        "format": response_format,
        "words": "word" in granularities,
        "decoder": service.request_decoder(form.get("prompt")),
    }


def respond(record, fields, seconds):
    """The response in the requested format; srt and vtt are what `transcribe.py --output x.srt` writes."""
    text, words = record["text"], record["words"]
    if fields["format"] == "json":
        return JSONResponse({"text": text})
    if fields["format"] == "text":
        return PlainTextResponse(text)
    if fields["format"] in ("srt", "vtt"):
        return PlainTextResponse(render([record], "." + fields["format"]))
    segments = [
        {"id": n, "seek": 0, "start": start, "end": end, "text": cue, "tokens": [], "temperature": 0.0}
        for n, (start, end, cue) in enumerate(subtitle_cues(words))
    ]
    body = {"task": "transcribe", "language": "russian", "duration": seconds, "text": text, "segments": segments}
    if fields["words"]:
        body["words"] = words
    return JSONResponse(body)


# ---------------------------------------------------------------------------------------------- the app


def make_app(args, service=None):
    """The Starlette app of a parsed command line; the model worker runs while the app does (lifespan)."""
    if MISSING is not None:
        raise InferenceError(f"the server needs the `serve` extra: pip install '.[serve]' ({MISSING})")
    service = service or Service(args)
    limit = int(args.max_upload_mb * 2**20)

    async def transcriptions(request):
        rid, begun, audio, job = uuid.uuid4().hex[:12], time.monotonic(), 0.0, None
        try:
            with Arrival(service.batcher) as arrival:
                form = await read_form(request, limit)
                fields = parse_fields(form, service)
                upload = fields["upload"]
                if upload.size is not None and upload.size > limit:
                    raise ApiError(
                        413,
                        f"{upload.filename}: {upload.size / 2**20:.2f} MiB, over the limit of "
                        f"{args.max_upload_mb:g} MiB (--max_upload_mb)",
                        "file",
                    )
                decode = functools.partial(service.samples, await upload.read(), upload.filename or "file")
                # Once the body is read, the next ASGI message is the client's disconnect, if it leaves.
                gone = asyncio.ensure_future(request.receive())
                try:
                    job = await service.batcher.transcribe(decode, fields["decoder"], gone, arrival)
                finally:
                    gone.cancel()
                audio = round(len(job.samples) / service.rate, 3)
            response = respond(job.future.result(), fields, audio)
        except ApiError as error:
            response = error.response()
        except (ClientGone, ClientDisconnect):
            response = PlainTextResponse("client disconnected", 499)  # nobody reads it; logged as such
        except InferenceError as error:
            response = ApiError(500, f"the model failed on this recording: {error}").response()
        except Exception as error:
            log.exception(f"request {rid} failed")
            response = ApiError(500, f"{type(error).__name__}: {error}").response()
        response.headers["X-Request-Id"] = rid
        queued = (job.started - job.queued) if job and job.started else 0.0
        in_model = (job.finished - job.started) if job and job.started else 0.0
        log.info(
            f"request {rid} status={response.status_code} duration={time.monotonic() - begun:.3f}s "
            f"audio={audio:.2f}s queue={queued:.3f}s model={in_model:.3f}s"
        )
        return response

    async def models(request):
        created = int(os.stat(args.model).st_mtime)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": service.model_id, "object": "model", "created": created, "owned_by": "ebranchformer_ru"}
                ],
            }
        )

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def ready(request):
        batcher = service.batcher
        body = {"queued": batcher.admitted, "max_queue": batcher.max_queue}
        if not batcher.worker.is_alive():
            return JSONResponse({"status": "model worker not running", **body}, 503)
        if batcher.admitted >= batcher.max_queue:
            return JSONResponse({"status": "busy", **body}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", **body})

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def stream(websocket):
        await live(websocket, service)

    def lifespan(app):
        class Lifespan:
            async def __aenter__(self):
                service.batcher.start()

            async def __aexit__(self, *exc):  # after uvicorn has finished the requests in flight
                await asyncio.get_running_loop().run_in_executor(None, service.batcher.stop)

        return Lifespan()

    routes = [
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/ready", ready),
        Route("/", page),
        WebSocketRoute("/v1/audio/stream", stream),
    ]

    async def http_error(request, error):  # an unknown path or method: JSON that names it, as every other error
        return ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}").response()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app


# ---------------------------------------------------------------------------------------------- live audio


async def live(websocket, service, window_s=None):
    """Live transcription: PCM arrives as it is recorded; every PARTIAL_EVERY seconds the recent audio (the last
    --stream_window_s at most; words before it are kept as decoded) is decoded again and sent as a partial; at
    the end the whole stream is transcribed as an uploaded file would be, and sent as the final transcript."""
    window = int((window_s or service.args.stream_window_s) * service.rate)
    limit = int(service.args.max_audio_s * service.rate) * 2
    pcm = bytearray()
    await websocket.accept()

    async def receive():
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            if message.get("bytes") is not None:
                if len(pcm) + len(message["bytes"]) > limit:
                    raise ApiError(
                        413, f"the stream is over the limit of {service.args.max_audio_s:g} s (--max_audio_s)"
                    )
                pcm.extend(message["bytes"])
            elif message.get("text") is not None:
                try:
                    end = json.loads(message["text"]).get("type") == "end"
                except (ValueError, AttributeError):
                    end = False
                if not end:
                    raise ApiError(
                        400,
                        f"unknown text message {message['text'][:80]!r}; send audio as binary "
                        'messages and {"type": "end"} at the end',
                    )
                if len(pcm) % 2:
                    raise ApiError(400, "the stream ends with half a sample: send 16-bit PCM (2 bytes a sample)")
                return

    def samples(start=0, end=None):
        end = len(pcm) // 2 if end is None else end
        return np.frombuffer(bytes(pcm[start * 2 : end * 2]), "<i2").astype(np.float32) / 32768

    receiver = asyncio.create_task(receive())
    rid, begun, status = uuid.uuid4().hex[:12], time.monotonic(), "gone"
    committed, start, heard, text = [], 0, 0, ""  # heard: the samples that `text` transcribes
    loop = asyncio.get_running_loop()
    next_partial = loop.time() + PARTIAL_EVERY
    try:
        while True:
            await asyncio.wait({receiver}, timeout=max(0.0, next_partial - loop.time()))
            if receiver.done():
                break
            next_partial += PARTIAL_EVERY
            received = len(pcm) // 2
            if received - start >= service.rate // 10 and received != heard:  # new audio: decode the recent
                start = max(start, received - window)  # audio came faster than partials: they skip some, the final not
                recent = samples(start, received)
                try:
                    words = (await service.transcribe(recent, service.decoder))["words"]
                except ApiError as error:  # a full queue: this partial repeats the last one
                    if error.status != 503:
                        raise
                else:
                    heard, offset = received, start / service.rate
                    words = [
                        {**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)} for w in words
                    ]
                    if len(recent) > window // 2:  # keep the words of the older half; decode again after them
                        keep_before = (received - window // 2) / service.rate
                        done = [w for w in words if w["end"] < keep_before]
                        committed += done
                        words = words[len(done) :]
                        start = int(done[-1]["end"] * service.rate) if done else received - window // 2
                    text = " ".join(w["word"] for w in committed + words)
            await websocket.send_json({"type": "partial", "text": text, "duration": round(heard / service.rate, 3)})
        receiver.result()  # an error in the stream is raised here
        audio = samples()
        if not len(audio):
            raise ApiError(400, "the stream held no audio")
        record = await service.transcribe(audio, service.decoder)
        await websocket.send_json(
            {
                "type": "final",
                "text": record["text"],
                "words": record["words"],
                "duration": round(len(audio) / service.rate, 3),
            }
        )
        await websocket.close()
        status = "final"
    except ApiError as error:
        status = f"error {error.status}"
        await websocket.send_json({"type": "error", "error": {"message": error.message, "code": error.status}})
        await websocket.close(1008 if error.status < 500 else 1011)
    except (ClientGone, WebSocketDisconnect):
        pass
    finally:
        receiver.cancel()
        log.info(
            f"stream {rid} status={status} duration={time.monotonic() - begun:.3f}s "
            f"audio={len(pcm) // 2 / service.rate:.2f}s"
        )
