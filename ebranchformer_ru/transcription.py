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
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf

from . import distributed
from .audio import LOUD, AudioFile
from .errors import Error, UsageError
from .formats import escaped, render
from .inference import Transcriber, load_backend, load_decoder, resolved_dtype
from .itn import InverseNormalizer
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
from .streaming import ChunkModel, Endpointing, StreamingError, StreamingTranscriber
from .vad import VoiceActivity

AUDIO_EXTENSIONS = ("wav", "flac", "opus", "ogg", "mp3")
MANIFEST_EXTENSIONS = (".json", ".jsonl")
OUTPUT_FORMATS = (".jsonl", ".txt", ".srt", ".vtt")
SUBTITLES = (".srt", ".vtt")  # one recording's subtitles


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


def job_description(options, items, timestamps, device) -> dict:
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
        "--dtype": resolved_dtype(options.model, options.dtype, device),  # as this machine resolves auto
        "--torch_compile": options.torch_compile,
        **{f"--{name}": value for name, value in options.transcript_settings().items()},
        "--overwrite": options.overwrite,
        "--output": None if options.output is None else os.path.abspath(options.output),
        "inputs": [[item["path"], distributed.file_facts(item["path"]), item.get("reference")] for item in items],
    }
    if options.decoder == "lm":
        described["language model"] = distributed.language_model_digest(options.model)
    if any(not os.path.isabs(item["path"]) for item in items):
        described["working folder"] = os.getcwd()
    return described


def run_settings(options, items, suffix, timestamps, device="cpu") -> dict:
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
    # The precision as this machine resolves --dtype (auto: bf16 here, float32 there), absent for float32: outputs
    # made before the choice existed still resume.
    if (dtype := resolved_dtype(options.model, options.dtype, device)) != "float32":
        settings["dtype"] = dtype
    if options.torch_compile:  # its fused kernels round otherwise (absent when off, as dtype's float32)
        settings["torch_compile"] = True
    settings |= options.transcript_settings()
    if timestamps:  # words carry confidences: an output whose words have none is not resumed into
        settings["word_confidence"] = True
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
    dtype: str = "float32"
    torch_compile: bool = False
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
    vad: bool = False
    vad_threshold: float = 0.5
    vad_max_segment_s: float = 25.0
    itn: bool = False
    itn_cache_dir: str | None = None
    streaming: bool = False
    chunk_ms: int | None = None
    left_chunks: int | None = None
    silence_after_speech_s: float = 0.8
    silence_without_speech_s: float = 2.4
    max_segment_s: float = 20.0

    def transcript_settings(self) -> dict:
        """The settings of segmentation, confidence and normalisation that are on (none: an older output's)."""
        settings = {}
        if self.vad:
            settings |= {"vad_threshold": self.vad_threshold, "vad_max_segment_s": self.vad_max_segment_s}
        if self.streaming:
            settings |= {"streaming": True, "chunk_ms": self.chunk_ms, "left_chunks": self.left_chunks}
            settings |= {"endpointing": dataclasses.asdict(self.endpointing())}
        return settings | ({"itn": True} if self.itn else {})

    def endpointing(self) -> Endpointing:
        return Endpointing(self.silence_after_speech_s, self.silence_without_speech_s, self.max_segment_s)


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
    if options.streaming and options.vad:
        raise UsageError("--streaming cuts recordings at its endpoints: leave out --vad")
    if options.streaming and options.torch_compile:
        raise UsageError(
            "--torch_compile compiles the whole-recording forward, not --streaming's chunk steps: leave out one"
        )
    try:
        options.endpointing()
    except StreamingError as error:
        raise UsageError(str(error)) from None
    if options.vad and not 0 < options.vad_threshold < 1:
        raise UsageError(f"--vad_threshold must be between 0 and 1, got {options.vad_threshold}")
    if options.vad and not 1 <= options.vad_max_segment_s <= options.chunk_length_s:
        raise UsageError(
            f"--vad_max_segment_s must be from 1 s to --chunk_length_s ({options.chunk_length_s:g} s), got "
            f"{options.vad_max_segment_s:g}"
        )
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
    timestamps = options.timestamps or suffix in SUBTITLES
    # Before anything is written: every process was started on this job (one model, one set of options, one
    # list of inputs), or all refuse.
    distributed.agree(context, lambda: job_description(options, items, timestamps, context.device(options.device)))
    if suffix in SUBTITLES and len(items) != 1:
        raise UsageError(
            f"--output {options.output}: a subtitle file holds one recording, and {len(items)} were given; "
            "transcribe several to .jsonl with --timestamps, or run once per recording"
        )
    if options.output is None:
        if context.world_size > 1:
            raise UsageError(
                f"{context.world_size} processes need --output, the file their transcripts are merged "
                "into (stdout is for one process)"
            )
        return Run(options, items, timestamps).transcribe()
    run = Run(options, items, timestamps, Path(options.output), context)
    with contextlib.ExitStack() as stack:
        run.resume(stack)
        if suffix in SUBTITLES and run.done:
            return run.nothing_to_do()
        return run.transcribe()


