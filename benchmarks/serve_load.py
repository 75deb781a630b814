"""Load test of serve.py against transcribe.py's offline throughput, measured in the same run, and the latency and
accuracy of live transcription.

Two servers of MODEL run side by side (--max_batch_size 16 and 1, so that the gain of dynamic batching is
measured); 1, 4, 16 and 64 concurrent clients each send the embedded test files (ebranchformer_ru/golos/golos_mini/test_opus, 180
recordings) for --seconds: requests and audio seconds per second, latency p50/p95/p99, errors, the server's peak
memory. In every round `transcribe.py` transcribes the same files offline, again until it has worked for --seconds
(its own summary: audio seconds per second of transcription, model loading left out); rounds interleave the
offline run and every server cell, each cell's "x offline" is its ratio to the same round's offline run, and each
figure is the median over rounds with its spread (min-max). The CPU time stolen by the hypervisor during the run
is printed: a shared virtual machine's figures swing with it. Then --stream_files files are streamed to the
live endpoint in real time (4 at once): the lag of partial transcripts behind the audio, the time from the end of
a stream to its final transcript, and the WER of the last partial against the offline transcript.

As a deployment runs it: the servers require an API key (--api_key, sent by every client; `--api_key ""`: none)
and serve /metrics, which a scraper reads every --scrape_s seconds during the load (`--metrics false`: neither).

    python benchmarks/serve_load.py outputs/mini --threads 2 --seconds 15 --rounds 4
    python benchmarks/serve_load.py outputs/mini --seconds 5 --rounds 1 --clients 1 4 --stream_files 4   # smoke run
    python benchmarks/serve_load.py outputs/mini --clients 16 --stream_files 0 --dtypes float32 auto auto+compile \
        --peer /tmp/peer          # precisions against an older checkout's server (git worktree add /tmp/peer COMMIT)
"""

import argparse
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import soundfile as sf
from common import ROOT, table

HEADERS = {}  # every request's: the API key (main)
CORPUS = ROOT / "ebranchformer_ru" / "golos" / "golos_mini" / "test_opus"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """serve.py in a process of its own; `peak_mib()` is its peak resident memory since the last `reset_peak()`."""

    def __init__(self, model, threads, batch, options=(), root=ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            str(root / "serve.py"),
            model,
            "--port",
            str(self.port),
            "--threads",
            str(threads),
            "--max_batch_size",
            str(batch),
            "--max_queue",
            "1024",
            *options,
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL, cwd=root)
        for _ in range(1200):
            try:
                if requests.get(self.url + "/ready", timeout=1, headers=HEADERS).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"serve.py {model} did not start")
        self.model = requests.get(self.url + "/v1/models", headers=HEADERS).json()["data"][0]["id"]

    def reset_peak(self):
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident memory

    def peak_mib(self):
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def load(server, files, clients, seconds) -> dict:
    """`clients` threads sending the files round-robin for `seconds`; what they measured."""
    latencies, audio, errors, stop = [], [0.0], [0], time.monotonic() + seconds
    lock = threading.Lock()

    def client(n):
        session, i = requests.Session(), n
        while time.monotonic() < stop:
            path, data, duration = files[i % len(files)]
            i += clients
            begun = time.monotonic()
            try:
                ok = (
                    session.post(
                        server.url + "/v1/audio/transcriptions",
                        files={"file": (path.name, data)},
                        data={"model": server.model},
                        headers=HEADERS,
                        timeout=300,
                    ).status_code
                    == 200
                )
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.monotonic() - begun)
                    audio[0] += duration
                else:
                    errors[0] += 1

    server.reset_peak()
    begun = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.monotonic() - begun
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "rps": len(latencies) / wall,
        "audio_per_s": audio[0] / wall,
        "p50": q[0],
        "p95": q[1],
        "p99": q[2],
        "errors": errors[0],
        "peak_mib": server.peak_mib(),
    }


def offline(model, threads, seconds) -> float:
    """transcribe.py's audio seconds per second of transcription on the test manifests (its own summary line, model
    loading left out), run again until it has transcribed for `seconds`, as long as a server cell."""
    audio = spent = 0.0
    while spent < seconds:
        with tempfile.TemporaryDirectory() as tmp:
            command = [
                sys.executable,
                str(ROOT / "transcribe.py"),
                model,
                *map(str, sorted(CORPUS.glob("*/manifest.jsonl"))),
                "--output",
                str(Path(tmp) / "out.jsonl"),
                "--no_progress",
                "--threads",
                str(threads),
            ]
            result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        match = re.search(r"\(([\d.]+) h of audio in ([\d.]+) s\)", result.stderr)
        if result.returncode or not match:
            raise SystemExit(f"transcribe.py failed:\n{result.stderr[-2000:]}")
        audio, spent = audio + float(match.group(1)) * 3600, spent + float(match.group(2))
    return audio / spent


