"""Resumable transcription runs: an output is written once, whole, with a sidecar that records what made it; the
transcripts of a run in progress are journaled beside it (one journal per process, locked while the run writes), so
that a stopped run continues where it stopped and never mixes transcripts made with other settings."""

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from .errors import Error, UsageError
from .files import atomic_write_files

SETTINGS_KEY = "transcribe.py settings"  # the journal's first line: what makes its transcripts


def check_output_place(output: Path, items, inputs, suffix):
    """Refuses, before any work, an output that is a folder or one of the inputs (never overwritten, with or
    without --overwrite), a place where no file can be made, and names .txt lines could not hold."""
    if output.is_dir():
        raise Error(f"--output {output} is a folder; name a file")
    target = os.path.realpath(output)
    for path in [*inputs, *(item["path"] for item in items)]:
        if os.path.realpath(path) == target:
            raise Error(
                f"--output {output} is one of the inputs; an input is never overwritten, with or without "
                "--overwrite: choose another --output"
            )
    for parent in [output.parent, *output.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise Error(f"--output {output}: {parent} is a file, not a folder")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Error(f"--output {output}: cannot make its folder ({error.strerror})") from None
    if suffix == ".txt":
        for item in items:
            if any(c in item["path"] for c in "\t\n\r"):
                raise UsageError(
                    f"{item['path']!r}: a file name with a tab or line break cannot be written to a .txt "
                    "output (path<TAB>text lines) and read back; use a .jsonl output"
                )


@contextlib.contextmanager
def locked(journal: Path, output: Path):
    """The journal, open for appending and locked for this run: a second transcribe.py writing the same output
    is refused instead of replacing the first one's transcripts."""
    for _ in range(2):
        try:
            file = open(journal, "a+", encoding="utf-8")
        except OSError as error:
            raise Error(f"--output {output}: cannot write in {output.parent} ({error.strerror})") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise Error(
                f"another transcribe.py is writing {output} now (its journal {journal.name} is locked); "
                "wait for it to finish, or choose another --output"
            ) from None
        if journal.exists() and os.stat(journal).st_ino == os.fstat(file.fileno()).st_ino:
            break
        file.close()  # the run that held it finished and removed it meanwhile: open the new one
    else:
        raise Error(f"the journal {journal} keeps being replaced by another transcribe.py; try again")
    try:
        yield file
    finally:
        file.close()  # and the lock with it


def journal_path(output: Path, rank: int = 0) -> Path:
    """The journal of one process: rank 0's is the one-process journal, so that a run of one process and one of
    several refuse each other while either writes `output`."""
    return output.with_name(
        f".{output.name}.journal.jsonl" if rank == 0 else f".{output.name}.journal.rank{rank}.jsonl"
    )


def journals(output: Path) -> list[Path]:
    """Every journal of `output` there is, rank 0's first, then the others' by rank: those of this run and of an
    interrupted one, whatever its number of processes."""
    first, prefix = journal_path(output), f".{output.name}.journal.rank"
    others = []
    if output.parent.is_dir():
        for path in output.parent.iterdir():
            number = path.name[len(prefix) : -len(".jsonl")]
            if path.name.startswith(prefix) and path.name.endswith(".jsonl") and number.isdigit():
                others.append((int(number), path))
    return ([first] if first.exists() else []) + [path for _, path in sorted(others)]


def sidecar(output: Path) -> Path:
    """What made an output: its settings and the size and time of the file they made."""
    return output.with_name(f".{output.name}.transcribe.json")


def write_output(output: Path, text: str, settings: dict):
    """The output and what made it (its settings and the output's SHA-256), written together: both or neither."""
    record = {"settings": settings, "output_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic_write_files({output: text, sidecar(output): json.dumps(record, ensure_ascii=False, indent=1) + "\n"})


def check_settings(where, made_with: dict, settings: dict):
    different = sorted(k for k in set(made_with) | set(settings) if made_with.get(k) != settings.get(k))
    if different:
        change = "; ".join(f"{k}: {made_with.get(k)!r} then, {settings.get(k)!r} now" for k in different)
        raise Error(
            f"{where} was made with other settings ({change}); its transcripts would be mixed with "
            "this run's: pass --overwrite to start over, or choose another --output"
        )


def read_done(output: Path, suffix: str, settings: dict) -> list[dict]:
    """Records an earlier complete run with these settings wrote to `output` (for .srt/.vtt: the recording);
    refuses an output made otherwise, or not by transcribe.py."""
    if not output.is_file():
        return []
    made = sidecar(output)
    try:
        record = json.loads(made.read_text(encoding="utf-8"))
        made_with, fingerprint = record["settings"], record["output_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise Error(
            f"{output} exists, with no record of what made it ({made.name} is missing or damaged: not "
            "written by this transcribe.py); pass --overwrite to replace it, or choose another "
            "--output"
        ) from None
    if fingerprint != hashlib.sha256(output.read_bytes()).hexdigest():
        raise Error(
            f"{output} changed since transcribe.py wrote it; pass --overwrite to replace it, or choose another --output"
        )
    check_settings(output, made_with, settings)
    if suffix in (".srt", ".vtt"):
        return [{"path": settings["recording"]}]
    records = []
    with open(output, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise Error(f"{output}:{number}: not JSON; pass --overwrite to replace the file") from None
                if not isinstance(record, dict) or "path" not in record or "text" not in record:
                    raise Error(f"{output}:{number}: no path and text; pass --overwrite to replace the file")
            else:
                path, tab, text = line.rstrip("\n").partition("\t")
                if not tab:
                    raise Error(f"{output}:{number}: not 'path<TAB>text'; pass --overwrite to replace the file")
                record = {"path": path, "text": text}
            records.append(record)
    return records


def read_journal(journal: Path, settings: dict) -> tuple[list[dict], int]:
    """Records of an interrupted run with these settings, and the byte offset after the last whole line (a
    line cut off mid-write is left out, and the caller cuts it off the file before appending, so that it never
    hides the lines after it); refuses a journal of a run with other settings."""
    records, made_with, end = [], None, 0
    with open(journal, "rb") as file:
        for number, line in enumerate(file):
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                break  # the line being written when the run stopped
            if not line.endswith(b"\n"):
                break  # whole JSON but no line end: the write stopped just before it
            end += len(line)
            if number == 0 and isinstance(record, dict) and SETTINGS_KEY in record:
                made_with = record[SETTINGS_KEY]
            elif isinstance(record, dict) and "path" in record:
                records.append(record)
    if records:
        if made_with is None:
            raise Error(
                f"{journal} holds transcripts of an interrupted run with no record of its settings; "
                "pass --overwrite to start over"
            )
        check_settings(f"the interrupted run in {journal}", made_with, settings)
    return records, end


def read_journals(output: Path, own: Path, settings: dict) -> tuple[list[dict], int, bool]:
    """The records of every journal of `output` (`journals`), each recording once; the byte offset after the last
    whole line of this process's journal `own` and whether it holds records."""
    records, seen, own_end, own_records = [], set(), 0, False
    for path in journals(output):
        found, end = read_journal(path, settings)
        if path == own:
            own_end, own_records = end, bool(found)
        for record in found:
            if (key := os.path.abspath(record["path"])) not in seen:
                seen.add(key)
                records.append(record)
    return records, own_end, own_records
