"""Streaming: the WER of a streaming model at full context and in chunks, the cost of a chunk step along a stream,
and the latency of live streams served by `serve.py --streaming` at 1 to 128 concurrent real-time streams.

1. WER on the embedded test sets (crowd, farfield, heldout_voice; 180 utterances) of STREAMING_MODEL at full context
   and with attention in chunks of --chunk_ms (greedy; the chunk-masked forward, which the cached chunk step
   equals within 1e-5, tests/test_streaming.py), beside --full_model (the main job's model) at full context.
2. The cost of a chunk step in the first and in the last second of a 60 s stream (the model alone, float32; median
   of the full chunks' steps of that second over --rounds rounds, each after a warm-up): with attention to a bounded
   number of earlier chunks, they should be equal. Then what a round of the server's model thread costs for the
   largest of --streams when all of them have a chunk ready, for each of --dtypes (`round_costs`).
3. Live streams: `serve.py STREAMING_MODEL --streaming --threads 2` in a process of its own; N clients each stream
   --stream_s seconds of the embedded crowd recordings (with 1 s pauses between them; each client from its own
   place in them, the places spread evenly) in real time, 0.1 s a message, all from the same instant or spread evenly
   over one chunk (--starts: together, the worst case, where every round steps every stream; spread, as independent
   speakers would): partials received (one a chunk, and one more at each segment ended by a look ahead), their lag
   behind the audio (arrival - start - the audio they cover), the delay of each segment behind its endpoint (the
   stream time at which the endpoint rule fired) and behind the end of the chunk in which it fell (negative where
   a look ahead ended it before the chunk was complete, `streaming.look_ahead_at`), and the final transcript's delay
   after the end of the audio.

    python benchmarks/streaming.py outputs/streaming --full_model outputs/mini
    python benchmarks/streaming.py outputs/streaming --streams 1 4 --stream_s 10 --skip_wer   # smoke run
    python benchmarks/streaming.py outputs/streaming --skip_wer --streams 128 --dtypes float32 auto

Run it alone: the figures are this machine's (its CPU is printed), and the clients share its cores.
"""

import argparse
import functools
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import jiwer
import numpy as np
import requests
from common import ROOT, machine, table

from ebranchformer_ru.audio import read_audio
from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.inference import TorchBackend, Transcriber, decode_all, load_test_sets, set_log_probs
from ebranchformer_ru.streaming import ChunkModel, Endpointing, accept_audio, recognize

SETS = ("crowd", "farfield", "heldout_voice")


def wer_table(folder, chunks_ms, full_model=None) -> str:
    rows = []
    for name, path, settings in [(folder, folder, [None, *chunks_ms])] + (
        [(full_model, full_model, [None])] if full_model else []
    ):
        backend = TorchBackend.from_folder(path, threads=2)
        frame_ms = round(1000 * backend.samples_per_frame / backend.sampling_rate)
        tests = load_test_sets(EMBEDDED_CORPUS, SETS, backend.processor.tokenizer)
        for chunk_ms in settings:
            backend.model.config.streaming_chunk_size = None if chunk_ms is None else chunk_ms // frame_ms
            transcriber = Transcriber(backend, batch_size=16)
            wers = {}
            for set_name, (dataset, _) in tests.items():
                hypotheses = decode_all(transcriber, set_log_probs(transcriber, dataset))
                wers[set_name] = 100 * jiwer.wer(list(dataset["text"]), hypotheses)
            label = "full context" if chunk_ms is None else f"{chunk_ms} ms chunks"
            rows.append([name, label, *(f"{wers[s]:.1f}" for s in SETS), f"{statistics.mean(wers.values()):.1f}"])
            print(rows[-1], flush=True)
    return table(["model", "attention", *SETS, "mean"], rows)


@functools.cache
def crowd_audio() -> np.ndarray:
    """The embedded crowd recordings joined, 1 s of silence after each."""
    files = sorted((EMBEDDED_CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))
    return np.concatenate([piece for path in files for piece in (read_audio(path), np.zeros(16000, np.float32))])


def client_starts(count) -> list[float]:
    """Where in `crowd_audio()` each of `count` live streams starts, spread evenly: speakers apart pause apart (when
    every client sent the same audio, all their endpoints fell in the same chunk step)."""
    return [stream * len(crowd_audio()) / 16000 / count for stream in range(count)]


def recording(seconds, start=0.0) -> np.ndarray:
    """`seconds` of `crowd_audio()` from `start` seconds into it, going round to its beginning at its end."""
    audio = crowd_audio()
    return np.resize(np.roll(audio, -int(start * 16000)), int(seconds * 16000))  # resize repeats it