@dataclass
class Run:
    """One run of `transcribe`: what it was asked (`options`, `items`), where it writes (`output`, None: stdout;
    this process's journal), and what earlier runs left (`done`: in the output, `journaled`: in the journals)."""

    options: Options
    items: list
    timestamps: bool
    output: Path | None = None
    context: distributed.Context = distributed.ONE_PROCESS
    done: list = field(default_factory=list)
    journaled: list = field(default_factory=list)
    settings: dict | None = None
    journal_file: IO | None = None
    header_end: int | None = None  # where this run's journal header ends, if it wrote one
    itn: InverseNormalizer | None = None  # --itn, made with the transcriber

    @property
    def journal(self) -> Path:
        return journal_path(self.output, self.context.rank)

    @property
    def several(self) -> bool:
        return self.context.world_size > 1

    # -------------------------------------------------------------------------------------- resuming

    def resume(self, stack: contextlib.ExitStack):
        """Opens and locks this process's journal and reads what earlier runs did. Every process reads before any
        process writes, so that all see the same work done; a process that cannot go on stops them all."""
        problem, end, own_records = None, 0, False
        try:
            end, own_records = self.read_earlier(stack)
        except Error as error:
            if not self.several:
                self.refuse(error)
            problem = error
        finished = sorted({os.path.abspath(r["path"]) for r in self.done + self.journaled}) if self.several else []
        seen = self.context.all_gather((problem, hashlib.sha256("\n".join(finished).encode()).hexdigest()))
        if problems := [p for p, _ in seen if p]:
            self.refuse(problems[0])  # on every process: the launcher sees one failed run, not a hung one
        if len({digest for _, digest in seen}) > 1:
            self.refuse(
                Error(
                    f"the {self.context.world_size} processes see different transcripts done in {self.output} and "
                    "its journals: every process must see the output's folder (on several machines, a shared file "
                    "system)"
                )
            )
        self.start_journal(end, own_records)

    def read_earlier(self, stack) -> tuple[int, bool]:
        """The checks of the output's place, the journal's lock, and what the output and the journals hold; the end
        of this process's journal's last whole line and whether it holds records."""
        options, output = self.options, self.output
        suffix = output.suffix.lower()
        check_output_place(output, self.items, options.inputs, suffix)
        self.journal_file = stack.enter_context(locked(self.journal, output))
        device = self.context.device(options.device)
        self.settings = run_settings(options, self.items, suffix, self.timestamps, device)
        if options.overwrite:
            if self.context.is_main:
                mine = {journal_path(output, rank) for rank in range(self.context.world_size)}
                for path in journals(output):  # those of other processes of a run started over
                    if path not in mine:
                        path.unlink(missing_ok=True)
            return 0, False
        self.done = read_done(output, suffix, self.settings)
        self.journaled, end, own_records = read_journals(output, self.journal, self.settings)
        return end, own_records

    def refuse(self, error: Error):
        """Raises `error`; the journal this run made, holding nothing, goes."""
        if self.journal_file is not None and os.fstat(self.journal_file.fileno()).st_size == 0:
            self.journal.unlink(missing_ok=True)
        raise error

    def start_journal(self, end: int, own_records: bool):
        """Cuts off a line cut mid-write (new lines start anew) and writes the settings as the first line of a
        journal that holds no records."""
        file = self.journal_file
        file.truncate(end)
        if not own_records:
            file.truncate(0)
            file.write(json.dumps({SETTINGS_KEY: self.settings}, ensure_ascii=False) + "\n")
            file.flush()
            self.header_end = os.fstat(file.fileno()).st_size

    def nothing_to_do(self) -> int:
        if self.context.is_main:
            print(
                f"{self.output} holds this recording's subtitles, made with these settings: nothing to do "
                "(--overwrite to transcribe again)",
                file=sys.stderr,
            )
        for path in journals(self.output) if self.context.is_main else [self.journal]:
            path.unlink(missing_ok=True)
        return 0

    # -------------------------------------------------------------------------------------- transcribing

    def transcribe(self) -> int:
        """Transcribes what is left; 0, or 1 when a recording failed. A run stopped before its first transcript
        (a model folder that does not load) leaves no journal."""
        try:
            return self.transcribe_left()
        except BaseException:
            file = self.journal_file
            if self.header_end is not None and os.fstat(file.fileno()).st_size == self.header_end:
                self.journal.unlink(missing_ok=True)
            raise

    def transcribe_left(self) -> int:
        finished = {os.path.abspath(r["path"]) for r in self.done + self.journaled}
        todo = [item for item in self.items if os.path.abspath(item["path"]) not in finished]
        share, durations, failures = self.share(todo)
        job = list(durations.values()) if self.several else [duration for _, duration in share]  # the whole job
        transcriber = self.transcriber() if share else None  # nothing to transcribe: the model is not even loaded
        tally = distributed.Tally(self.context)  # every process's progress, for one bar
        progress = Progress(
            len(job), sum(map(milliseconds, job)), self.options.progress and self.context.is_main, tally
        )
        started = time.monotonic()
        try:
            records, seconds = self.transcribe_share(transcriber, share, failures, progress) if share else ([], 0.0)
        except BaseException:
            progress.close()
            raise
        if self.several:  # rank 0 takes every process's new transcripts and failures, once all have finished
            shares = self.context.gather((records, failures, seconds))
            if not self.context.is_main:
                return self.context.broadcast(None)
            records = [record for share in shares for record in share[0]]
            failures = [failure for share in shares for failure in share[1]]
            seconds = sum(share[2] for share in shares)
        progress.close()  # after every process's last batch: the whole job counted
        return self.finish(records, failures, seconds, time.monotonic() - started, len(self.items) - len(todo))

    def share(self, todo) -> tuple[list, dict, list]:
        """(item, duration) of this process's share of `todo`, the durations of all (several processes), and the
        files whose headers cannot be read. Headers only (fast): durations for batching by length, for the
        progress bar, and for sharing the work out (each process reads a share of the headers, and all split the
        files by the durations of all)."""
        context, failures, sized = self.context, [], []
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
        if not self.several:
            return sized, {}, failures
        position = {id(item): n for n, item in enumerate(todo)}
        durations = {}
        for part in context.all_gather({position[id(item)]: duration for item, duration in sized}):
            durations.update(part)
        everyone = sorted(durations)
        mine = distributed.split_by_duration([durations[n] for n in everyone], context.world_size)[context.rank]
        return [(todo[everyone[n]], durations[everyone[n]]) for n in mine], durations, failures

    def transcribe_share(self, transcriber, share, failures, progress) -> tuple[list, float]:
        """This process's records and seconds of audio; failures appended to `failures`. The share goes to the
        transcriber a group at a time (`groups`), so that recordings complete, are journaled (or printed) and
        counted as the job goes, and memory stays bounded."""
        records, seconds = [], 0.0
        for group in groups(share, transcriber.batch_size):
            new, audio = self.transcribe_group(transcriber, group, failures, progress)
            records += new
            seconds += audio
        return records, seconds

    def transcribe_group(self, transcriber, share, failures, progress) -> tuple[list, float]:
        items, recordings, durations = [], [], []
        for item, duration in share:
            try:
                recordings.append(Recording(item["path"], transcriber.backend.sampling_rate))
                items.append(item)
                durations.append(duration)
            except ValueError as error:
                self.fail(failures, item["path"], error)
                progress.update(1, milliseconds(duration))
        records, seconds = [], 0.0
        for done in transcriber.transcribe_each(recordings):
            new = []
            for index, result in done:
                if isinstance(result, Exception):
                    self.fail(failures, items[index]["path"], result)
                    continue
                new.append(self.record(items[index], recordings[index], result))
            self.write(new)
            records += new
            seconds += sum(record["duration"] for record in new)
            progress.update(len(done), sum(milliseconds(durations[index]) for index, _ in done))
        return records, seconds

    def transcriber(self) -> Transcriber:
        options, context = self.options, self.context
        device, threads = context.device(options.device), context.threads(options.threads)
        backend = load_backend(
            options.model,
            device,
            threads,
            options.quantized,
            options.trust_remote_code,
            options.dtype,
            options.torch_compile,
        )
        decoder = load_decoder(
            options.model, options.decoder, hotwords=options.hotwords, hotword_weight=options.hotword_weight
        )
        segmenter = None
        if options.vad:
            segmenter = VoiceActivity(threshold=options.vad_threshold, max_segment_s=options.vad_max_segment_s)
        if options.itn:
            self.itn = InverseNormalizer(options.itn_cache_dir, log=lambda line: print(line, file=sys.stderr))
        if options.streaming:
            model = ChunkModel(backend, options.chunk_ms, options.left_chunks, decoder)
            return StreamingTranscriber(model, options.endpointing(), options.batch_size, self.timestamps)
        return Transcriber(
            backend,
            options.batch_size,
            options.chunk_length_s,
            options.stride_length_s,
            self.timestamps,
            decoder,
            segmenter=segmenter,
        )

    @staticmethod
    def fail(failures, path, error):
        failures.append((path, reason(path, error)))
        print(f"\nerror: {path}: {failures[-1][1]}", file=sys.stderr)

    def record(self, item, recording, result) -> dict:
        """The output's record of one recording: path, text (normalised with --itn, the spoken text beside it),
        duration, words, segments (--vad), reference (a manifest's text)."""
        record = {"path": item["path"], "text": result["text"]}
        if self.itn is not None:
            record = {**record, "text": self.itn(result["text"]), "raw_text": result["text"]}
        record["duration"] = round(len(recording) / recording.rate, 3)
        for key in ("words", "segments"):
            if key in result:
                record[key] = result[key]
        if "reference" in item:
            record["reference"] = item["reference"]
        return record

    def write(self, records):
        """Records journaled (synced: a run killed now keeps them), or printed when there is no output."""
        if self.journal_file:
            self.journal_file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self.journal_file.flush()
            os.fsync(self.journal_file.fileno())
        elif self.output is None:
            for record in records:
                print(f"{escaped(record['path'])}\t{record['text']}", flush=True)

    # -------------------------------------------------------------------------------------- finishing

    def finish(self, new_records, failures, seconds, elapsed, skipped) -> int:
        """The output written (on rank 0) with every transcript, journals removed, and the summary; 0, or 1 when a
        recording failed. An output that cannot be written raises, naming where its transcripts are kept."""
        status, unwritten, merged = None, None, ""
        if self.output:
            merge_started = time.monotonic()
            try:
                self.write_output(new_records)
            except OSError as error:
                kept = (
                    self.journal if not self.several else f"the journals .{self.output.name}.journal*.jsonl beside it"
                )
                unwritten = Error(
                    f"could not write {self.output} ({error.strerror or error}); nothing of it is lost: the "
                    f"{len(self.journaled) + len(new_records)} new transcripts are kept in {kept}. Make room and "
                    "run the same command again to finish."
                )
                status = 1
            if status is None:
                for path in journals(self.output):
                    path.unlink(missing_ok=True)
                if self.several:
                    merged = (
                        f"; {self.context.world_size} processes, merged in {time.monotonic() - merge_started:.3f} s"
                    )
        if status is None:
            summary = (
                f"{len(new_records)} transcribed ({seconds / 3600:.3f} h of audio in {elapsed:.1f} s), "
                f"{skipped} already done, {len(failures)} failed{merged}"
            )
            print(summary, file=sys.stderr)
            for path, why in failures:
                print(f"  failed: {path}: {why}", file=sys.stderr)
            status = 1 if failures else 0
        if self.several:
            self.context.broadcast(status)  # the other processes end with this status; rank 0 raises below
        if unwritten:
            raise unwritten
        return status

    def write_output(self, new_records):
        """The output: earlier outputs' records, then the journals', then this run's, in the order of the inputs."""
        in_output = {os.path.abspath(d["path"]) for d in self.done}
        records = self.done + [r for r in self.journaled if os.path.abspath(r["path"]) not in in_output]
        records += new_records
        order = {os.path.abspath(item["path"]): n for n, item in enumerate(self.items)}
        records.sort(key=lambda r: order.get(os.path.abspath(r["path"]), -1))  # stable: earlier outputs first
        if records:
            write_output(self.output, render(records, self.output.suffix.lower()), self.settings)


