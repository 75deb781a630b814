"""ebranchformer-serve (serve.py): OpenAI's transcription API (tested with the `openai` client), responses equal
to transcribe.py's, dynamic batching under concurrent requests, limits and faults, live audio over the WebSocket,
the page in a real headless browser, SIGTERM, the command line's exit statuses."""

import collections
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf
from project import CORPUS

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from served import Running, free_port, raw_upload, stream  # noqa: E402 (after the skips)

from ebranchformer_ru import serving  # noqa: E402
from ebranchformer_ru.commands import serve as command  # noqa: E402
from ebranchformer_ru.commands import transcribe  # noqa: E402

FILES = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[:6]


@pytest.fixture(scope="module")
def server(tiny_model):
    with Running(tiny_model, "--max_wait_ms", "50", "--max_batch_size", "4") as running:
        yield running


def offline(model, path, tmp_path, suffix, *options):
    """What transcribe.py writes for one file."""
    output = tmp_path / f"offline{suffix}"
    args = [str(model), str(path), "--output", str(output), "--no_progress", "--overwrite", *options]
    assert transcribe.main(args) == 0
    if suffix == ".jsonl":
        return json.loads(output.read_text(encoding="utf-8"))
    return output.read_text(encoding="utf-8")


def test_a_live_round_takes_a_streams_audio_up_to_its_end_marker():
    a, b, c = (np.full(3, value, np.float32) for value in (1, 2, 3))
    inbox = collections.deque([a, b, None, c, None])
    pieces, ended = serving.drain(inbox)
    assert [p.tolist() for p in pieces] == [a.tolist(), b.tolist()] and ended and not inbox
    assert serving.drain(collections.deque([c])) == ([c], False)
    assert serving.drain(collections.deque()) == ([], False)


def test_the_openai_client_gets_what_transcribe_py_gives(server, tiny_model, tmp_path):
    client, path = server.client(), FILES[0]
    assert [m.id for m in client.models.list()] == [tiny_model.name]
    record = offline(tiny_model, path, tmp_path, ".jsonl", "--timestamps")
    with open(path, "rb") as audio:
        plain = client.audio.transcriptions.create(model=tiny_model.name, file=audio, language="ru")
    assert plain.text == record["text"] and record["text"]
    with open(path, "rb") as audio:
        verbose = client.audio.transcriptions.create(
            model=tiny_model.name,
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert verbose.text == record["text"] and verbose.duration == record["duration"]
    assert [w.model_dump() for w in verbose.words] == record["words"]
    assert " ".join(s.text for s in verbose.segments) == record["text"]
    for suffix in ("srt", "vtt"):
        with open(path, "rb") as audio:
            subtitles = client.audio.transcriptions.create(model=tiny_model.name, file=audio, response_format=suffix)
        assert subtitles == offline(tiny_model, path, tmp_path, "." + suffix) and "-->" in subtitles
    with open(path, "rb") as audio:
        text = client.audio.transcriptions.create(model=tiny_model.name, file=audio, response_format="text")
    assert text == record["text"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_transcript(server, tiny_model, tmp_path, speech_like):
    """24 requests at once, of 6 lengths (one chunked: over --chunk_length_s 30 s) each gets transcribe.py's
    transcript of its own file, and the model ran them in batches of several."""
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([speech_like(20, 1), speech_like(17, 2)]), 16000)
    paths = [*FILES[:5], long]
    expected = {str(p): offline(tiny_model, p, tmp_path, ".jsonl")["text"] for p in paths}
    assert len(set(expected.values())) == len(paths)  # different transcripts: a mix-up would show

    def post(path):
        with open(path, "rb") as audio:
            response = requests.post(
                server.url + "/v1/audio/transcriptions",
                files={"file": audio},
                data={"model": tiny_model.name},
                timeout=120,
            )
        assert response.status_code == 200, response.text
        return str(path), response.json()["text"]

    before = len(server.service.batcher.batch_sizes)
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(post, paths * 4))
    assert all(text == expected[path] for path, text in results)
    sizes = list(server.service.batcher.batch_sizes)[before:]
    assert sum(sizes) == 24 and max(sizes) > 1 and max(sizes) <= 4