def step_costs(folder, rounds) -> str:
    """Median time of the full chunk steps in the first and in the last second of a 60 s stream (float32). Each
    round first steps another stream for a few chunks: after an idle moment the model's second thread takes
    ~0.1 s to come up to speed (with 2 threads a stream's first steps ran twice as long, with 1 thread not), which is
    not what a step costs along the stream."""
    model = ChunkModel(TorchBackend.from_folder(folder, threads=2))
    stream = model.stream(Endpointing())
    stream.accept(recording(60))
    stream.end()
    chunks = []
    while (chunk := stream.next_chunk()) is not None:
        chunks += [chunk] if len(chunk) == model.chunk_frames else []  # not the last, shorter one
    chunk_s = model.chunk_size * model.frame_seconds
    count = math.ceil(1 / chunk_s)  # the steps of a second
    first, last = [], []
    for _ in range(rounds):
        warm = model.stream(Endpointing()).state
        for chunk in chunks[:5]:
            _, (warm,) = model.step([chunk], [warm])
        state, times = model.stream(Endpointing()).state, []
        for chunk in chunks:
            began = time.perf_counter()
            _, (state,) = model.step([chunk], [state])
            times.append(time.perf_counter() - began)
        first, last = first + times[:count], last + times[-count:]
    ends = f"{(len(chunks) - count) * chunk_s:.1f}-{len(chunks) * chunk_s:.1f} s"
    return table(
        ["chunk", f"steps at 0-{count * chunk_s:.2f} s", f"steps at {ends}", "ratio"],
        [
            [
                f"{round(chunk_s * 1000)} ms",
                f"{1000 * statistics.median(first):.2f} ms",
                f"{1000 * statistics.median(last):.2f} ms",
                f"{statistics.median(last) / statistics.median(first):.2f}",
            ]
        ],
    )


def round_costs(folder, count, dtypes, rounds=20) -> str:
    """What a round of the server's model thread costs with `count` live streams, each with its own audio, when every
    one has its next chunk: their audio framed together and their chunks stepped together (`accept_audio`,
    `recognize`: the caches stacked, the model, the decoding), as `LiveStreams.round` does. A partial's lag is at
    least this. Median and spread over `rounds` rounds, after 5 to warm up."""
    rows = []
    for dtype in dtypes:
        model = ChunkModel(TorchBackend.from_folder(folder, threads=2, dtype=dtype))
        piece = model.chunk_frames * model.features.hop_length  # a chunk's samples
        seconds = (rounds + 6) * piece / 16000
        audio = [recording(seconds, start) for start in client_starts(count)]
        streams, times = [model.stream(Endpointing()) for _ in range(count)], []
        for n in range(rounds + 5):
            began = time.perf_counter()
            accept_audio([(stream, samples[n * piece : (n + 1) * piece]) for stream, samples in zip(streams, audio)])
            recognize(model, streams, look_ahead=False)  # as the server: a round's chunks before its look aheads
            times.append(time.perf_counter() - began)
        times = times[5:]
        spread = f"{1000 * min(times):.0f}-{1000 * max(times):.0f} ms"
        rows.append([count, dtype, f"{round(piece / 16)} ms", f"{1000 * statistics.median(times):.0f} ms", spread])
    return table(["streams", "--dtype", "audio a round", "a round (median)", "spread"], rows)


def serve(folder, port, dtype):
    command = [sys.executable, str(ROOT / "serve.py"), folder, "--streaming", "--threads", "2", "--port", str(port)]
    command += ["--max_streams", "256", "--dtype", dtype]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, cwd=ROOT)
    for _ in range(1200):
        try:
            if requests.get(f"http://127.0.0.1:{port}/ready", timeout=1).ok:
                return process
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"serve.py {folder} --streaming did not start")