def stream(server, path, data, expected):
    """One file streamed in real time (0.1 s chunks); partial lags, the final's latency, the last partial's text."""
    from websockets.sync.client import connect

    samples, _ = sf.read(io.BytesIO(data), dtype="int16")
    pcm, step = samples.astype("<i2").tobytes(), 3200
    lags, last = [], ""
    with connect(server.url.replace("http", "ws") + "/v1/audio/stream", additional_headers=HEADERS) as ws:
        begun = time.monotonic()

        def receive():
            nonlocal last
            for message in ws:
                message = json.loads(message)
                if message["type"] != "partial":
                    return message, time.monotonic()
                lags.append(time.monotonic() - begun - message["duration"])
                last = message["text"]

        reader = ThreadPoolExecutor(1).submit(receive)
        for n, start in enumerate(range(0, len(pcm), step)):
            time.sleep(max(0.0, begun + n * 0.1 - time.monotonic()))  # real time
            ws.send(pcm[start : start + step])
        ended = time.monotonic()
        ws.send(json.dumps({"type": "end"}))
        final, received = reader.result()
    return {
        "lags": lags,
        "final_latency": received - ended,
        "last_partial": last,
        "final": final["text"],
        "offline": expected,
    }


def cpu_counters() -> list[int]:
    """The machine's CPU time counters (/proc/stat: user, nice, system, idle, iowait, irq, softirq, steal, ...)."""
    return [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def stolen(before, after) -> float:
    """The share of CPU time the hypervisor gave to other machines between two `cpu_counters()` readings."""
    spent = [now - then for now, then in zip(after[:8], before[:8])]  # guest time is counted in user time too
    return spent[7] / max(1, sum(spent))


def scrape(servers, every_s, stop):
    """What Prometheus does to a deployment: reads every server's /metrics every `every_s` seconds."""
    while not stop.wait(every_s):
        for server in servers:
            requests.get(server.url + "/metrics", headers=HEADERS, timeout=10).raise_for_status()


def spread(values, digits=2):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder or an ONNX export")
    parser.add_argument("--threads", type=int, default=2, help="model threads of the servers and of transcribe.py")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--stream_files", type=int, default=20, help="files streamed in real time (0: none)")
    parser.add_argument("--api_key", default="load-test-key", help='the key the servers require ("": none)')
    parser.add_argument(
        "--metrics", type=lambda t: t.lower() in ("true", "1", "yes"), default=True, help="serve and scrape /metrics"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=[f"{dtype}{compiled}" for dtype in ("float32", "bfloat16", "auto") for compiled in ("", "+compile")],
        help="the servers' --dtype (+compile: and --torch_compile): the first for both batch sizes, each further "
        "one a batch-16 server more",
    )
    parser.add_argument("--scrape_s", type=float, default=5.0, help="seconds between scrapes of /metrics")
    parser.add_argument(
        "--peer",
        type=Path,
        default=None,
        help="another checkout of this project (`git worktree add /tmp/peer COMMIT`): its serve.py, float32 at batch "
        "16 with no other options, one server more, and every server's ratio to it in the same round (x peer)",
    )
    args = parser.parse_args(argv)
    options = ["--metrics", str(args.metrics).lower()]
    if args.api_key:
        options += ["--api_key", args.api_key]
        HEADERS["Authorization"] = f"Bearer {args.api_key}"
    import jiwer

    manifests = sorted(CORPUS.glob("*/manifest.jsonl"))
    files = []
    for manifest in manifests:
        for line in manifest.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            path = manifest.parent / entry["audio_filepath"]
            files.append((path, path.read_bytes(), sf.info(path).duration))
    print(
        f"{os.cpu_count()} logical CPUs; model {args.model}; {len(files)} files, "
        f"{sum(f[2] for f in files):.0f} s of audio; {args.seconds:g} s a cell, {args.rounds} rounds"
    )

    counters = cpu_counters()
    # the servers: (--max_batch_size, --dtype) -> Server; batch 1 shows what dynamic batching gains, each further
    # --dtypes value a batch-16 server in that precision
    variants = [(16, args.dtypes[0]), (1, args.dtypes[0])] + [(16, dtype) for dtype in args.dtypes[1:]]
    servers = {
        v: Server(
            args.model,
            args.threads,
            v[0],
            [*options, "--dtype", v[1].split("+")[0], *["--torch_compile"] * ("+" in v[1])],
        )
        for v in variants
    }
    first = servers[(16, args.dtypes[0])]
    scraping = threading.Event()
    if args.metrics:
        threading.Thread(target=scrape, args=(list(servers.values()), args.scrape_s, scraping), daemon=True).start()
    peer = None
    if args.peer:  # started after the scraper took its list: an older server may have no /metrics
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=args.peer)
        peer = (16, f"float32 (peer {commit.stdout.strip() or args.peer})")
        servers[peer] = Server(args.model, args.threads, 16, root=args.peer.resolve())
    results, offline_rates = {}, []
    try:
        for round_ in range(args.rounds):
            round_counters = cpu_counters()
            offline_rates.append(offline(args.model, args.threads, args.seconds))
            for clients in args.clients:
                for variant, server in servers.items():
                    results.setdefault((variant, clients), []).append(load(server, files, clients, args.seconds))
            print(
                f"round {round_ + 1}: offline {offline_rates[-1]:.1f} audio s/s, "
                f"{stolen(round_counters, cpu_counters()):.0%} of the CPU time stolen",
                file=sys.stderr,
            )
        streams = []
        if args.stream_files:
            chosen = files[:: max(1, len(files) // args.stream_files)][: args.stream_files]
            expected = {}
            for path, data, _ in chosen:  # the offline transcript of what the stream carries: 16-bit samples
                wav = io.BytesIO()
                sf.write(wav, sf.read(io.BytesIO(data), dtype="int16")[0], 16000, format="WAV", subtype="PCM_16")
                response = requests.post(
                    first.url + "/v1/audio/transcriptions",
                    files={"file": ("a.wav", wav.getvalue())},
                    data={"model": first.model},
                    headers=HEADERS,
                )
                expected[path] = response.json()["text"]
            with ThreadPoolExecutor(4) as pool:
                streams = list(pool.map(lambda f: stream(first, f[0], f[1], expected[f[0]]), chosen))
    finally:
        scraping.set()
        for server in servers.values():
            server.stop()

    print(
        f"\ntranscribe.py offline: {spread(offline_rates, 1)} audio s/s; CPU time stolen by the host: "
        f"{stolen(counters, cpu_counters()):.1%} of the run (figures under steal are not an idle machine's)\n"
    )
    rows = []
    for ((batch, dtype), clients), cells in sorted(results.items(), key=lambda kv: (kv[0][1], -kv[0][0][0])):
        rates = [c["audio_per_s"] for c in cells]
        # each round's ratio to that round's offline run (and peer server): the machine's speed drifts between rounds
        ratios = [rate / offline_rate for rate, offline_rate in zip(rates, offline_rates)]
        peer_rates = [c["audio_per_s"] for c in results[(peer, clients)]] if peer else []
        to_peer = spread([rate / peer_rate for rate, peer_rate in zip(rates, peer_rates)]) if peer else "-"
        rows.append(
            [
                clients,
                batch,
                dtype,
                spread([c["rps"] for c in cells], 1),
                spread(rates, 1),
                spread(ratios),
                to_peer,
                spread([c["p50"] for c in cells]),
                spread([c["p95"] for c in cells]),
                spread([c["p99"] for c in cells]),
                sum(c["errors"] for c in cells),
                f"{max(c['peak_mib'] for c in cells):.0f}",
            ]
        )
    print(
        table(
            [
                "clients",
                "--max_batch_size",
                "--dtype",
                "requests/s",
                "audio s/s",
                "x offline",
                "x peer",
                "p50 s",
                "p95 s",
                "p99 s",
                "errors",
                "peak MiB",
            ],
            rows,
        )
    )
    if streams:
        lags = [lag for s in streams for lag in s["lags"]]
        final = [s["final_latency"] for s in streams]
        references = [s["offline"] or "-" for s in streams]
        print(
            f"\nlive, {len(streams)} files streamed in real time, 4 at once: partial lag behind the audio "
            f"p50 {np.percentile(lags, 50):.2f} s, p95 {np.percentile(lags, 95):.2f} s; final transcript "
            f"{np.median(final):.2f} s (p95 {np.percentile(final, 95):.2f} s) after the end of the stream; "
            f"WER against the offline transcript: last partial "
            f"{jiwer.wer(references, [s['last_partial'] or '-' for s in streams]):.1%}, final "
            f"{jiwer.wer(references, [s['final'] or '-' for s in streams]):.1%}"
        )


if __name__ == "__main__":
    main()