class SlowUpload:
    """A transcription request whose body arrives in two parts, over a raw socket: entering sends the headers and
    the first half, `finish()` the rest and reads the answer (status, JSON body); leaving closes the socket, so
    that a failing test never leaves the server waiting for the upload."""

    def __init__(self, url, model, path):
        self.address, head, body = raw_upload(url, model, path, "Connection: close")
        self.message = head + body

    def __enter__(self):
        self.socket = socket.create_connection(self.address, timeout=60)  # a server that never answers: a failure
        self.socket.sendall(self.message[: len(self.message) // 2])
        return self

    def finish(self):
        self.socket.sendall(self.message[len(self.message) // 2 :])
        answer = b""
        while chunk := self.socket.recv(65536):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def __exit__(self, *exc):
        self.socket.close()


def post_to(running, path):
    with open(path, "rb") as audio:
        return requests.post(
            running.url + "/v1/audio/transcriptions",
            files={"file": audio},
            data={"model": running.service.model_id},
            timeout=60,
        )


def test_an_idle_model_waits_only_for_requests_being_received(tiny_model):
    """--max_wait_ms 30000: a lone request is answered at once; one that comes while another is being uploaded
    waits for it, and both run as one batch as soon as the upload is complete, not after 30 s (the bounds leave
    a loaded machine seconds to spare, and are far below the 30 s wait)."""
    with Running(tiny_model, "--max_wait_ms", "30000") as running, ThreadPoolExecutor(1) as pool:
        begun = time.monotonic()
        assert post_to(running, FILES[0]).status_code == 200 and time.monotonic() - begun < 10
        batches = running.service.batcher.batch_sizes
        before = len(batches)
        with SlowUpload(running.url, tiny_model.name, FILES[1]) as slow:
            begun = time.monotonic()
            answer = pool.submit(post_to, running, FILES[0])
            time.sleep(1.0)
            assert not answer.done()  # held for the upload in progress
            status, body = slow.finish()
            assert status == 200 and body["text"] and answer.result().status_code == 200
            assert time.monotonic() - begun < 15
        assert list(batches)[before:] == [2]


def test_requests_that_queued_while_the_model_was_busy_run_at_once(tiny_model, monkeypatch):
    """--max_wait_ms 30000: a request that queued while the model was busy runs as soon as the model is free,
    without waiting for an upload still in progress (waiting would only idle the model)."""
    with Running(tiny_model, "--max_wait_ms", "30000") as running, ThreadPoolExecutor(2) as pool:
        transcriber = running.service.batcher.transcriber
        real, busy = transcriber.forward, threading.Event()

        def slow_model(waveforms):
            busy.set()
            time.sleep(2.0)
            return real(waveforms)

        monkeypatch.setattr(transcriber, "forward", slow_model)
        begun = time.monotonic()
        first = pool.submit(post_to, running, FILES[0])  # the model: busy for 2 s
        assert busy.wait(10)
        with SlowUpload(running.url, tiny_model.name, FILES[1]) as slow:
            second = pool.submit(post_to, running, FILES[2])  # queued while the model is busy
            assert first.result().status_code == 200 and second.result().status_code == 200
            assert time.monotonic() - begun < 15  # 2 s + 2 s of model, no 30 s wait for the upload
            assert slow.finish()[0] == 200


def recorded(spans, name, function, seconds=0.0):
    """`function`, sleeping `seconds` first, with (start, end, thread) of each call appended to spans[name]."""

    def call(*args):
        begun = time.monotonic()
        time.sleep(seconds)
        try:
            return function(*args)
        finally:
            spans.setdefault(name, []).append((begun, time.monotonic(), threading.current_thread()))

    return call


def test_only_the_model_thread_runs_the_model(tiny_model, monkeypatch):
    """The model is loaded by a thread that has ended once the app is made, and runs on the worker: torch's
    OpenMP keeps a team of threads for each thread that ran a parallel op, and a second team (the main thread's,
    left by loading) makes every barrier of the forward passes sleep (Service)."""
    spans = {}
    monkeypatch.setattr(serving, "load_backend", recorded(spans, "load", serving.load_backend))
    with Running(tiny_model) as running:
        transcriber = running.service.batcher.transcriber
        monkeypatch.setattr(transcriber, "forward", recorded(spans, "forward", transcriber.forward))
        assert post_to(running, FILES[0]).status_code == 200
        ((*_, loader),) = spans["load"]
        assert loader is not threading.main_thread() and not loader.is_alive()
        assert [thread for *_, thread in spans["forward"]] == [running.service.batcher.worker]


def test_uploads_are_decoded_between_forward_passes(tiny_model, monkeypatch):
    """Uploads that arrive while the model runs are decoded after its forward pass, on the batcher's decoding
    threads, not in their handlers during it (they would take cores from the model's threads)."""
    with Running(tiny_model, "--max_wait_ms", "0") as running, ThreadPoolExecutor(4) as pool:
        service, spans = running.service, {}
        monkeypatch.setattr(service, "samples", recorded(spans, "decode", service.samples))
        monkeypatch.setattr(
            service.batcher.transcriber,
            "forward",
            recorded(spans, "forward", service.batcher.transcriber.forward, seconds=1.0),
        )
        first = pool.submit(post_to, running, FILES[0])
        time.sleep(0.5)  # the model is busy with the first for 1 s: three more arrive meanwhile
        rest = [pool.submit(post_to, running, path) for path in FILES[1:4]]
        assert [r.result().status_code for r in [first, *rest]] == [200] * 4
        assert len(spans["decode"]) == 4 and len(spans["forward"]) >= 2
        for begun, ended, thread in spans["decode"]:
            assert thread.name.startswith("asr-decode")
            assert all(ended <= start or begun >= end for start, end, _ in spans["forward"])  # no overlap


def error_of(response):
    body = response.json()["error"]
    return response.status_code, body["message"]


def test_bad_requests_get_errors_that_name_the_problem(server, tiny_model, tmp_path):
    url, name = server.url + "/v1/audio/transcriptions", tiny_model.name
    audio = FILES[0].read_bytes()

    def post(data=None, files=None):
        return error_of(
            requests.post(url, data={"model": name, **(data or {})}, files=files or {"file": ("a.opus", audio)})
        )

    assert post({"response_format": "xml"}) == (400, "response_format 'xml': one of json, text, srt, vtt, verbose_json")
    assert post({"language": "en"})[0] == 400 and "Russian only" in post({"language": "en"})[1]
    assert post({"model": "whisper-1"})[1].startswith("model 'whisper-1' is not served here")
    assert post({"colour": "red"})[1].startswith("unknown field 'colour'")
    assert post({"temperature": "0.7"})[0] == 400
    assert (
        post({"timestamp_granularities[]": "word"})[1] == "timestamp_granularities[] needs response_format verbose_json"
    )
    assert post({"prompt": "салют"})[1].startswith("`prompt` carries hotwords, which need beam search")
    status, message = post(files={"file": ("notes.wav", b"RIFF not really a wav file")})
    assert status == 415 and message.startswith("notes.wav: cannot decode audio (")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((16000, 2), np.float32), 16000)
    assert post(files={"file": ("stereo.wav", stereo.read_bytes())}) == (400, "stereo.wav: 2 channels, expected mono")
    fast = tmp_path / "fast.wav"
    sf.write(fast, np.zeros(44100, np.float32), 44100)
    expected = "fast.wav: sampling rate 44100 Hz, expected 16000 Hz"
    assert post(files={"file": ("fast.wav", fast.read_bytes())}) == (400, expected)
    assert error_of(requests.post(url, json={"model": name}))[0] == 400  # not a multipart form
    assert error_of(requests.get(url)) == (405, "GET /v1/audio/transcriptions: Method Not Allowed")
    assert error_of(requests.get(server.url + "/v1/chat")) == (404, "GET /v1/chat: Not Found")
    # The openai client raises its own error type with the server's message.
    with pytest.raises(openai.BadRequestError, match="response_format"):
        server.client().audio.transcriptions.create(model=name, file=("a.opus", audio), response_format="xml")


def test_limits(tiny_model, tmp_path, speech_like):
    long = tmp_path / "long.wav"
    sf.write(long, speech_like(3.5, 0), 16000)
    with Running(tiny_model, "--max_audio_s", "3", "--max_upload_mb", "0.2") as running:
        url, name = running.url + "/v1/audio/transcriptions", tiny_model.name
        status, message = error_of(requests.post(url, data={"model": name}, files={"file": long.open("rb")}))
        assert status == 413 and message == "long.wav: 3.5 s of audio, over the limit of 3 s (--max_audio_s)"
        big = tmp_path / "big.wav"
        sf.write(big, speech_like(4, 0), 16000, subtype="FLOAT")  # 256 kB
        status, message = error_of(requests.post(url, data={"model": name}, files={"file": big.open("rb")}))
        assert status == 413 and "over the limit of 0.2 MiB (--max_upload_mb)" in message

        def chunked():  # no Content-Length: refused while it arrives, never read whole
            yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.wav\r\n\r\n"
            for _ in range(1000):
                yield bytes(65536)

        response = requests.post(url, data=chunked(), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert error_of(response) == (413, "the upload is over the limit of 0.2 MiB (--max_upload_mb)")
        short = tmp_path / "short.wav"
        sf.write(short, speech_like(2.5, 0), 16000)
        ok = requests.post(url, data={"model": name}, files={"file": short.open("rb")})
        assert ok.status_code == 200 and ok.headers["x-request-id"]
        assert requests.get(running.url + "/health").json() == {
            "status": "ok",
            "dtype": "float32",
            "torch_compile": False,
        }
        assert requests.get(running.url + "/ready").json() == {"status": "ready", "queued": 0, "max_queue": 256}


def test_a_full_queue_is_refused_and_a_client_that_leaves_frees_its_place(tiny_model, monkeypatch):
    """The model is held on the first recording; a second waits; a third finds the queue full (503 with
    Retry-After). The second's client leaves: its place is free at once, a fourth is admitted, and the model
    never runs the second."""
    gate, ran = threading.Event(), []
    with Running(tiny_model, "--max_queue", "2", "--max_batch_size", "1", "--max_wait_ms", "0") as running:
        batcher = running.service.batcher
        forward = batcher.transcriber.forward

        def held(waveforms):
            ran.append(len(waveforms[0]))
            gate.wait()
            return forward(waveforms)

        monkeypatch.setattr(batcher.transcriber, "forward", held)
        url, name = running.url + "/v1/audio/transcriptions", tiny_model.name

        def post(path, timeout=60):
            return requests.post(url, data={"model": name}, files={"file": path.open("rb")}, timeout=timeout)

        def wait_for(condition):
            for _ in range(500):
                if condition():
                    return
                time.sleep(0.01)
            raise AssertionError("timed out")

        pool = ThreadPoolExecutor(3)
        try:
            first = pool.submit(post, FILES[0])
            wait_for(lambda: len(ran) == 1)
            leaving = pool.submit(post, FILES[1], 5.0)  # gives up after 5 s (the checks below come first): it closes
            wait_for(lambda: batcher.admitted == 2)
            full = post(FILES[2], 10)
            assert full.status_code == 503 and full.headers["Retry-After"] == "1"
            assert "the server is busy: 2 recordings queued (--max_queue 2)" in full.json()["error"]["message"]
            assert requests.get(running.url + "/ready").status_code == 503
            with pytest.raises(requests.exceptions.ReadTimeout):
                leaving.result()
            wait_for(lambda: batcher.admitted == 1)  # freed while the model is still held
            fourth = pool.submit(post, FILES[3])
            wait_for(lambda: batcher.admitted == 2)
            gate.set()
            assert first.result().status_code == 200 and fourth.result().status_code == 200
        finally:  # a failure above must not leave the model held
            gate.set()
            pool.shutdown()
        lengths = {len(serving.read_audio(p)) for p in FILES[:4]}
        assert len(lengths) == 4
        assert ran == [len(serving.read_audio(FILES[0])), len(serving.read_audio(FILES[3]))]


def test_prompt_words_are_hotwords_of_that_request_only(tiny_model, tmp_path):
    from ebranchformer_ru import lm_building

    folder = tmp_path / "with_lm"
    shutil.copytree(tiny_model, folder)
    lm_building.build(folder)
    path = FILES[1]
    plain = offline(folder, path, tmp_path, ".jsonl", "--decoder", "lm")["text"]
    hot = offline(folder, path, tmp_path, ".jsonl", "--decoder", "lm", "--hotwords", "будильник")["text"]
    assert plain != hot  # the hotword changes this transcript: the test can see whether it was used
    with Running(folder, "--decoder", "lm") as running:
        client = running.client()
        with ThreadPoolExecutor(2) as pool:  # at once: one batch, two decoders
            got = pool.map(
                lambda prompt: (
                    client.audio.transcriptions.create(model=folder.name, file=path.open("rb"), prompt=prompt).text
                ),
                ["будильник", None],
            )
            assert list(got) == [hot, plain]
        with pytest.raises(openai.BadRequestError, match="prompt: "):
            client.audio.transcriptions.create(model=folder.name, file=path.open("rb"), prompt="hello")


def test_live_audio_gets_partials_and_the_offline_transcript_at_the_end(server, tiny_model, tmp_path, caplog):
    caplog.set_level("INFO", logger="ebranchformer_ru.serving")
    samples = serving.read_audio(FILES[2])
    wav = tmp_path / "same.wav"  # what the stream carries: 16-bit samples
    sf.write(wav, samples, 16000, subtype="PCM_16")
    record = offline(tiny_model, wav, tmp_path, ".jsonl", "--timestamps")
    messages = stream(server.url, samples)
    partials = [m for m in messages if m["type"] == "partial"]
    assert messages[-1] == {
        "type": "final",
        "text": record["text"],
        "words": record["words"],
        "duration": record["duration"],
    }
    durations = [m["duration"] for m in partials]  # the audio received so far: growing
    assert len(partials) >= 2 and durations == sorted(durations) and 0 < durations[-1] <= record["duration"]
    error = stream(server.url, samples[:8000], end=False)
    assert error[-1] == {"closed": 1008} and error[-2]["error"]["message"].startswith("unknown text message 'hello'")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ")]  # one line a stream
    assert [line.split()[2:3] + line.split()[-1:] for line in lines] == [
        ["status=final", f"audio={record['duration']:.2f}s"],
        ["status=error", "audio=0.50s"],
    ]


def test_live_partials_of_a_long_stream_keep_the_words_before_the_window(tiny_model):
    """With a 2 s window, a 6 s stream is decoded again only from its recent audio, and the words before are kept:
    every partial holds every word so far, once. The recogniser here reads words off the signal (each half
    second holds the number of its word), so that what a partial must hold is known exactly."""
    samples = np.repeat(np.arange(12) / 1000, 8000).astype(np.float32)  # word k: samples k / 1000
    calls = []

    async def recogniser(audio, decoder=None, reserved=False):
        calls.append(len(audio))
        numbers = np.round(audio * 1000).astype(int)
        words = [
            {
                "word": f"w{k}",
                "start": np.flatnonzero(numbers == k)[0] / 16000,
                "end": (np.flatnonzero(numbers == k)[-1] + 1) / 16000,
            }
            for k in dict.fromkeys(numbers.tolist())
        ]
        return {"text": " ".join(w["word"] for w in words), "words": words}

    with Running(tiny_model, "--stream_window_s", "2") as running:
        running.service.transcribe = recogniser
        messages = stream(running.url, samples, chunk_s=0.25, pause_s=0.12)
    final, partials = messages[-1], messages[:-1]
    assert final["text"] == " ".join(f"w{k}" for k in range(12)) and calls[-1] == len(samples)
    assert len(partials) >= 4 and max(calls[:-1]) <= 2 * 16000 < len(samples)  # partials: the window at most
    for partial in partials:
        heard = int(np.ceil(partial["duration"] * 2))  # words begun by then
        assert partial["text"] == " ".join(f"w{k}" for k in range(heard)), partial


@pytest.mark.slow
def test_sigterm_finishes_what_is_in_flight_then_exits(tiny_model, tmp_path):
    """serve.py in its own process: a request held in the batcher (waiting, --max_wait_ms 3000, for another being
    uploaded) and the upload in progress when SIGTERM comes are both answered; new connections are refused at
    once; then the process exits; one log line per request."""
    import signal
    import subprocess
    import sys

    from project import ROOT

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), str(tiny_model), "--port", str(port), "--max_wait_ms", "3000"],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        expected = [offline(tiny_model, path, tmp_path, ".jsonl")["text"] for path in FILES[:2]]
        with SlowUpload(url, tiny_model.name, FILES[1]) as slow, ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                requests.post,
                url + "/v1/audio/transcriptions",
                data={"model": tiny_model.name},
                files={"file": FILES[0].open("rb")},
                timeout=60,
            )
            time.sleep(1.0)  # the request waits in the batcher for the one being uploaded
            process.send_signal(signal.SIGTERM)
            for _ in range(40):  # the listening socket closes within a tick of uvicorn's loop (0.1 s)
                try:
                    requests.get(url + "/health", timeout=2)
                except requests.ConnectionError:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("new connections were still accepted 4 s after SIGTERM")
            assert slow.finish() == (200, {"text": expected[1]})
            assert answer.result().status_code == 200 and answer.result().json()["text"] == expected[0]
        # After the graceful stop uvicorn ends by the signal itself, as services are expected to.
        assert process.wait(timeout=30) == -signal.SIGTERM
    finally:
        process.kill()
    log = process.stderr.read()
    lines = [line for line in log.splitlines() if " request " in line]
    assert len(lines) == 2 and all("status=200" in line for line in lines), log
    held = next(line for line in lines if "audio=3.40s" in line)
    assert float(held.split("queue=")[1].split("s")[0]) > 0.8  # held past the SIGTERM


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's headless chromium through its chromedriver, with a real recording as the microphone."""
    webdriver = pytest.importorskip("selenium.webdriver")
    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if not (driver_path and chromium):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from project import SHARED_EXAMPLE

    microphone = SHARED_EXAMPLE / "001ce26c07c20eaa0d666b824c6c6924.wav"
    if not microphone.exists():  # a user's checkout: a recording of the embedded corpus instead
        microphone = tmp_path_factory.mktemp("mic") / "mic.wav"
        sf.write(microphone, serving.read_audio(FILES[4]), 16000, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow  # a browser process
def test_the_page_transcribes_an_upload_and_the_microphone(server, tiny_model, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").text == tiny_model.name)

    def state(driver):
        return driver.find_element(By.ID, "status").get_attribute("data-state")

    # Upload: decoded and resampled in the browser, sent as 16-bit WAV; the words are the API's for the file.
    wav = tmp_path / "upload.wav"
    sf.write(wav, serving.read_audio(FILES[0]), 16000, subtype="PCM_16")
    expected = requests.post(
        server.url + "/v1/audio/transcriptions",
        files={"file": wav.open("rb")},
        data={"model": tiny_model.name, "response_format": "verbose_json", "timestamp_granularities[]": "word"},
    ).json()
    browser.find_element(By.ID, "file").send_keys(str(wav))
    wait.until(lambda d: state(d) in ("done", "error"))
    assert state(browser) == "done", browser.find_element(By.ID, "status").text
    words = browser.find_elements(By.CSS_SELECTOR, "#transcript .word")
    assert [w.text for w in words] == [w["word"] for w in expected["words"]] and words
    unsure = [w["confidence"] < 0.5 for w in expected["words"]]  # marked for review (a random model: all of them)
    assert ["unsure" in w.get_attribute("class") for w in words] == unsure and any(unsure)
    player = "document.getElementById('player')"
    wait.until(lambda d: d.execute_script(f"return {player}.readyState") >= 1)  # its length is known
    browser.execute_script(f"{player}.currentTime = {player}.duration - 0.5")  # somewhere else first
    words[-1].click()  # plays from the word's start
    assert abs(browser.execute_script(f"return {player}.currentTime") - expected["words"][-1]["start"]) < 0.3
    assert not browser.execute_script(f"return {player}.paused")

    # Microphone: live partials over the WebSocket while recording, then the final transcript, which is what the
    # API gives for the recording the page keeps (the audio it streamed).
    browser.find_element(By.ID, "record").click()
    wait.until(lambda d: int(d.find_element(By.ID, "transcript").get_attribute("data-partials") or 0) >= 3)
    browser.find_element(By.ID, "record").click()
    wait.until(lambda d: state(d) in ("done", "error"))
    assert state(browser) == "done", browser.find_element(By.ID, "status").text
    shown = [w.text for w in browser.find_elements(By.CSS_SELECTOR, "#transcript .word")]
    recorded = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('player').src).then((r) => r.arrayBuffer())
            .then((b) => done(Array.from(new Uint8Array(b))));""")
    again = requests.post(
        server.url + "/v1/audio/transcriptions",
        files={"file": ("mic.wav", bytes(recorded))},
        data={"model": tiny_model.name},
    ).json()
    assert " ".join(shown) == again["text"] and shown
    assert len(recorded) > 16000 * 2 * 1.0  # over a second of audio was recorded


ANOTHER_SITE = """<!doctype html><script>
window.results = {};
const api = "API", form = new FormData();
form.append("model", "MODEL"); form.append("file", new Blob([new Uint8Array(64)]), "a.wav");
fetch(api + "/v1/models").then((r) => r.status, () => "blocked").then((s) => { results.get = s; });
fetch(api + "/v1/audio/transcriptions", { method: "POST", body: form })
  .then((r) => r.status, () => "blocked").then((s) => { results.post = s; });
const socket = new WebSocket(api.replace("http", "ws") + "/v1/audio/stream");
socket.onopen = () => { results.stream = "open"; socket.close(); };
socket.onerror = () => { results.stream = results.stream || "refused"; };
</script>"""


class AnotherSite:
    """A page of another origin (a second local server, on another port) that calls the API at `api` and opens a
    live stream there; `results(browser)` is what it could do."""

    def __init__(self, model):
        import http.server

        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(ANOTHER_SITE.replace("API", site.api).replace("MODEL", model).encode())

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin, self.api = f"http://127.0.0.1:{self.httpd.server_address[1]}", None
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def results(self, browser):
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(self.origin + "/")
        WebDriverWait(browser, 30).until(lambda d: len(d.execute_script("return window.results") or {}) == 3)
        return browser.execute_script("return window.results")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


@pytest.mark.slow  # a browser process
def test_a_page_of_another_origin_cannot_use_the_server(server, tiny_model, browser):
    """A page served from another origin, in headless chromium, can neither read the API nor open a live stream:
    the server refuses its Origin (403, counted as such), not only the browser its answers. With --allowed_origins
    naming it, it can (CORS headers). The server's own page can: test_the_page_transcribes_an_upload_and_...."""
    rejected = server.service.metrics.rejected.labels("origin")
    before = rejected._value.get()
    with AnotherSite(tiny_model.name) as site:
        site.api = server.url
        assert site.results(browser) == {"get": "blocked", "post": "blocked", "stream": "refused"}
        assert rejected._value.get() - before == 3  # refused by the server, not only unread by the browser
        with Running(tiny_model, "--allowed_origins", site.origin) as allowing:
            site.api = allowing.url
            assert site.results(browser) == {"get": 200, "post": 415, "stream": "open"}


@pytest.mark.slow  # a browser process
def test_the_page_asks_for_the_api_key_and_then_transcribes(tiny_model, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wav = tmp_path / "upload.wav"
    sf.write(wav, serving.read_audio(FILES[0]), 16000, subtype="PCM_16")
    with Running(tiny_model, "--api_key", "page-key") as running:
        wait = WebDriverWait(browser, 60)
        browser.get(running.url + "/")
        wait.until(lambda d: d.find_element(By.ID, "keyline").is_displayed())
        browser.find_element(By.ID, "key").send_keys("page-key\n")
        wait.until(lambda d: d.find_element(By.ID, "model").text == tiny_model.name)
        browser.find_element(By.ID, "file").send_keys(str(wav))
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: status.get_attribute("data-state") in ("done", "error"))
        assert status.get_attribute("data-state") == "done", status.text
        browser.execute_script("sessionStorage.clear()")


@pytest.mark.slow  # an ONNX export
def test_an_onnx_export_is_served_as_transcribe_py_runs_it(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from ebranchformer_ru import onnx_export

    folder = tmp_path / "onnx"
    onnx_export.export(tiny_model, folder, check_audio=FILES[:2], log=lambda *a: None)
    record = offline(folder, FILES[3], tmp_path, ".jsonl", "--timestamps")
    with Running(folder) as running:
        assert type(running.service.backend).__name__ == "OnnxBackend"
        result = running.client().audio.transcriptions.create(
            model="onnx", file=FILES[3].open("rb"), response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert result.text == record["text"] and [w.model_dump() for w in result.words] == record["words"]


def test_bad_command_lines_are_named(tmp_path, capsys):
    """A folder that is no model exits 1 with one `error:` line, before anything is served; options that cannot be
    exit 2 with the usage."""
    assert command.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "neither a model folder (config.json) nor an ONNX export" in err
    assert len(err.splitlines()) == 1, err
    assert command.main([str(tmp_path / "nowhere")]) == 1
    assert f"no model folder {tmp_path / 'nowhere'} here" in capsys.readouterr().err
    options = [
        ["--max_audio_s", "0"],
        ["--max_wait_ms", "-1"],
        ["--max_upload_mb", "nan"],
        ["--hotword_weight", "5"],
        ["--stream_window_s", "inf"],
        ["--quantized", "maybe"],
    ]
    for option in options:
        with pytest.raises(SystemExit) as exit:
            command.main([str(tmp_path), *option])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.startswith("usage: ") and option[0] in err, err


def test_trust_remote_code_reaches_the_model_loading(tiny_model, monkeypatch, capsys):
    loads = []

    def load(*args):
        loads.append(args)
        raise serving.InferenceError("stop here: nothing is served")

    monkeypatch.setattr(serving, "load_backend", load)
    for option, expected in ([], False), (["--trust_remote_code"], True), (["--trust_remote_code", "false"], False):
        assert command.main([str(tiny_model), *option]) == 1
        assert loads[-1][4] is expected  # (model, device, threads, quantized, trust_remote_code, dtype)
    assert "error: stop here: nothing is served" in capsys.readouterr().err
