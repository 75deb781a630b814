"""The audio checks of a preparation, in parallel and restartable: the expensive part of preparing Golos.

Preparing the 1.1 M-line train manifest means one header read per file. `verify_manifest` splits the
manifest into shards of `SHARD_LINES` lines (by byte offset, so that a worker seeks straight to its
shard), checks each shard's files in a pool of `num_proc` processes and saves each shard's results as soon
as it is done, atomically (a temporary file, then a rename), in a folder keyed on the manifest (path, size,
modification time), the checks asked for and this code. A preparation that is killed midway therefore
restarts with the shards that are not saved yet; a half-written shard is never read. The builder then
writes the Arrow cache from these results in one process (manifest order, duplicate ids, reports), and
the shards are deleted once the cache is complete.

Per line a shard keeps: a status (`UNCHECKED`: a line the builder will report itself, `MEASURED`: the
audio's duration is known, `EXISTS`: the file is there and its duration is the manifest's, `FAILED`: an
audio fault, kept as reason and detail), the duration, and the file's size and modification time (the
stamps that `load_golos(..., recheck_audio=True)` compares on a cached load).
"""

import hashlib
import json
import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import soundfile as sf

from ebranchformer_ru.manifest import ManifestError, audio_path, parse_line

SAMPLING_RATE = 16000
SHARD_LINES = 20000
UNCHECKED, MEASURED, EXISTS, FAILED = 0, 1, 2, 3


def shard_offsets(manifest: str, shard_lines: int) -> list:
    """(byte offset, first line number, number of lines) of each shard of the manifest."""
    shards, offset, number = [], 0, 0
    start, start_number = 0, 1
    with open(manifest, "rb") as lines:
        for line in lines:
            number += 1
            offset += len(line)
            if number - start_number + 1 == shard_lines:
                shards.append((start, start_number, shard_lines))
                start, start_number = offset, number + 1
    if number >= start_number:
        shards.append((start, start_number, number - start_number + 1))
    return shards


def manifest_key(manifest: str, verify_audio: str, shard_lines: int | None = None) -> str:
    shard_lines = shard_lines or SHARD_LINES
    digest = hashlib.sha256()
    for code in ("golos.py", "prepare.py"):
        digest.update(Path(__file__).with_name(code).read_bytes())
    info = os.stat(manifest)
    digest.update(
        f"{os.path.abspath(manifest)}:{info.st_size}:{info.st_mtime_ns}:{verify_audio}:{shard_lines}".encode()
    )
    return digest.hexdigest()[:16]


def verify_manifest(manifest, verify_audio, work_dir, num_proc=None, shard_lines=None, log=None) -> dict:
    """Check every file the manifest lists, shard by shard, reusing the shards saved by an earlier,
    interrupted run; returns the results of every line (arrays indexed by line number - 1)."""
    shard_lines = shard_lines or SHARD_LINES
    os.makedirs(work_dir, exist_ok=True)
    shards = shard_offsets(manifest, shard_lines)
    paths = [os.path.join(work_dir, f"shard-{k:05d}.npz") for k in range(len(shards))]
    todo = [(manifest, *shard, verify_audio, path) for shard, path in zip(shards, paths) if not os.path.exists(path)]
    if log and len(todo) < len(shards):
        log(f"{manifest}: {len(shards) - len(todo)} of {len(shards)} shards already checked (an earlier run)")
    num_proc = max(1, min(num_proc or os.cpu_count() or 1, len(todo) or 1))
    if num_proc == 1 or len(todo) <= 1:
        for task in todo:
            verify_shard(task)
    else:
        with multiprocessing.get_context("fork").Pool(num_proc) as pool:
            for _ in pool.imap_unordered(verify_shard, todo):
                pass
    parts = [np.load(path) for path in paths]
    results = {
        key: np.concatenate([part[key] for part in parts]) if parts else np.zeros(0)
        for key in ("status", "duration", "size", "mtime")
    }
    results["errors"] = {}
    for (_, first, _), part in zip(shards, parts):
        for index, fault in json.loads(str(part["errors"])).items():
            results["errors"][first - 1 + int(index)] = tuple(fault)
    return results


def verify_shard(task):
    """Check the files of one shard and save the results atomically (see the module's docstring)."""
    manifest, offset, _first, count, verify_audio, out = task
    status = np.zeros(count, np.int8)
    duration = np.full(count, np.nan)
    size = np.full(count, -1, np.int64)
    mtime = np.full(count, -1, np.int64)
    errors = {}
    with open(manifest, "rb") as lines:
        lines.seek(offset)
        for index in range(count):
            line = lines.readline()
            try:
                entry = parse_line(line, f"{manifest}")
                path = audio_path(manifest, entry["audio_filepath"])
                stated = entry.get("duration")
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the builder reports the line
            try:
                if verify_audio != "none" or not isinstance(stated, (int, float)) or isinstance(stated, bool):
                    duration[index] = check_audio(path, verify_audio)
                    status[index] = MEASURED
                else:
                    info = os.stat(path)
                    if not stat.S_ISREG(info.st_mode):
                        raise ManifestError("", "audio file not found", f": {path}")
                    status[index] = EXISTS
            except ManifestError as error:
                status[index] = FAILED
                errors[index] = (error.reason, error.detail)
                continue
            except OSError:
                status[index] = FAILED
                errors[index] = ("audio file not found", f": {path}")
                continue
            try:
                info = os.stat(path)
                size[index], mtime[index] = info.st_size, info.st_mtime_ns
            except OSError:
                pass
    tmp = f"{out}.tmp-{os.getpid()}.npz"
    np.savez(tmp, status=status, duration=duration, size=size, mtime=mtime, errors=np.array(json.dumps(errors)))
    os.replace(tmp, out)
    return out


def check_audio(path, verify_audio, where=""):
    """The audio's duration in seconds: the header's, or with verify_audio "full" the decoded one.
    One header read per file (no separate existence check: a missing file is told apart only on failure)."""
    try:
        info = sf.info(path)
        frames = info.frames
        if verify_audio == "full":
            samples, _ = sf.read(path, dtype="float32")
            frames = len(samples)
            finite = np.isfinite(samples)
            if not finite.all():
                bad = finite.size - np.count_nonzero(finite)
                raise ManifestError(where, "non-finite audio samples", f": {path} has {bad} NaN or infinite values")
    except ManifestError:
        raise
    except Exception as error:  # libsndfile raises several types for unreadable data
        if not os.path.exists(path):
            raise ManifestError(where, "audio file not found", f": {path}") from None
        if os.path.isdir(path):
            raise ManifestError(where, "audio file not found", f": {path} is a folder") from None
        raise ManifestError(where, "cannot decode audio file", f" {path} ({error})") from None
    if info.samplerate != SAMPLING_RATE:
        raise ManifestError(
            where, "wrong sampling rate", f": {path} is at {info.samplerate} Hz, expected {SAMPLING_RATE}"
        )
    if info.channels != 1:
        raise ManifestError(where, "not mono", f": {path} has {info.channels} channels")
    if frames == 0:
        raise ManifestError(where, "audio file has no samples", f": {path}")
    return frames / info.samplerate