GROUP_S = 600.0  # seconds of audio handed to the transcriber at once (one longer recording goes alone)


def groups(share: list, batch_size: int) -> list[list]:
    """`share` ((item, duration) pairs) longest first, cut into groups of at most GROUP_S seconds or 8 batches of
    recordings: within a group the transcriber sorts and batches once, and every recording of a group completes
    before the next group starts (one `stream` over a whole job would finish its long recordings only at its end,
    their last, shorter chunks being batched last)."""
    out, total = [], 0.0
    for item, duration in sorted(share, key=lambda pair: -pair[1]):
        if not out or total + duration > GROUP_S or len(out[-1]) >= 8 * batch_size:
            out.append([])
            total = 0.0
        out[-1].append((item, duration))
        total += duration
    return out


class Recording(AudioFile):
    """An input file read a stretch at a time, with a warning (once) when its float samples look like integer PCM."""

    def __init__(self, path, sampling_rate):
        super().__init__(path, sampling_rate)
        self.rate, self.warned = sampling_rate, False

    def __getitem__(self, stretch: slice) -> np.ndarray:
        samples = super().__getitem__(stretch)
        if not self.warned and (peak := float(np.abs(samples).max(initial=0.0))) > LOUD:
            self.warned = True
            print(
                f"\nwarning: {self.path}: float samples peak at {peak:g}, far above 1: integer PCM stored as floats? "
                "Its transcript will be wrong; scale the file",
                file=sys.stderr,
            )
        return samples


def reason(path, error: Exception) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else f"{type(error).__name__}: {text}"
