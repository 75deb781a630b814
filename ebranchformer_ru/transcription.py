"""Transcribe audio files, folders and NeMo/Golos manifests with a trained model folder or an ONNX export: the job
of `ebranchformer-transcribe` (`ebranchformer_ru.commands.transcribe`).

    ebranchformer-transcribe outputs/mini recordings/ --output out.jsonl
    ebranchformer-transcribe outputs/mini_onnx ebranchformer_ru/golos/golos_mini/test_opus/crowd/manifest.jsonl --output crowd.txt
    ebranchformer-transcribe outputs/mini talk.wav --output talk.srt

    from ebranchformer_ru.transcription import transcribe
    transcribe("outputs/mini", ["recordings/"], "out.jsonl", timestamps=True)  # 0, or 1 when a file failed

MODEL is a folder saved by `train_ctc.py`/`convert_checkpoint.py` (run with PyTorch) or one made by
`export_onnx.py` (run with ONNX Runtime; torch is then never imported). INPUT is any mix of audio files,
folders (searched recursively for `--extensions`) and manifests (`.json`/`.jsonl`, one JSON object per line
with `audio_filepath`, relative to the manifest's folder, as NeMo and Golos write them).

The format follows `--output`'s extension: `.jsonl` (path, text, duration; `words` with start and end times
with `--timestamps`; the manifest's `text` as `reference`), `.txt` (path TAB text), `.srt`/`.vtt`
(subtitles of one recording, cut at pauses). Without `--output` the transcripts go to stdout.

Files are read and batched by length; files longer than `--chunk_length_s` are cut into overlapping chunks
whose overlaps are dropped before decoding, as the Transformers ASR pipeline does. A file that cannot be
read is reported with the reason and skipped (exit status 1 at the end); the others are transcribed.
Progress is journaled next to the output after every batch, and the output is written once, complete, at
the end (a temporary file renamed into place): a run that stops leaves the earlier output untouched, and
rerunning the same command skips what the journal and the output already hold.

Under `torchrun` or `accelerate launch` the processes first agree that they were started on one job (the model's
files by content, the options that change a transcript, the output, the input list with sizes and times:
`job_description`), or all refuse before anything is written. The files are split between the processes by
duration (`ebranchformer_ru.distributed`), each process journals its share in its own journal, and rank 0 writes
the output once all have finished: the same bytes as one process. Every process reads every journal, so a run
killed in one process or in all continues with any number of processes.
"""

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import distributed
from .audio import LOUD, AudioFile, read_audio
from .errors import Error, UsageError
from .formats import escaped, render
from .inference import Transcriber, load_backend, load_lm_decoder
from .manifest import audio_path, read_manifest
from .resumable import (
    SETTINGS_KEY,
    check_output_place,
    journal_path,
    journals,
    locked,
    read_done,
    read_journals,
    write_output,
)

AUDIO_EXTENSIONS = ("wav", "flac", "opus", "ogg", "mp3")
MANIFEST_EXTENSIONS = (".json", ".jsonl")
OUTPUT_FORMATS = (".jsonl", ".txt", ".srt", ".vtt")


# ---------------------------------------------------------------------------------------------- inputs


def collect_inputs(inputs, extensions) -> list[dict]:
    """[{"path", "reference"?}] in the order given, each recording once."""
    items, seen = [], set()
    extensions = {"." + e.lower().lstrip(".") for e in extensions}

    def add(path, reference=None):
        key = os.path.abspath(path)
        if key in seen:
            return
        seen.add(key)
        items.append({"path": str(path)} | ({"reference": reference} if reference is not None else {}))

    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions and p.is_file())
            if not found:
                print(
                    f"warning: {given}: no files with extensions {sorted(extensions)} in this folder", file=sys.stderr
                )
            for p in found:
                add(p)
        elif path.suffix.lower() in MANIFEST_EXTENSIONS:
            if not path.is_file():
                raise Error(f"{given}: manifest not found")
            for _, entry in read_manifest(path):
                text = entry.get("text")
                add(audio_path(path, entry["audio_filepath"]), text if isinstance(text, str) else None)
        elif path.is_file():
            add(path)
        elif path.exists():
            raise Error(f"{given}: not a file or folder")
        else:
            raise Error(f"{given}: no such file or folder")
    return items


# ---------------------------------------------------------------------------------------------- outputs


