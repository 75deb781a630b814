"""Serve a model over HTTP: OpenAI's transcription API with dynamic batching, live audio over a WebSocket, and a
page to try it.

    ebranchformer-serve outputs/mini --port 8000
    ebranchformer-serve outputs/mini_onnx --quantized --host 0.0.0.0
    curl -F file=@speech.wav -F model=mini http://127.0.0.1:8000/v1/audio/transcriptions

MODEL is a model folder (PyTorch, --device) or an ebranchformer-export-onnx folder (ONNX Runtime). Endpoints:

    POST /v1/audio/transcriptions   OpenAI's audio API: multipart `file`, `model`, `response_format` (json, text,
                                    srt, vtt, verbose_json), `timestamp_granularities[]` (segment, word),
                                    `language` (ru), `prompt` (hotwords, with --decoder lm), `temperature` (0)
    GET  /v1/models                 the one model served (its id is the folder's name)
    GET  /health, /ready            the process is up; it takes requests (503 while the queue is full)
    GET  /metrics                   Prometheus metrics (--metrics false: none)
    WS   /v1/audio/stream           live audio: binary messages of 16 kHz mono 16-bit little-endian PCM, then the
                                    text message {"type": "end"}; partial transcripts every 0.5 s, then a final one
    GET  /                          a page to try it: upload a file or record from the microphone

Requests that arrive together run as one batch (at most --max_batch_size recordings), and a response is what
ebranchformer-transcribe gives for the same file. Uploads must be 16 kHz mono (WAV, FLAC, Ogg/Opus, MP3); the
page converts in the browser. SIGTERM stops accepting, gives each live stream the final transcript of what it sent,
answers the requests in flight and stops within --shutdown_timeout_s (uploads still arriving after half of it are
cut). With --api_key, every endpoint but /health and the page needs `Authorization: Bearer KEY`. On a public port
(--host 0.0.0.0): docs/deployment.md.
"""

import functools
import logging

from ebranchformer_ru import serving
from ebranchformer_ru.errors import UsageError

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a model folder (PyTorch) or an ebranchformer-export-onnx folder (ONNX Runtime)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch_size", type=cli.positive_int, default=16, help="recordings (or chunks) per batch")
    parser.add_argument(
        "--max_wait_ms",
        type=float,
        default=20.0,
        help="how long a request that finds the model idle waits for those being received",
    )
    parser.add_argument(
        "--max_audio_s", type=cli.positive_float, default=600.0, help="longer uploads and streams are refused"
    )
    parser.add_argument(
        "--max_upload_mb", type=cli.positive_float, default=25.0, help="larger uploads are refused (OpenAI's)"
    )
    parser.add_argument(
        "--max_queue",
        type=cli.positive_int,
        default=256,
        help="recordings admitted at once; more get 503 with Retry-After",
    )
    cli.add_device(parser)
    cli.add_threads(parser)
    cli.add_dtype(parser)
    cli.add_torch_compile(parser)
    cli.add_switch(parser, "quantized", "ONNX export only: run the int8 model")
    cli.add_decoder(parser, help="; with lm, a request's `prompt` carries hotwords")
    parser.add_argument("--hotword_weight", type=float, default=None, help="--decoder lm: bonus per hotword")
    parser.add_argument(
        "--chunk_length_s", type=cli.positive_float, default=30.0, help="uploads longer than this are cut into chunks"
    )
    parser.add_argument(
        "--stride_length_s", type=float, default=None, help="the chunks' overlap on each side (default chunk / 6)"
    )
    parser.add_argument(
        "--stream_window_s",
        type=cli.positive_float,
        default=20.0,
        help="live audio: the recent audio decoded again for each partial transcript",
    )
    cli.add_switch(
        parser, "vad", "cut uploads where people pause (Silero's VAD): verbose_json segments are its segments"
    )
    parser.add_argument(
        "--vad_threshold", type=cli.positive_float, default=0.5, help="--vad: speech probability threshold (0.5)"
    )
    parser.add_argument(
        "--vad_max_segment_s", type=cli.positive_float, default=25.0, help="--vad: longest segment (25 s)"
    )
    cli.add_streaming(parser)
    cli.add_switch(parser, "itn", "numbers as digits by default (the itn extra); a request's `itn` field chooses")
    parser.add_argument("--itn_cache_dir", default=None, help="--itn: where its compiled grammars are kept")
    add_access(parser)
    add_limits(parser)
    cli.add_trust_remote_code(parser)
    return parser


