"""serve.py's app in a thread of the test process, as the command runs it (`serving.server`), on a free port."""

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import requests
from project import CORPUS

from ebranchformer_ru import serving
from ebranchformer_ru.commands import serve as command

FIRST = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[0]


def raw_upload(url, model, path, *headers) -> tuple[tuple[str, int], bytes, bytes]:
    """A transcription request for a raw socket: (host, port), its head (with `headers` lines) and its body."""
    prepared = requests.Request(
        "POST", url + "/v1/audio/transcriptions", data={"model": model}, files={"file": (path.name, path.read_bytes())}
    ).prepare()
    host, port = url.removeprefix("http://").split(":")
    lines = [f"Host: {host}", *headers, f"Content-Type: {prepared.headers['Content-Type']}"]
    lines.append(f"Content-Length: {len(prepared.body)}")
    head = "POST /v1/audio/transcriptions HTTP/1.1\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return (host, int(port)), head.encode(), prepared.body


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """`with Running(model, *serve_options) as running:` the server, answering at `running.url`."""

    def __init__(self, model, *options):
        self.args = command.build_parser().parse_args([str(model), "--port", str(free_port()), *options])
        self.app = serving.make_app(self.args)
        self.service = self.app.state.service
        self.server = serving.server(self.app, self.args)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.args.port}"

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join()

    def post(self, path=None, timeout=60, **data):
        """A transcription request for the audio file at `path` (default: the embedded corpus's first crowd
        recording), with form fields `data`."""
        path = path or FIRST
        with open(path, "rb") as audio:
            return requests.post(
                self.url + "/v1/audio/transcriptions",
                files={"file": (Path(path).name, audio)},
                data={"model": self.service.model_id, **data},
                timeout=timeout,
            )

    def get_json(self, path: str):
        return requests.get(self.url + path, timeout=10).json()

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)


def stream(url, samples, chunk_s=0.1, pause_s=0.05, end=True):
    """Sends 16-bit PCM over the live endpoint in chunks; returns the messages received."""
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    pcm = (np.clip(np.round(samples * 32768), -32768, 32767)).astype("<i2").tobytes()
    step = int(16000 * chunk_s) * 2
    messages = []
    with connect(url.replace("http", "ws") + "/v1/audio/stream") as ws:
        for start in range(0, len(pcm), step):
            ws.send(pcm[start : start + step])
            time.sleep(pause_s)
        ws.send(json.dumps({"type": "end"}) if end else "hello")
        try:
            for message in ws:
                messages.append(json.loads(message))
        except ConnectionClosedError as closed:  # an error: its code, after the message that names it
            messages.append({"closed": closed.rcvd.code})
    return messages