def live(port, seconds, audio_start, start_at, chunk_s) -> dict:
    """One real-time stream of `recording(seconds, audio_start)`; what its client measured."""
    from websockets.sync.client import connect

    samples = recording(seconds, audio_start)
    pcm, end_s = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes(), len(samples) / 16000
    del samples  # 128 clients' float copies took 0.5 GB beside the server
    lags, delays, after_chunk, final = [], [], [], {}
    with connect(f"ws://127.0.0.1:{port}/v1/audio/stream", open_timeout=60, max_size=None) as ws:
        time.sleep(max(0.0, start_at - time.monotonic()))
        begun = time.monotonic()

        def receive():
            for message in ws:
                event, now = json.loads(message), time.monotonic()
                if event["type"] == "partial":
                    lags.append(now - begun - event["duration"])
                elif event["type"] == "segment":
                    delays.append(now - begun - event["endpoint"])
                    endpoint_chunk_end = math.ceil(event["endpoint"] / chunk_s - 1e-6) * chunk_s
                    after_chunk.append(now - begun - min(endpoint_chunk_end, end_s))
                else:
                    final.update(event, received=now)
                    return

        reader = ThreadPoolExecutor(1).submit(receive)
        for n, start in enumerate(range(0, len(pcm), 3200)):
            time.sleep(max(0.0, begun + n * 0.1 - time.monotonic()))
            ws.send(pcm[start : start + 3200])
        ended = time.monotonic()
        ws.send(json.dumps({"type": "end"}))
        reader.result()
    return {
        "lags": lags,
        "delays": delays,
        "after_chunk": after_chunk,
        "final_delay": final["received"] - ended,
        "type": final["type"],
    }


def latency_table(folder, counts, seconds, dtypes, starts) -> str:
    rows, port = [], 18000 + int(time.time()) % 1000
    for dtype in dtypes:
        rows += latency_rows(folder, port, counts, seconds, dtype, starts)
    return table(
        [
            "live streams",
            "--dtype",
            "starts",
            "partials",
            "partial lag p50 / p95",
            "segment after its endpoint's chunk p50 / p95",
            "segment after its endpoint p50 / p95 / max",
            "final after the end of audio p50 / max",
            "errors",
        ],
        rows,
    )


def latency_rows(folder, port, counts, seconds, dtype, starts) -> list[list]:
    """Each client streams its own stretch of `crowd_audio()` (`client_starts`), for each way of `starts`:
    "together", every client's audio from the same instant, so that all the streams' chunks end at once and every
    round of the server steps all of them (the worst case); "spread", client i's audio from i / N of a chunk later,
    so that their chunks end spread evenly, as independent speakers' would."""
    rows, server = [], serve(folder, port, dtype)
    try:
        chunk_s = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["streaming"]["chunk_ms"] / 1000
        for count, way in itertools.product(counts, starts):
            begin = time.monotonic() + 2.0  # every client connected before the audio starts
            start_at = [begin + (chunk_s * i / count if way == "spread" else 0.0) for i in range(count)]
            audio_starts = client_starts(count)
            with ThreadPoolExecutor(count) as pool:
                results = list(
                    pool.map(live, [port] * count, [seconds] * count, audio_starts, start_at, [chunk_s] * count)
                )
            lags = [lag for r in results for lag in r["lags"]]
            delays = [d for r in results for d in r["delays"]]
            after_chunk = [d for r in results for d in r["after_chunk"]]
            finals = [r["final_delay"] for r in results]
            expected = count * seconds / chunk_s  # one partial per chunk
            rows.append(
                [
                    count,
                    dtype,
                    way,
                    f"{len(lags):,} of ~{expected:,.0f}",
                    f"{np.percentile(lags, 50):.2f} / {np.percentile(lags, 95):.2f} s",
                    f"{np.percentile(after_chunk, 50):.2f} / {np.percentile(after_chunk, 95):.2f} s"
                    if after_chunk
                    else "-",
                    f"{np.percentile(delays, 50):.2f} / {np.percentile(delays, 95):.2f} / {max(delays):.2f} s"
                    if delays
                    else "-",
                    f"{np.percentile(finals, 50):.2f} / {max(finals):.2f} s",
                    sum(r["type"] != "final" for r in results),
                ]
            )
            print(rows[-1], flush=True)
            time.sleep(2.0)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a streaming model folder (train_ctc.py --preset streaming)")
    parser.add_argument("--full_model", default=None, help="a full-context model to compare WER with (outputs/mini)")
    parser.add_argument("--chunk_ms", type=int, nargs="+", default=[320, 640, 1280])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--stream_s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip_wer", action="store_true")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], help="the live streams' --dtype, one server each")
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=("together", "spread"),
        default=["together", "spread"],
        help="the clients' audio from the same instant, or spread evenly over one chunk (latency_rows)",
    )
    args = parser.parse_args(argv)
    print(machine())
    if not args.skip_wer:
        print(wer_table(args.model, args.chunk_ms, args.full_model))
    print(step_costs(args.model, args.rounds))
    print(round_costs(args.model, max(args.streams), args.dtypes))
    print(latency_table(args.model, args.streams, args.stream_s, args.dtypes, args.starts))


if __name__ == "__main__":
    main()