def job_description(options, items, timestamps) -> dict:
    """What makes a run's output as this process sees it, for the processes to agree on before any writes
    (`distributed.agree`): the model's files by content (two copies of one model agree), the decoder and every
    option that changes a transcript (not --batch_size, --device or --threads, which give the same ones), the
    output, and each input as given with its file's size and modification time, and the working folder where
    names are relative."""
    described = {
        "model": distributed.model_digest(options.model),
        "--decoder": options.decoder,
        "--hotwords": options.hotwords,
        "--hotword_weight": options.hotword_weight,
        "--timestamps": timestamps,
        "--chunk_length_s": options.chunk_length_s,
        "--stride_length_s": options.stride_length_s,
        "--quantized": options.quantized,
        "--overwrite": options.overwrite,
        "--output": None if options.output is None else os.path.abspath(options.output),
        "inputs": [[item["path"], distributed.file_facts(item["path"]), item.get("reference")] for item in items],
    }
    if options.decoder == "lm":
        described["language model"] = distributed.language_model_digest(options.model)
    if any(not os.path.isabs(item["path"]) for item in items):
        described["working folder"] = os.getcwd()
    return described


def run_settings(options, items, suffix, timestamps) -> dict:
    """What makes the transcripts of a run: an output or journal made with other settings is never resumed
    into (the records of two models or decoders would be mixed in one file)."""
    model = Path(options.model)
    names = ["model.safetensors", "pytorch_model.bin", "model.onnx", "model.int8.onnx", "config.json"]
    if options.decoder == "lm":
        names += [f"language_model/{p.name}" for p in sorted((model / "language_model").glob("*"))]
    files = {
        name: [(model / name).stat().st_size, (model / name).stat().st_mtime_ns]
        for name in names
        if (model / name).is_file()
    }
    settings = {
        "model": os.path.abspath(model),
        "model_files": files,
        "decoder": options.decoder,
        "hotwords": options.hotwords,
        "hotword_weight": options.hotword_weight,
        "quantized": options.quantized,
        "timestamps": timestamps,
        "chunk_length_s": options.chunk_length_s,
        "stride_length_s": options.stride_length_s,
    }
    if any(not os.path.isabs(item["path"]) for item in items):  # records hold paths as given
        settings["working_directory"] = os.getcwd()
    if suffix in (".srt", ".vtt"):  # one recording's subtitles
        settings["recording"] = os.path.abspath(items[0]["path"])
    return settings


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """Files and audio hours done of the whole job with an ETA, through tqdm when it is installed. Every process
    counts its batches into `tally` (`distributed.Tally`), and the one `enabled` shows the job's totals: with
    several processes one bar counts every process's work once. Audio is counted in whole milliseconds, the sums
    of the same per-file figures as the total, so that the bar ends at its total exactly."""

    def __init__(self, files: int, total_ms: int, enabled: bool, tally=None):
        self.files, self.total_ms, self.enabled = files, total_ms, enabled
        self.tally = tally if tally is not None else distributed.Tally(distributed.ONE_PROCESS)
        self.done_files, self.done_ms, self.bar = 0, 0, None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self.start = time.monotonic()
            return
        self.bar = tqdm(
            total=total_ms,
            unit="h",
            unit_scale=1 / 3_600_000,  # shown in hours, counted in milliseconds
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}]{postfix}",
        )
        self.bar.set_postfix_str(f"files 0/{files}")

    def update(self, files: int, ms: int):
        """This process has done `files` more files, of `ms` milliseconds of audio (0, 0: show the job's totals)."""
        totals = self.tally.add(files=files, ms=ms)
        done_files, done_ms = min(totals["files"], self.files), min(totals["ms"], self.total_ms)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done_ms - self.done_ms)
        self.done_files, self.done_ms = done_files, done_ms
        if self.bar is not None:
            self.bar.set_postfix_str(f"files {done_files}/{self.files}")
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed * (self.total_ms - done_ms) / done_ms if done_ms else float("nan")
        print(
            f"files {done_files}/{self.files}, audio {done_ms / 3_600_000:.3f}/{self.total_ms / 3_600_000:.3f} h, "
            f"ETA {eta:.0f} s",
            file=sys.stderr,
        )

    def close(self):
        if self.bar is not None:
            self.update(0, 0)  # what the other processes did since this one's last batch
            self.bar.close()


def milliseconds(seconds: float) -> int:
    return round(seconds * 1000)


# ---------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Options:
    """What a run is asked for: `transcribe`'s parameters (`ebranchformer-transcribe --help` tells each)."""

    model: str
    inputs: list
    output: str | None = None
    batch_size: int = 16
    device: str = "cpu"
    threads: int | None = None
    decoder: str = "greedy"
    hotwords: list | None = None
    hotword_weight: float | None = None
    chunk_length_s: float = 30.0
    stride_length_s: float | None = None
    timestamps: bool = False
    quantized: bool = False
    trust_remote_code: bool = False
    extensions: tuple = AUDIO_EXTENSIONS
    overwrite: bool = False
    progress: bool = True