def add_access(parser):
    group = parser.add_argument_group("access")
    group.add_argument(
        "--api_key",
        action="append",
        metavar="KEY",
        help="require `Authorization: Bearer KEY` (repeat for several keys; also --api_key_file, EBRANCHFORMER_API_KEY)",
    )
    group.add_argument("--api_key_file", metavar="PATH", help="a file of API keys, one a line")
    group.add_argument(
        "--allowed_origins",
        type=cli.names,
        metavar="ORIGIN[,ORIGIN...]",
        help="web pages (https://host:port) that may call the API and open live streams, besides the server's own",
    )
    group.add_argument(
        "--allowed_hosts",
        type=cli.names,
        metavar="NAME[,NAME...]",
        help="Host names the server answers to (default: with a loopback --host, 127.0.0.1, localhost and ::1 only, "
        "against DNS rebinding; otherwise any)",
    )
    group.add_argument(
        "--metrics",
        type=cli.string_to_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="serve Prometheus metrics at /metrics (default true)",
    )


def add_limits(parser):
    group = parser.add_argument_group("limits against slow or hostile clients (docs/deployment.md)")
    seconds = functools.partial(group.add_argument, type=cli.positive_float, metavar="S")
    seconds(
        "--read_timeout_s", default=10.0, help="a request head, or the next part of an upload, must come within this"
    )
    seconds("--upload_timeout_s", default=120.0, help="an upload must be complete within this (408 after)")
    seconds("--keep_alive_s", default=5.0, help="an idle connection is closed after this")
    seconds("--shutdown_timeout_s", default=20.0, help="SIGTERM: the process stops within this")
    seconds("--stream_idle_s", default=10.0, help="a live stream that sends nothing for this is closed")
    group.add_argument(
        "--max_connections",
        type=cli.positive_int,
        default=None,
        help=f"open connections (default: the open-files limit, raised to the hard limit, less {serving.RESERVED_FILES})",
    )
    group.add_argument(
        "--max_streams",
        type=cli.positive_int,
        default=16,
        help="live streams at once (each holds up to --max_audio_s of PCM)",
    )


def serve(args):
    if not args.max_wait_ms >= 0:  # 0: a request never waits for others
        raise UsageError(f"--max_wait_ms must be 0 or a positive number, got {args.max_wait_ms}")
    if args.hotword_weight is not None and args.decoder != "lm":
        raise UsageError("--hotword_weight needs --decoder lm")
    if args.vad and not (0 < args.vad_threshold < 1 and 1 <= args.vad_max_segment_s <= args.chunk_length_s):
        raise UsageError(
            f"--vad_threshold must be between 0 and 1 (got {args.vad_threshold:g}) and --vad_max_segment_s from 1 s "
            f"to --chunk_length_s {args.chunk_length_s:g} (got {args.vad_max_segment_s:g})"
        )
    if args.streaming and args.torch_compile:  # live streams run chunk steps, which it does not compile
        raise UsageError(
            "--torch_compile compiles the whole-recording forward, not --streaming's chunk steps: leave out one"
        )
    if args.streaming:
        try:
            serving.Service.endpointing(args)
        except serving.StreamingError as error:
            raise UsageError(str(error)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(serving.RateLimitedLog())
    app = serving.make_app(args)  # loads the model: a folder that is none is an error before anything is served
    keys = "API keys required" if serving.api_keys(args) else "no API key"
    if args.host not in ("127.0.0.1", "localhost", "::1") and not serving.api_keys(args):
        serving.log.warning(f"--host {args.host} without --api_key: anyone who reaches the port may use the server")
    serving.log.info(
        f"serving {args.model} as {app.state.service.model_id!r} on http://{args.host}:{args.port}/ ({keys})"
    )
    # SIGTERM/SIGINT (serving.Server): stop accepting, the live streams' finals, the requests in flight, then the
    # lifespan's exit lets the worker finish its queue, and the process ends by the signal.
    serving.server(app, args).run()


def main(argv=None) -> int:
    return cli.run(build_parser(), serve, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
