"""ebranchformer-serve against hostile and careless clients (issue #36): slow connections, trickling uploads,
idle and excess live streams, huge prompts, a full queue at a stream's end, SIGTERM; API keys (with the `openai`
client), origins, metrics, and the unclear cases (truncated forms and Ogg streams, half-closes, request ids, log
lines). The hostile cases run a real serve.py process on 127.0.0.1, bounded in count and time."""

import contextlib
import json
import logging
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from project import CORPUS, ROOT

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from served import Running, free_port, raw_upload  # noqa: E402 (after the skips)

from ebranchformer_ru import serving  # noqa: E402
from ebranchformer_ru.commands import serve as command  # noqa: E402

FILES = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[:6]


class Process:
    """serve.py in a process of its own, its log in a file; `open_files` caps its open-files limit (soft and hard:
    it cannot raise it)."""

    def __init__(self, model, tmp_path, *options, open_files=None):
        self.port, self.log = free_port(), tmp_path / f"serve{time.monotonic_ns()}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "serve.py"), str(model), "--port", str(self.port), *options],
                stderr=log,
                preexec_fn=limit,
            )
        for _ in range(600):
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        self.model = Path(model).name

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def lines(self) -> list:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def post(self, path=FILES[0], timeout=60):
        with open(path, "rb") as audio:
            return requests.post(
                self.url + "/v1/audio/transcriptions",
                files={"file": audio},
                data={"model": self.model},
                timeout=timeout,
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def pcm_of(samples) -> bytes:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()


def websocket(url, **options):
    from websockets.sync.client import connect

    return connect(url.replace("http", "ws") + "/v1/audio/stream", open_timeout=30, **options)


def messages_until_closed(ws) -> tuple:
    """The JSON messages a stream sends, then its close code and reason."""
    from websockets.exceptions import ConnectionClosed

    messages = []
    try:
        while True:  # bounded: a server that never closes fails the test (TimeoutError), not hangs it
            messages.append(json.loads(ws.recv(timeout=20)))
    except ConnectionClosed:
        pass
    return messages, ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason


def raise_own_open_files(count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"this process may open {hard} files, the test needs {count}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


# ---------------------------------------------------------------------------------------------- hostile clients


@pytest.mark.slow
def test_slow_header_connections_do_not_take_the_server(tiny_model, tmp_path):
    """1,100 connections each sending a header byte a second, against a process limited to 1,024 open files: real
    requests are still answered within 5 s (a taken server answers none, or after its 10 s head timeout), and the
    log grows by less than 1 MB (no traceback per connection)."""
    raise_own_open_files(1400)
    with Process(tiny_model, tmp_path, open_files=1024) as server:
        assert server.post().status_code == 200
        logged = server.log.stat().st_size
        slow, stop = [], threading.Event()
        try:
            for _ in range(1100):
                connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                connection.sendall(b"P")
                slow.append(connection)

            def trickle():  # a header byte a second on each connection still open
                while not stop.wait(1.0):
                    for connection in slow:
                        with contextlib.suppress(OSError):
                            connection.send(b"O")

            threading.Thread(target=trickle, daemon=True).start()
            time.sleep(1.0)
            for _ in range(3):
                begun = time.monotonic()
                assert requests.get(server.url + "/health", timeout=5).json() == {
                    "status": "ok",
                    "dtype": "float32",
                    "torch_compile": False,
                }
                response = server.post(timeout=5)
                assert response.status_code == 200 and response.json()["text"], response.text
                assert time.monotonic() - begun < 5.0
        finally:
            stop.set()
            for connection in slow:
                connection.close()
        assert server.process.poll() is None
        assert server.log.stat().st_size - logged < 2**20
        assert "Traceback" not in server.log.read_text(errors="replace")


@pytest.mark.slow
def test_connections_wait_in_the_queue_while_the_server_is_stopped(tiny_model, tmp_path):
    """200 connections made while the server process is stopped are all taken by the kernel's queue (asyncio's
    accept batch of 16 must not be its length: connections beyond it were dropped, and the client waited a second or
    more to try again), then all answered once it runs again."""
    if int(Path("/proc/sys/net/core/somaxconn").read_text()) < 200:
        pytest.skip("the kernel caps a listening queue below 200 connections (net.core.somaxconn)")
    with Process(tiny_model, tmp_path) as server, contextlib.ExitStack() as waiting:
        assert server.post().status_code == 200
        server.process.send_signal(signal.SIGSTOP)
        try:
            connections = [
                waiting.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
                for _ in range(200)
            ]
        finally:
            server.process.send_signal(signal.SIGCONT)
        for connection in connections:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        for connection in connections:
            connection.settimeout(30)
            assert connection.recv(64).startswith(b"HTTP/1.1 200")


class Trickle:
    """A transcription upload over a raw socket, its body sent a byte a second by a thread until `close()`."""

    def __init__(self, url, model, path):
        address, head, body = raw_upload(url, model, path)
        self.socket = socket.create_connection(address, timeout=30)
        self.socket.sendall(head + body[:100])
        self.rest, self.stop = body[100:], threading.Event()
        self.thread = threading.Thread(target=self.send, daemon=True)
        self.thread.start()

    def send(self):
        for byte in self.rest:
            if self.stop.wait(1.0):
                return
            try:
                self.socket.send(bytes([byte]))
            except OSError:
                return

    def answer(self) -> bytes:
        """What the server sends until it closes the connection."""
        answer = b""
        try:
            while chunk := self.socket.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer

    def close(self):
        self.stop.set()
        self.socket.close()


@pytest.mark.slow
def test_sigterm_with_a_trickling_upload_answers_what_is_in_flight_and_exits_within_the_grace(tiny_model, tmp_path):
    """SIGTERM while a client trickles its upload a byte a second, a transcription waits in the batcher and a live
    stream is open: the transcription is answered, the stream gets the final transcript of the audio it sent
    (close code 1001), the upload is cut, and the process exits within --shutdown_timeout_s."""
    options = ["--shutdown_timeout_s", "4", "--max_wait_ms", "1500"]
    with Process(tiny_model, tmp_path, *options) as server, ThreadPoolExecutor(1) as pool:
        sent = serving.read_audio(FILES[2])[:32000]
        trickle = Trickle(server.url, server.model, FILES[1])
        try:
            ws = websocket(server.url)
            ws.send(pcm_of(sent))
            answer = pool.submit(server.post, FILES[0], 30)
            time.sleep(1.0)  # the request waits in the batcher for the upload that trickles
            begun = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            messages, code, reason = messages_until_closed(ws)
            assert answer.result().status_code == 200 and answer.result().json()["text"]
            assert server.process.wait(timeout=10) == -signal.SIGTERM
            assert time.monotonic() - begun < 4.0 + 1.0
            assert trickle.answer().split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable"  # cut, and told so
        finally:
            trickle.close()
    final = messages[-1]
    assert final["type"] == "final" and final["duration"] == 2.0 and (code, reason) == (1001, "the server is stopping")


def streams_open(url, count, pcm):
    """`count` live streams, each having sent `pcm`: the connections."""
    from websockets.exceptions import ConnectionClosed

    opened = []
    for _ in range(count):
        ws = websocket(url)
        with contextlib.suppress(ConnectionClosed):  # refused: closed at once
            ws.send(pcm)
        opened.append(ws)
    return opened


@pytest.mark.slow
def test_idle_streams_past_the_cap_are_refused_and_their_memory_returns(tiny_model, tmp_path, speech_like):
    """200 streams that each send 2 s of audio and then nothing, against --max_streams 20: the 180 past the cap
    are refused at once (close code 1013, a message that names the option); memory stays within 50 MiB of the
    start while they are open (measured: +6 MiB) and within 30 MiB once they close; the 20 are closed after
    --stream_idle_s with a message, having had no empty partials."""
    raise_own_open_files(1024)
    options = ["--max_streams", "20", "--stream_idle_s", "3"]
    with Process(tiny_model, tmp_path, *options) as server:
        pcm = pcm_of(speech_like(2.0, 0))
        assert server.post().status_code == 200  # the model has run once: its memory is in the baseline
        before = server.rss_mib()
        opened = streams_open(server.url, 200, pcm)
        try:
            time.sleep(1.0)
            during = server.rss_mib()
            print(f"serve.py's memory: {before:.0f} MiB, {during:.0f} MiB with the streams open", end=" ")
            outcomes = [messages_until_closed(ws) for ws in opened[20:]]
            message = "the server has 20 live streams open (--max_streams); retry later"
            assert all(code == 1013 and m[-1]["error"]["message"] == message for m, code, _ in outcomes)
            kept = [messages_until_closed(ws) for ws in opened[:20]]  # closed by the server when idle
        finally:
            for ws in opened:
                ws.close()
        time.sleep(0.5)
        after = server.rss_mib()
        print(f"{after:.0f} MiB after")
    assert during - before < 50 and after - before < 30, (before, during, after)
    for messages, code, _ in kept:
        partials = [m for m in messages if m["type"] == "partial"]
        assert len(partials) <= 4 and all(p["duration"] > 0 for p in partials)  # new audio only: no repeats
        assert code == 1008 and messages[-1]["error"]["message"].startswith("nothing arrived for 3 s (--stream_idle_s)")


def test_a_stream_ending_while_uploads_fill_the_queue_gets_its_final(tiny_model, monkeypatch):
    """The model is held; 8 uploads fill --max_queue 8; a live stream that ends then gets its final transcript when
    its turn comes (a stream cannot retry), while a ninth upload gets 503."""
    gate = threading.Event()
    with Running(tiny_model, "--max_queue", "8", "--max_batch_size", "1", "--max_wait_ms", "0") as running:
        batcher = running.service.batcher
        forward = batcher.transcriber.forward
        monkeypatch.setattr(batcher.transcriber, "forward", lambda w: gate.wait(30) and forward(w))
        pool = ThreadPoolExecutor(8)
        try:
            uploads = [pool.submit(running.post, path) for path in FILES[:4] * 2]
            for _ in range(500):
                if batcher.admitted == 8:
                    break
                time.sleep(0.01)
            assert running.post(FILES[5], timeout=10).status_code == 503
            samples = serving.read_audio(FILES[2])
            with websocket(running.url) as ws:
                ws.send(pcm_of(samples))
                ws.send(json.dumps({"type": "end"}))
                time.sleep(1.0)  # the final waits behind the 8
                gate.set()
                messages, code, _ = messages_until_closed(ws)
            assert [u.result().status_code for u in uploads] == [200] * 8
        finally:
            gate.set()
            pool.shutdown()
    assert messages[-1]["type"] == "final" and messages[-1]["text"] and code == 1000, messages


@pytest.fixture(scope="module")
def lm_model(tiny_model, tmp_path_factory):
    from ebranchformer_ru import lm_building

    folder = tmp_path_factory.mktemp("lm") / "with_lm"
    shutil.copytree(tiny_model, folder)
    lm_building.build(folder)
    return folder


def rss_mib():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def test_prompts_are_normalised_and_bounded(lm_model):
    """A 480,000-character prompt gets a 400 at once and the memory does not move; one word over the length limit
    or over the count limit is named; a prompt with punctuation and capitals is normalised as transcripts are;
    characters outside the alphabet are named."""
    from modeling_ebranchformer.beam_search import MAX_HOTWORD_LENGTH, MAX_HOTWORDS

    with Running(lm_model, "--decoder", "lm") as running:

        def refusal(prompt):
            response = running.post(prompt=prompt)
            return response.status_code, response.json()["error"]["message"]

        before, begun = rss_mib(), time.monotonic()
        assert refusal("а" * 480_000) == (400, "prompt: 480000 characters, over the limit of 202000")
        assert time.monotonic() - begun < 1.0 and rss_mib() - before < 20
        status, message = refusal("б" * (MAX_HOTWORD_LENGTH + 1))
        assert status == 400 and message.endswith(f"is {MAX_HOTWORD_LENGTH + 1} characters, over {MAX_HOTWORD_LENGTH}")
        words = " ".join("д" + "".join("абвгдежзий"[int(c)] for c in str(n)) for n in range(MAX_HOTWORDS + 1))
        assert refusal(words) == (400, f"prompt: {MAX_HOTWORDS + 1} words, over the limit of {MAX_HOTWORDS} hotwords")
        status, message = refusal("hello, мир")
        assert status == 400 and message.startswith("prompt: characters ['e', 'h', 'l', 'o'] are outside")
        plain = running.post(prompt="будильник джой").json()["text"]
        assert running.post(prompt="«Будильник», Джой!").json()["text"] == plain


def test_hotwords_are_bounded_and_stored_linearly():
    """The beam search's hotword structure: a word over MAX_HOTWORD_LENGTH or more than MAX_HOTWORDS words are
    refused by name; the prefixes of a long word cost memory linear in its length (a dict of every prefix held
    ~5,000 x 5,000 / 2 characters for one word of 5,000)."""
    import tracemalloc

    from modeling_ebranchformer import beam_search
    from modeling_ebranchformer.ngram import LanguageModelError

    letters = set("абвгдежзийклмнопрстуфхцчшщъыьэюя ")
    with pytest.raises(LanguageModelError, match="over the limit of 100"):
        beam_search._Hotwords(["а" * 101], 1.0, letters)
    many = ["д" + "".join("абвгдежзий"[int(c)] for c in str(n)) for n in range(1001)]
    with pytest.raises(LanguageModelError, match="over 1000 hotwords"):
        beam_search._Hotwords(many, 1.0, letters)
    hot = beam_search._Hotwords(["будильник", "буря", "мост"], 1.0, letters)
    assert [hot.prefixes.get(p) for p in ("б", "буд", "бур", "будильник", "мо", "мосты", "", "х")] == [
        4,
        9,
        4,
        9,
        4,
        None,
        None,
        None,
    ]  # the length of the shortest hotword each begins
    tracemalloc.start()
    beam_search._Prefixes(["а" * 5000])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200_000  # linear: ~10 kB for the word; every prefix would be ~12.5 MB


def test_a_stalled_upload_is_cut_with_408_and_a_truncated_form_is_named(tiny_model):
    with Running(tiny_model, "--read_timeout_s", "1") as running:
        trickle = Trickle(running.url, running.service.model_id, FILES[1])
        trickle.stop.set()  # nothing more after the first 100 bytes
        begun = time.monotonic()
        head, _, body = trickle.answer().partition(b"\r\n\r\n")
        trickle.close()
        assert head.startswith(b"HTTP/1.1 408 ") and 0.9 < time.monotonic() - begun < 3
        assert json.loads(body)["error"]["message"] == "the upload stalled: nothing arrived for 1 s (--read_timeout_s)"
        body = requests.Request(
            "POST", running.url, data={"model": "x"}, files={"file": ("a.opus", FILES[0].read_bytes())}
        ).prepare()
        truncated = requests.post(
            running.url + "/v1/audio/transcriptions",
            data=body.body[: len(body.body) // 2],
            headers={"Content-Type": body.headers["Content-Type"]},
        )
        assert truncated.status_code == 400
        expected = "the multipart form is truncated: the body ends before its closing boundary"
        assert truncated.json()["error"]["message"] == expected


def test_a_half_close_is_taken_as_the_client_leaving(tiny_model, caplog):
    """TCP cannot tell a client that shut its sending side from one that left: a request followed by a half-close
    is not computed and is logged as 499 (curl, requests and the openai client never half-close)."""
    caplog.set_level("INFO", logger="ebranchformer_ru.serving")
    with Running(tiny_model) as running:
        address, head, body = raw_upload(running.url, running.service.model_id, FILES[0])
        with socket.create_connection(address, timeout=10) as connection:
            connection.sendall(head + body)
            connection.shutdown(socket.SHUT_WR)
            assert connection.recv(65536) == b""
        time.sleep(0.5)
    assert [r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("request ")] == [
        "status=499"
    ]


def test_request_ids_on_every_response_and_client_strings_escaped_in_the_log(tiny_model, tmp_path, caplog):
    """Every response has an X-Request-Id; a file name with a line break is written escaped (one log line); a
    truncated Ogg stream is transcribed as far as it goes, with a warning in the log and in verbose_json."""
    caplog.set_level("INFO", logger="ebranchformer_ru.serving")
    cut = tmp_path / "cut.opus"
    data = FILES[0].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with Running(tiny_model) as running:
        for path in ("/health", "/ready", "/v1/models", "/", "/metrics", "/nowhere"):
            assert len(requests.get(running.url + path).headers["x-request-id"]) == 12, path
        fields = [
            b'name="model"\r\n\r\n' + running.service.model_id.encode(),
            b'name="response_format"\r\n\r\nverbose_json',
            b'name="file"; filename="cut\nrequest forged status=200.opus"\r\n\r\n' + cut.read_bytes(),
        ]  # by hand: requests would percent-encode the line break, a hostile client does not
        body = b"".join(b"--x\r\nContent-Disposition: form-data; " + field + b"\r\n" for field in fields) + b"--x--\r\n"
        response = requests.post(
            running.url + "/v1/audio/transcriptions",
            data=body,
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert response.status_code == 200 and response.headers["x-request-id"]
        assert response.json()["warnings"] == [
            "cut\nrequest forged status=200.opus: the Ogg stream is truncated (its last page is missing): "
            "transcribed as far as it goes"
        ]
        whole = running.post(FILES[0], response_format="verbose_json").json()
        assert "warnings" not in whole and whole["duration"] > response.json()["duration"]
    lines = [line for r in caplog.records for line in r.getMessage().splitlines()]
    assert not any(line.startswith("request forged") for line in lines)
    assert any(line.startswith("cut\\nrequest forged status=200.opus: the Ogg stream is truncated") for line in lines)


def test_a_client_that_leaves_while_its_upload_is_decoded_is_not_computed(tiny_model, monkeypatch):
    with Running(tiny_model, "--max_wait_ms", "0") as running:
        service, ran = running.service, []
        decode, forward = service.samples, service.batcher.transcriber.forward
        monkeypatch.setattr(service, "samples", lambda *a: time.sleep(1.5) or decode(*a))
        monkeypatch.setattr(service.batcher.transcriber, "forward", lambda w: ran.append(len(w)) or forward(w))
        with pytest.raises(requests.exceptions.ReadTimeout):
            running.post(FILES[0], timeout=0.7)  # taken by the worker, then left while decoded
        time.sleep(1.5)
        assert ran == []
        assert running.post(FILES[1]).status_code == 200 and ran == [1]


def test_a_failed_worker_turns_ready_false_and_fails_requests_with_500(tiny_model, monkeypatch):
    """A batch that fails outside the model (a decoding thread that cannot start) fails its requests with 500
    and the worker goes on; a worker thread that dies turns /ready false and every request fails at once."""
    with Running(tiny_model) as running:
        batcher = running.service.batcher
        real = batcher.decode

        def cannot_start(batch):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(batcher, "decode", cannot_start)
        response = running.post(timeout=10)
        assert response.status_code == 500 and "can't start new thread" in response.json()["error"]["message"]
        monkeypatch.setattr(batcher, "decode", real)
        assert running.post(timeout=10).status_code == 200

        def dies(batch):
            raise SystemExit("killed")

        monkeypatch.setattr(batcher, "process_safely", dies)
        response = running.post(timeout=10)
        assert response.status_code == 500 and "the model worker has stopped" in response.json()["error"]["message"]
        assert requests.get(running.url + "/ready").status_code == 503
        begun = time.monotonic()
        assert running.post(timeout=10).status_code == 500 and time.monotonic() - begun < 1


def test_a_prompt_decoder_is_built_off_the_event_loop(lm_model, monkeypatch):
    with Running(lm_model, "--decoder", "lm") as running, ThreadPoolExecutor(1) as pool:
        build = running.service.prompt_decoder
        monkeypatch.setattr(running.service, "prompt_decoder", lambda prompt: time.sleep(2) or build(prompt))
        answer = pool.submit(running.post, FILES[0], 30, prompt="будильник")
        time.sleep(0.5)
        begun = time.monotonic()
        assert requests.get(running.url + "/health", timeout=5).ok and time.monotonic() - begun < 0.5
        assert answer.result().status_code == 200


# ---------------------------------------------------------------------------------------------- access


def test_api_keys_with_the_openai_client(tiny_model, tmp_path, caplog, monkeypatch):
    """--api_key, --api_key_file and EBRANCHFORMER_API_KEY: without a key (or with a wrong one) the openai client
    raises AuthenticationError; with one, it gets the transcript; /health and the page need none; a live stream
    needs one (a browser sends it as the subprotocol bearer.KEY); no key appears in the log."""
    caplog.set_level("DEBUG")
    keys = tmp_path / "keys"
    keys.write_text("# one a line\nfile-key-2\n", encoding="utf-8")
    monkeypatch.setenv("EBRANCHFORMER_API_KEY", "env-key-3")
    options = ["--api_key", "flag-key-1", "--api_key_file", str(keys)]
    with Running(tiny_model, *options) as running:
        name = running.service.model_id

        def client(key):
            return openai.OpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)

        for key in ("wrong", ""):
            with pytest.raises(openai.AuthenticationError, match="a valid API key is required"):
                client(key or "-").audio.transcriptions.create(model=name, file=FILES[0].open("rb"))
        for key in ("flag-key-1", "file-key-2", "env-key-3"):
            assert client(key).audio.transcriptions.create(model=name, file=FILES[0].open("rb")).text
        assert requests.get(running.url + "/health").ok and requests.get(running.url + "/").ok
        assert requests.get(running.url + "/metrics").status_code == 401
        assert requests.get(running.url + "/v1/models").status_code == 401
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus, match="401"):
            websocket(running.url)
        with websocket(running.url, subprotocols=["bearer.flag-key-1"]) as ws:
            ws.send(pcm_of(serving.read_audio(FILES[2])))
            ws.send(json.dumps({"type": "end"}))
            assert messages_until_closed(ws)[0][-1]["type"] == "final"
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert not any(key in logged for key in ("flag-key-1", "file-key-2", "env-key-3", "wrong"))


def test_metrics_move_as_requests_are_made(tiny_model):
    with Running(tiny_model, "--api_key", "k") as running:
        auth = {"Authorization": "Bearer k"}

        def metrics():
            text = requests.get(running.url + "/metrics", headers=auth).text
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in prometheus_parser.text_string_to_metric_families(text)
                for s in family.samples
            }

        def post(**data):
            return requests.post(
                running.url + "/v1/audio/transcriptions",
                files={"file": FILES[0].open("rb")},
                data={"model": running.service.model_id, **data},
                headers=auth,
            )

        before = metrics()
        assert post().status_code == 200 and post(response_format="xml").status_code == 400
        assert requests.get(running.url + "/v1/models").status_code == 401
        after = metrics()

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    transcriptions = "/v1/audio/transcriptions"
    assert moved("asr_requests_total", endpoint=transcriptions, status="200") == 1
    assert moved("asr_requests_total", endpoint=transcriptions, status="400") == 1
    assert moved("asr_requests_total", endpoint="/v1/models", status="401") == 1
    assert moved("asr_rejected_total", reason="unauthorized") == 1
    assert moved("asr_request_duration_seconds_count", endpoint=transcriptions) == 2
    assert moved("asr_batch_size_count") == 1 and moved("asr_queue_seconds_count") == 1
    assert moved("asr_audio_seconds_total") == pytest.approx(len(serving.read_audio(FILES[0])) / 16000, abs=0.01)
    assert after[("asr_live_streams", ())] == 0 and after[("asr_queue_depth", ())] == 0


def test_origins_are_checked_and_cors_headers_go_to_allowed_origins_only(tiny_model):
    with Running(tiny_model, "--allowed_origins", "http://app.example") as running:
        url = running.url
        own = {"Origin": url}
        assert requests.get(url + "/v1/models", headers=own).ok
        refused = requests.get(url + "/v1/models", headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        assert refused.json()["error"]["message"] == "origin 'http://evil.example' is not allowed (--allowed_origins)"
        allowed = requests.get(url + "/v1/models", headers={"Origin": "http://app.example"})
        assert allowed.ok and allowed.headers["access-control-allow-origin"] == "http://app.example"
        preflight = requests.options(
            url + "/v1/audio/transcriptions",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204 and "authorization" in preflight.headers["access-control-allow-headers"]
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus, match="403"):
            websocket(url, origin="http://evil.example")
        with websocket(url, origin=url) as ws:
            ws.send(json.dumps({"type": "end"}))
            assert messages_until_closed(ws)[0][-1]["error"]["message"] == "the stream held no audio"


def test_a_loopback_server_refuses_other_host_names_dns_rebinding(tiny_model):
    """A page of evil.example whose name was made to resolve to 127.0.0.1 sends Host and Origin evil.example: the
    origin is then the server's "own", so the Host check is what keeps it out."""
    with Running(tiny_model) as running:
        port = running.args.port
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        refused = requests.get(running.url + "/v1/models", headers=rebound)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert requests.get(running.url + "/v1/models", headers={"Host": host}).ok, host
        metrics = requests.get(running.url + "/metrics").text
        assert 'asr_rejected_total{reason="host"} 1.0' in metrics
    with Running(tiny_model, "--host", "0.0.0.0") as public:  # serving other machines: their names are unknown
        assert requests.get(public.url + "/v1/models", headers={"Host": "asr.example:443"}).ok
    with Running(tiny_model, "--allowed_hosts", "asr.example") as proxied:  # behind a proxy that keeps Host
        assert requests.get(proxied.url + "/v1/models", headers={"Host": "asr.example"}).ok
        assert requests.get(proxied.url + "/v1/models", headers={"Host": "evil.example"}).status_code == 403


def test_new_options_follow_the_dialect(tmp_path, capsys):
    for option in (
        ["--max_streams", "0"],
        ["--read_timeout_s", "-1"],
        ["--shutdown_timeout_s", "inf"],
        ["--metrics", "maybe"],
        ["--max_connections", "x"],
        ["--allowed_origins", ","],
    ):
        with pytest.raises(SystemExit) as exit:
            command.main([str(tmp_path), *option])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.startswith("usage: ") and option[0] in err, err
    args = command.build_parser().parse_args([str(tmp_path), "--metrics", "false", "--api_key", "a", "--api_key", "b"])
    assert args.metrics is False and args.api_key == ["a", "b"]


def test_the_log_filter_passes_one_line_per_cause_without_repeated_tracebacks():
    records, limiter = [], serving.RateLimitedLog(period=60)
    for n in range(1000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            record = logging.LogRecord(
                "asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", (), sys.exc_info()
            )
        if limiter.filter(record):
            records.append(record)
        info = logging.LogRecord("serving", logging.INFO, __file__, 1, f"request {n}", (), None)
        assert limiter.filter(info)
    assert len(records) == 1 and records[0].exc_info is not None
    limiter.seen = {key: (since - 61, dropped) for key, (since, dropped) in limiter.seen.items()}
    record = logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource", (), records[0].exc_info
    )
    assert limiter.filter(record) and record.getMessage().endswith("(999 more like this in the last 61 s not logged)")
    assert record.exc_info is None  # the traceback once per cause


def test_the_open_files_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert serving.open_files_limit() == (hard if hard != resource.RLIM_INFINITY else 1 << 16)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