def check_options(options: Options):
    """Refuses options that contradict each other, before anything is read (`UsageError`)."""
    if (options.hotwords or options.hotword_weight is not None) and options.decoder != "lm":
        raise UsageError("--hotwords and --hotword_weight need --decoder lm")
    if options.output is not None and Path(options.output).suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"--output {options.output}: the extension must be one of {', '.join(OUTPUT_FORMATS)}")
    # Transcriber checks these too, but only once there is audio to transcribe: a run with nothing left to do
    # would accept them.
    if not 0 < options.chunk_length_s < float("inf"):
        raise UsageError(f"--chunk_length_s must be a positive number of seconds, got {options.chunk_length_s}")
    stride = options.stride_length_s
    if stride is not None and not 0 <= stride < options.chunk_length_s / 2:
        raise UsageError(f"--stride_length_s must be in [0, chunk_length_s / 2), got {stride}")


def transcribe(model, inputs, output=None, context=None, **options) -> int:
    """Transcribes `inputs` (audio files, folders, manifests) with `model` into `output` (.jsonl, .txt, .srt, .vtt;
    None: stdout), resuming what an earlier run with the same settings left; `options` are `Options`' fields.
    Returns 0, or 1 when a file failed (the others are transcribed); raises `UsageError` for contradictory
    options and `Error` for what stops the run. Several processes (`context`, default: from the launcher's
    environment) share the work."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs  # one input, not its characters
    options = Options(str(model), [str(given) for given in inputs], None if output is None else str(output), **options)
    check_options(options)
    context = distributed.Context.from_env() if context is None else context
    with distributed.process_group(context):
        return run(options, context)


def run(options, context=distributed.ONE_PROCESS) -> int:
    """One process, or one of several (`context`: under torchrun or accelerate launch): each transcribes its share
    and journals it; rank 0 merges every share into the output once all have finished."""
    items = distributed.together(context, lambda: collect_inputs(options.inputs, options.extensions))
    suffix = Path(options.output).suffix.lower() if options.output else None
    timestamps = options.timestamps or suffix in (".srt", ".vtt")
    # Before anything is written: every process was started on this job (one model, one set of options, one
    # list of inputs), or all refuse.
    distributed.agree(context, lambda: job_description(options, items, timestamps))
    if suffix in (".srt", ".vtt") and len(items) != 1:
        raise UsageError(
            f"--output {options.output}: a subtitle file holds one recording, and {len(items)} were given; "
            "transcribe several to .jsonl with --timestamps, or run once per recording"
        )

    output = Path(options.output) if options.output else None
    if output is None:
        if context.world_size > 1:
            raise UsageError(
                f"{context.world_size} processes need --output, the file their transcripts are merged "
                "into (stdout is for one process)"
            )
        return transcribe_all(options, items, timestamps, None, None, None, [], [])
    journal = journal_path(output, context.rank)
    with contextlib.ExitStack() as stack:
        problem, done, journaled, end, own_records, journal_file = None, [], [], 0, False, None

        def refuse(error: Error):  # nothing done: the journal this run made goes too
            if journal_file is not None and os.fstat(journal_file.fileno()).st_size == 0:
                journal.unlink(missing_ok=True)
            raise error

        try:  # every process reads (no process writes before all have read): all see the same work done
            check_output_place(output, items, options.inputs, suffix)
            journal_file = stack.enter_context(locked(journal, output))
            settings = run_settings(options, items, suffix, timestamps)
            if options.overwrite and context.is_main:
                mine = {journal_path(output, rank) for rank in range(context.world_size)}
                for path in journals(output):  # those of other processes of a run started over
                    if path not in mine:
                        path.unlink(missing_ok=True)
            elif not options.overwrite:
                done = read_done(output, suffix, settings)
                journaled, end, own_records = read_journals(output, journal, settings)
        except Error as error:
            if context.world_size == 1:
                refuse(error)
            problem = error
        finished = sorted({os.path.abspath(r["path"]) for r in done + journaled}) if context.world_size > 1 else []
        seen = context.all_gather((problem, hashlib.sha256("\n".join(finished).encode()).hexdigest()))
        if problems := [p for p, _ in seen if p]:
            refuse(problems[0])  # on every process: the launcher sees one failed run, not a hung one
        if len({digest for _, digest in seen}) > 1:
            refuse(
                Error(
                    f"the {context.world_size} processes see different transcripts done in {output} and its "
                    "journals: every process must see the output's folder (on several machines, a shared file "
                    "system)"
                )
            )
        journal_file.truncate(0 if options.overwrite else end)  # a line cut off mid-write goes: new lines start anew
        header_end = None  # where this run's header ends, if it wrote one
        if not own_records:
            journal_file.truncate(0)
            journal_file.write(json.dumps({SETTINGS_KEY: settings}, ensure_ascii=False) + "\n")
            journal_file.flush()
            header_end = os.fstat(journal_file.fileno()).st_size
        if suffix in (".srt", ".vtt") and done:
            if context.is_main:
                print(
                    f"{output} holds this recording's subtitles, made with these settings: nothing to do "
                    "(--overwrite to transcribe again)",
                    file=sys.stderr,
                )
            for path in journals(output) if context.is_main else [journal]:
                path.unlink(missing_ok=True)
            return 0
        try:
            return transcribe_all(
                options, items, timestamps, output, journal, journal_file, done, journaled, settings, context
            )
        except BaseException:
            # Stopped before its first transcript (a model folder that does not load): its journal, which holds
            # nothing, goes too.
            if header_end is not None and os.fstat(journal_file.fileno()).st_size == header_end:
                journal.unlink(missing_ok=True)
            raise


def transcribe_all(
    options,
    items,
    timestamps,
    output,
    journal,
    journal_file,
    done,
    journaled,
    settings=None,
    context=distributed.ONE_PROCESS,
) -> int:
    suffix = output.suffix.lower() if output else None
    finished = {os.path.abspath(r["path"]) for r in done + journaled}
    todo = [item for item in items if os.path.abspath(item["path"]) not in finished]
    skipped = len(items) - len(todo)
    several = context.world_size > 1

    # Headers only (fast): durations for batching by length, for the progress bar, and for sharing the work out
    # (several processes: each reads a share of the headers, and all split the files by the durations of all).
    failures, sized = [], []
    for item in todo[context.rank :: context.world_size]:
        if not os.path.isfile(item["path"]):
            failures.append((item["path"], "audio file not found"))
            continue
        try:
            info = sf.info(item["path"])
            sized.append((item, info.frames / info.samplerate))
        except Exception as error:
            failures.append((item["path"], f"cannot read audio ({error})"))
    for path, why in failures:
        print(f"error: {path}: {why}", file=sys.stderr)
    if several:
        position = {id(item): n for n, item in enumerate(todo)}
        durations = {}
        for share in context.all_gather({position[id(item)]: duration for item, duration in sized}):
            durations.update(share)
        everyone = sorted(durations)
        mine = distributed.split_by_duration([durations[n] for n in everyone], context.world_size)[context.rank]
        sized = [(todo[everyone[n]], durations[everyone[n]]) for n in mine]

    tally = distributed.Tally(context)  # every process's progress, for one bar
    device, threads = context.device(options.device), context.threads(options.threads)
    backend = transcriber = None
    if sized:  # nothing to transcribe: the model is not even loaded
        backend = load_backend(options.model, device, threads, options.quantized, options.trust_remote_code)
        decoder = None
        if options.decoder == "lm":
            decoder = load_lm_decoder(options.model, hotwords=options.hotwords, hotword_weight=options.hotword_weight)
        transcriber = Transcriber(
            backend, options.batch_size, options.chunk_length_s, options.stride_length_s, timestamps, decoder
        )

    started = time.monotonic()
    new_records, audio_seconds = [], 0.0
    job = list(durations.values()) if several else [duration for _, duration in sized]  # the whole job's audio
    progress = Progress(len(job), sum(map(milliseconds, job)), options.progress and context.is_main, tally)
    sized.sort(key=lambda pair: -pair[1])  # longest first: a batch holds similar lengths, memory peaks early
    try:
        index = 0
        while index < len(sized):
            # A batch: up to batch_size recordings, or one long recording that is cut into chunks.
            batch = [sized[index]]
            index += 1
            while (
                index < len(sized)
                and len(batch) < options.batch_size
                and sized[index][1] <= options.chunk_length_s
                and batch[0][1] <= options.chunk_length_s
            ):
                batch.append(sized[index])
                index += 1
            good, waveforms = [], []
            for item, duration in batch:
                try:
                    if duration > options.chunk_length_s:  # read a chunk at a time, never whole
                        waveforms.append(AudioFile(item["path"], backend.sampling_rate))
                        good.append(item)
                        continue
                    waveforms.append(read_audio(item["path"], backend.sampling_rate))
                    good.append(item)
                    if (peak := float(np.abs(waveforms[-1]).max())) > LOUD:
                        print(
                            f"\nwarning: {item['path']}: float samples peak at {peak:g}, far above 1: integer PCM "
                            "stored as floats? Its transcript will be wrong; scale the file",
                            file=sys.stderr,
                        )
                except Exception as error:
                    failures.append((item["path"], reason(item["path"], error)))
                    print(f"\nerror: {item['path']}: {failures[-1][1]}", file=sys.stderr)
            if waveforms:
                records = transcribe_or_isolate(transcriber, good, waveforms, failures)
                kept = [t for t in zip(good, waveforms, records) if t[2] is not None]
                good, waveforms, records = [t[0] for t in kept], [t[1] for t in kept], [t[2] for t in kept]
                lines = []
                for item, samples, record in zip(good, waveforms, records):
                    duration = round(len(samples) / backend.sampling_rate, 3)
                    full = {"path": item["path"], "text": record["text"], "duration": duration}
                    if "words" in record:
                        full["words"] = record["words"]
                    if "reference" in item:
                        full["reference"] = item["reference"]
                    new_records.append(full)
                    audio_seconds += duration
                    lines.append(json.dumps(full, ensure_ascii=False) + "\n")
                if journal_file:
                    journal_file.write("".join(lines))
                    journal_file.flush()
                    os.fsync(journal_file.fileno())
                elif output is None:
                    for record in new_records[len(new_records) - len(lines) :]:
                        print(f"{escaped(record['path'])}\t{record['text']}", flush=True)
            progress.update(len(batch), sum(milliseconds(d) for _, d in batch))
    except BaseException:
        progress.close()
        raise

    merged = ""
    if several:  # rank 0 takes every process's new transcripts and failures, once all have finished
        shares = context.gather((new_records, failures, audio_seconds))
        if not context.is_main:
            return context.broadcast(None)
        new_records = [record for share in shares for record in share[0]]
        failures = [failure for share in shares for failure in share[1]]
        audio_seconds = sum(share[2] for share in shares)
    progress.close()  # after every process's last batch: the whole job counted
    elapsed = time.monotonic() - started
    status, unwritten = None, None
    if output:
        merge_started = time.monotonic()
        records = done + [
            r for r in journaled if os.path.abspath(r["path"]) not in {os.path.abspath(d["path"]) for d in done}
        ]
        records += new_records
        order = {os.path.abspath(item["path"]): n for n, item in enumerate(items)}
        records.sort(key=lambda r: order.get(os.path.abspath(r["path"]), -1))  # stable: earlier outputs first
        if records:
            try:
                write_output(output, render(records, suffix), settings)
            except OSError as error:
                kept = journal if not several else f"the journals .{output.name}.journal*.jsonl beside it"
                unwritten = Error(
                    f"could not write {output} ({error.strerror or error}); nothing of it is lost: the "
                    f"{len(records) - len(done)} new transcripts are kept in {kept}. Make room and run "
                    "the same command again to finish."
                )
                status = 1
        if status is None:
            for path in journals(output):
                path.unlink(missing_ok=True)
            if several:
                merged = f"; {context.world_size} processes, merged in {time.monotonic() - merge_started:.3f} s"

    if status is None:
        summary = (
            f"{len(new_records)} transcribed ({audio_seconds / 3600:.3f} h of audio in {elapsed:.1f} s), "
            f"{skipped} already done, {len(failures)} failed{merged}"
        )
        print(summary, file=sys.stderr)
        for path, why in failures:
            print(f"  failed: {path}: {why}", file=sys.stderr)
        status = 1 if failures else 0
    if several:
        context.broadcast(status)  # the other processes end with this status; rank 0 raises below
    if unwritten:
        raise unwritten
    return status


def transcribe_or_isolate(transcriber, items, waveforms, failures) -> list:
    """Records of a batch; if the batch fails, each recording alone, so that one recording the model cannot
    take (e.g. longer than its positions with a large --chunk_length_s) fails alone, named, with the reason."""
    try:
        return transcriber.transcribe(list(waveforms))
    except Exception as error:
        if len(waveforms) == 1:
            failures.append((items[0]["path"], f"{type(error).__name__}: {error}"))
            print(f"\nerror: {items[0]['path']}: {failures[-1][1]}", file=sys.stderr)
            return [None]
    return [transcribe_or_isolate(transcriber, [i], [w], failures)[0] for i, w in zip(items, waveforms)]


def reason(path, error: Exception) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else f"{type(error).__name__}: {text}"
