"""Reading NeMo/Golos manifests: one JSON object per line with `audio_filepath` (relative to the manifest's
folder, or absolute), `text`, `duration` and sometimes `id`. The one reader of the project: the Golos builder,
its preparation, transcription, the ONNX export's checks and the LM builder all read manifests through it, so
that a bad line is reported the same way everywhere, by file and line."""

import json
import os

from .errors import Error


class ManifestError(Error, ValueError):
    """A bad manifest line or audio file; the message names the manifest, the line and the fault,
    `reason` is the kind of fault (what skip reports count by)."""

    def __init__(self, where: str, reason: str, detail: str = ""):
        super().__init__(f"{where}: {reason}{detail}")
        self.reason = reason
        self.detail = detail


def audio_path(manifest, audio_filepath: str) -> str:
    """Where a manifest's `audio_filepath` points: relative to the manifest's folder, or absolute."""
    return os.path.normpath(os.path.join(os.path.dirname(str(manifest)), audio_filepath))


def parse_line(line: bytes, where: str) -> dict:
    """One manifest line (bytes, so that a line that is not UTF-8 is named by its byte) as a JSON object with
    an `audio_filepath` string; `where` ("manifest, line N") prefixes every error."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        byte = line[error.start : error.start + 1]
        raise ManifestError(
            where, "not UTF-8", f" (byte {error.start + 1} is {byte!r}): save the manifest as UTF-8"
        ) from None
    except json.JSONDecodeError as error:
        raise ManifestError(where, "not valid JSON", f" ({error.msg})") from None
    if not isinstance(entry, dict):
        raise ManifestError(where, "not a JSON object", f", got {type(entry).__name__}")
    if not isinstance(entry.get("audio_filepath"), str):
        if "audio_filepath" not in entry:
            raise ManifestError(where, "missing key 'audio_filepath'")
        raise ManifestError(where, "'audio_filepath' is not a string", f": {entry['audio_filepath']!r}")
    return entry


def read_manifest(path):
    """(line number, entry) for every non-blank line of a manifest, in order; raises `ManifestError` naming the
    manifest and line of the first bad line, or the manifest when it cannot be read or has no lines."""
    if not os.path.isfile(path):
        raise ManifestError(str(path), "manifest not found")
    lines_read = 0
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            lines_read += 1
            yield number, parse_line(line, f"{path}, line {number}")
    if lines_read == 0:
        raise ManifestError(str(path), "empty manifest", ": it has no lines")
