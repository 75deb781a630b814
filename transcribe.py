"""Transcribe audio files, folders and NeMo/Golos manifests with a trained model folder or an ONNX export.

    python transcribe.py outputs/mini recordings/ --output out.jsonl
    python transcribe.py outputs/mini_onnx data/golos_mini/test_opus/crowd/manifest.jsonl --output crowd.txt
    python transcribe.py outputs/mini talk.wav --output talk.srt

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
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

AUDIO_EXTENSIONS = ("wav", "flac", "opus", "ogg", "mp3")
MANIFEST_EXTENSIONS = (".json", ".jsonl")
OUTPUT_FORMATS = (".jsonl", ".txt", ".srt", ".vtt")


def load_standalone(name: str):
    """A torch-free module of the package (`audio`, `onnx_runtime`), loaded from its file so that the package's
    `__init__` (which imports torch and transformers) does not run."""
    here = Path(__file__).resolve().parent / "modeling_ebranchformer"
    if not (here / f"{name}.py").is_file():
        spec = importlib.util.find_spec("modeling_ebranchformer")  # finds an installed package without importing it
        here = Path(spec.submodule_search_locations[0])
    module_name = f"_ebranchformer_standalone_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, here / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


runtime = load_standalone("onnx_runtime")
audio = load_standalone("audio")
lm = load_standalone("lm")  # numpy only: LM decoding works for ONNX folders too


def load_lm_decoder(model_dir):
    """The model folder's language model (`build_lm.py`), as `--decoder lm` uses it; errors name the folder."""
    if not lm.has_language_model(model_dir):
        raise UsageError(f"--decoder lm: {model_dir} has no language_model/ folder; add one with "
                         f"`python build_lm.py {model_dir}`, or use --decoder greedy")  # fmt: skip
    try:
        return lm.CTCBeamSearchDecoder.load_from_dir(model_dir)
    except lm.LanguageModelError as error:
        raise UsageError(f"--decoder lm: {error}") from None


# ---------------------------------------------------------------------------------------------- inputs


class UsageError(ValueError):
    """A bad argument or manifest: nothing is transcribed."""


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
                raise UsageError(f"{given}: manifest not found")
            for audio_path, reference in read_manifest(path):
                add(audio_path, reference)
        elif path.is_file():
            add(path)
        elif path.exists():
            raise UsageError(f"{given}: not a file or folder")
        else:
            raise UsageError(f"{given}: no such file or folder")
    return items


def read_manifest(path: Path):
    """(audio path, text or None) per line of a NeMo/Golos manifest; a bad line raises naming it."""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{number}: not a JSON object ({error.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("audio_filepath"), str):
                raise UsageError(f'{path}:{number}: needs an "audio_filepath" string')
            text = entry.get("text")
            yield path.parent / entry["audio_filepath"], text if isinstance(text, str) else None


# ---------------------------------------------------------------------------------------------- models


class TorchBackend:
    """A Transformers model folder run with PyTorch: the same features, outputs and decoding as the pipeline."""

    def __init__(self, model_dir, device="cpu", threads=None):
        import torch
        from transformers import AutoModelForCTC, AutoProcessor

        import modeling_ebranchformer  # noqa: F401  (registers the model types)

        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available to torch")
        if threads:
            torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        try:
            self.model = AutoModelForCTC.from_pretrained(model_dir).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(model_dir)
        except (OSError, ValueError) as error:
            raise UsageError(f"{model_dir}: cannot load a CTC model and processor ({error})") from error
        self.sampling_rate = self.processor.feature_extractor.sampling_rate
        self.samples_per_frame = int(self.model.config.inputs_to_logits_ratio)
        tokenizer = self.processor.tokenizer
        self.vocabulary = runtime.CTCVocabulary(
            tokenizer.get_vocab(), tokenizer.pad_token, tokenizer.word_delimiter_token
        )

    def __call__(self, waveforms):
        torch = self.torch
        inputs = self.processor.feature_extractor(waveforms, sampling_rate=self.sampling_rate, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            lengths = self.model.get_output_lengths(inputs["attention_mask"].sum(-1)).cpu().numpy()
        return [log_probs[i, : int(n)] for i, n in enumerate(lengths)]


class OnnxBackend:
    def __init__(self, model_dir, device="cpu", threads=None, quantized=False):
        self.model = runtime.OnnxCTCModel(model_dir, quantized=quantized, num_threads=threads, device=device)
        self.sampling_rate = self.model.sampling_rate
        self.samples_per_frame = self.model.samples_per_frame
        self.vocabulary = self.model.vocabulary

    def __call__(self, waveforms):
        return self.model(waveforms)


def load_backend(model_dir, device="cpu", threads=None, quantized=False):
    path = Path(model_dir)
    if path.is_dir() and runtime.is_onnx_folder(path):
        try:
            return OnnxBackend(path, device, threads, quantized)
        except ValueError as error:  # a missing int8 model, no CUDA provider, a damaged folder: named
            raise UsageError(str(error)) from error
    if quantized:
        raise UsageError(f"--quantized needs a folder made by export_onnx.py --int8; {model_dir} is not an ONNX export")
    if path.exists() and not (path / "config.json").is_file():
        raise UsageError(
            f"{model_dir}: neither a model folder (config.json) nor an ONNX export ({runtime.EXPORT_FILE})"
        )
    return TorchBackend(model_dir, device, threads)


# ---------------------------------------------------------------------------------------------- transcription


class Transcriber:
    """Waveforms -> records, with chunking of long files and length-grouped batches."""

    def __init__(self, backend, batch_size=16, chunk_length_s=30.0, stride_length_s=None, timestamps=False,
                 decoder=None):  # fmt: skip
        """`decoder`: a `CTCBeamSearchDecoder` (beam search with the folder's LM); None decodes greedily."""
        self.backend, self.batch_size, self.timestamps, self.decoder = backend, batch_size, timestamps, decoder
        rate, spf = backend.sampling_rate, backend.samples_per_frame
        if chunk_length_s <= 0:
            raise UsageError(f"--chunk_length_s must be positive, got {chunk_length_s}")
        stride_length_s = chunk_length_s / 6 if stride_length_s is None else stride_length_s
        if stride_length_s < 0 or 2 * stride_length_s >= chunk_length_s:
            raise UsageError(f"--stride_length_s must be in [0, chunk_length_s / 2), got {stride_length_s}")
        # Chunk boundaries fall on whole output frames, so dropping the overlaps keeps frames aligned.
        self.chunk = max(spf, int(chunk_length_s * rate) // spf * spf)
        self.stride = int(stride_length_s * rate) // spf * spf
        self.frame_seconds = spf / rate

    def chunks(self, samples: np.ndarray):
        """(start sample, waveform, frames to drop on the left, frames to keep or None for all)."""
        n, spf = len(samples), self.backend.samples_per_frame
        if n <= self.chunk:
            return [(0, samples, 0, None)]
        step = self.chunk - 2 * self.stride
        out = []
        for start in range(0, n, step):
            left = 0 if start == 0 else self.stride
            begin = start - left
            end = min(n, start + step + self.stride)
            keep_end = n if end >= n else start + step  # up to here this chunk is responsible for the frames
            out.append((begin, samples[begin:end], left // spf, math.ceil(keep_end / spf) - math.ceil(start / spf)))
            if end >= n:
                break
        return out

    def transcribe(self, waveforms: list[np.ndarray]) -> list[dict]:
        """One record {"text", "words"?} per waveform; long ones in chunks, chunks batched together."""
        pieces = [(i, c) for i, w in enumerate(waveforms) for c in self.chunks(w)]
        order = sorted(range(len(pieces)), key=lambda p: -len(pieces[p][1][1]))
        outputs = [None] * len(pieces)
        for b in range(0, len(order), self.batch_size):
            batch = order[b : b + self.batch_size]
            for index, log_probs in zip(batch, self.backend([pieces[p][1][1] for p in batch])):
                outputs[index] = log_probs
        records = []
        for i in range(len(waveforms)):
            frames, times = [], []
            for (owner, (start, _, drop, keep)), log_probs in zip(pieces, outputs):
                if owner != i:
                    continue
                kept = log_probs[drop:] if keep is None else log_probs[drop : drop + keep]
                frames.append(kept)
                times.append(start / self.backend.sampling_rate + (drop + np.arange(len(kept))) * self.frame_seconds)
            log_probs, times = np.concatenate(frames), np.concatenate(times)
            if self.decoder is not None:
                records.append(self.beam_search(log_probs, times))
                continue
            ids = log_probs.argmax(-1)
            record = {"text": self.backend.vocabulary.decode(ids)}
            if self.timestamps:
                record["words"] = self.backend.vocabulary.words(ids, times, self.frame_seconds)
            records.append(record)
        return records


    def beam_search(self, log_probs: np.ndarray, times: np.ndarray) -> dict:
        """The best beam of the LM decoder over a recording's joined frames; word times as greedy gives them."""
        text, _, words, *_ = self.decoder.decode_beams(log_probs)[0]
        record = {"text": text}
        if self.timestamps:
            last = len(times) - 1
            record["words"] = [{"word": word, "start": round(float(times[min(begin, last)]), 3),
                                "end": round(float(times[min(end, len(times)) - 1]) + self.frame_seconds, 3)}
                               for word, (begin, end) in words]  # fmt: skip
        return record


# ---------------------------------------------------------------------------------------------- outputs


def format_time(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitle_cues(words, max_pause=0.6, max_duration=6.0, max_chars=84) -> list[tuple[float, float, str]]:
    """Words grouped into cues: a new cue after a pause longer than `max_pause` seconds, or when the cue
    would last longer than `max_duration` or hold more than `max_chars` characters."""
    cues, current = [], []
    for word in words:
        if current:
            text = " ".join(w["word"] for w in current + [word])
            if (
                word["start"] - current[-1]["end"] > max_pause
                or word["end"] - current[0]["start"] > max_duration
                or len(text) > max_chars
            ):
                cues.append(current)
                current = []
        current.append(word)
    if current:
        cues.append(current)
    return [(c[0]["start"], c[-1]["end"], " ".join(w["word"] for w in c)) for c in cues]


def render(records: list[dict], suffix: str) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if suffix == ".txt":
        return "".join(f"{r['path']}\t{r['text']}\n" for r in records)
    separator = "," if suffix == ".srt" else "."
    blocks = [] if suffix == ".srt" else ["WEBVTT\n"]
    for record in records:
        for number, (start, end, text) in enumerate(subtitle_cues(record.get("words", [])), 1):
            timing = f"{format_time(start, separator)} --> {format_time(end, separator)}"
            blocks.append(f"{number}\n{timing}\n{text}\n" if suffix == ".srt" else f"{timing}\n{text}\n")
    return "\n".join(blocks)


def read_done(output: Path, suffix: str) -> list[dict]:
    """Records an earlier complete run wrote to `output` (for .srt/.vtt: the recording is done if it exists)."""
    if not output.is_file():
        return []
    records = []
    with open(output, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(
                        f"{output}:{number}: not JSON; is this an output of transcribe.py? "
                        "Pass --overwrite to replace it"
                    ) from None
                if not isinstance(record, dict) or "path" not in record or "text" not in record:
                    raise UsageError(f"{output}:{number}: no path and text; pass --overwrite to replace the file")
            elif suffix == ".txt":
                path, tab, text = line.rstrip("\n").partition("\t")
                if not tab:
                    raise UsageError(f"{output}:{number}: not 'path<TAB>text'; pass --overwrite to replace the file")
                record = {"path": path, "text": text}
            else:
                return [{"path": None}]
            records.append(record)
    return records


def read_journal(journal: Path) -> list[dict]:
    """Records of an interrupted run; a last line cut off mid-write is ignored."""
    if not journal.is_file():
        return []
    records = []
    with open(journal, encoding="utf-8") as file:
        for line in file:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # the line being written when the run stopped
            if isinstance(record, dict) and "path" in record:
                records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """Files and audio hours done with an ETA, through tqdm when it is installed."""

    def __init__(self, files: int, seconds: float, enabled: bool):
        self.files, self.done_files, self.enabled = files, 0, enabled
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self.start, self.total, self.done = time.monotonic(), seconds, 0.0
            return
        self.bar = tqdm(
            total=round(seconds / 3600, 4),
            unit="h",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}]{postfix}",
        )
        self.bar.set_postfix_str(f"files 0/{files}")

    def update(self, files: int, seconds: float):
        self.done_files += files
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(seconds / 3600)
            self.bar.set_postfix_str(f"files {self.done_files}/{self.files}")
            return
        self.done += seconds
        elapsed = time.monotonic() - self.start
        eta = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        print(
            f"files {self.done_files}/{self.files}, audio {self.done / 3600:.3f}/{self.total / 3600:.3f} h, "
            f"ETA {eta:.0f} s",
            file=sys.stderr,
        )

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="model folder (PyTorch) or export_onnx.py output folder (ONNX Runtime)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders, manifests (.json/.jsonl)")
    parser.add_argument(
        "--output", help=f"output file, format by extension: {', '.join(OUTPUT_FORMATS)}; default stdout"
    )
    parser.add_argument("--batch_size", type=int, default=16, help="recordings (or chunks) per forward pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--decoder", choices=["greedy", "lm"], default="greedy",
                        help="lm: beam search with the model folder's language model (build_lm.py)")  # fmt: skip
    parser.add_argument("--chunk_length_s", type=float, default=30.0, help="files longer than this are chunked")
    parser.add_argument("--stride_length_s", type=float, default=None, help="overlap on each side (chunk / 6)")
    parser.add_argument("--timestamps", action="store_true", help="word times in .jsonl (always for .srt/.vtt)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: the library's)")
    parser.add_argument("--quantized", action="store_true", help="ONNX export only: use the int8 model")
    parser.add_argument("--extensions", default=",".join(AUDIO_EXTENSIONS), help="audio extensions in folders")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming --output")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.output is not None and Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output {args.output}: the extension must be one of {', '.join(OUTPUT_FORMATS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args) -> int:
    items = collect_inputs(args.inputs, args.extensions.split(","))
    suffix = Path(args.output).suffix.lower() if args.output else None
    timestamps = args.timestamps or suffix in (".srt", ".vtt")
    if suffix in (".srt", ".vtt") and len(items) != 1:
        raise UsageError(
            f"--output {args.output}: a subtitle file holds one recording, and {len(items)} were given; "
            "transcribe several to .jsonl with --timestamps, or run once per recording"
        )

    output = Path(args.output) if args.output else None
    if output is not None:
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder; name a file")
        output.parent.mkdir(parents=True, exist_ok=True)
    journal = output.with_name(f".{output.name}.journal.jsonl") if output else None
    done, journaled = [], []
    if output and args.overwrite:
        journal.unlink(missing_ok=True)
    elif output:
        done = read_done(output, suffix)
        journaled = read_journal(journal)
    if suffix in (".srt", ".vtt") and done:
        print(f"{output} exists: nothing to do (--overwrite to transcribe again)", file=sys.stderr)
        return 0
    finished = {os.path.abspath(r["path"]) for r in done + journaled}
    todo = [item for item in items if os.path.abspath(item["path"]) not in finished]
    skipped = len(items) - len(todo)

    # Headers only (fast): durations for batching by length and for the progress bar.
    failures, sized = [], []
    for item in todo:
        if not os.path.isfile(item["path"]):
            failures.append((item["path"], "audio file not found"))
            continue
        try:
            info = audio.sf.info(item["path"])
            sized.append((item, info.frames / info.samplerate))
        except Exception as error:  # noqa: BLE001 (any unreadable file is reported, never fatal)
            failures.append((item["path"], f"cannot read audio ({error})"))
    for path, why in failures:
        print(f"error: {path}: {why}", file=sys.stderr)

    backend = load_backend(args.model, args.device, args.threads, args.quantized) if sized else None
    transcriber = (
        Transcriber(backend, args.batch_size, args.chunk_length_s, args.stride_length_s, timestamps,
                    load_lm_decoder(args.model) if args.decoder == "lm" else None)
        if backend
        else None
    )

    started = time.monotonic()
    new_records, audio_seconds = [], 0.0
    progress = Progress(len(sized), sum(d for _, d in sized), not args.no_progress)
    sized.sort(key=lambda pair: -pair[1])  # longest first: a batch holds similar lengths, memory peaks early
    journal_file = open(journal, "a", encoding="utf-8") if journal else None
    try:
        index = 0
        while index < len(sized):
            # A batch: up to batch_size recordings, or one long recording that is cut into chunks.
            batch = [sized[index]]
            index += 1
            while (
                index < len(sized)
                and len(batch) < args.batch_size
                and sized[index][1] <= args.chunk_length_s
                and batch[0][1] <= args.chunk_length_s
            ):
                batch.append(sized[index])
                index += 1
            good, waveforms = [], []
            for item, duration in batch:
                try:
                    waveforms.append(audio.read_audio(item["path"], backend.sampling_rate))
                    good.append(item)
                except Exception as error:  # noqa: BLE001
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
                        print(f"{record['path']}\t{record['text']}", flush=True)
            progress.update(len(batch), sum(d for _, d in batch))
    finally:
        progress.close()
        if journal_file:
            journal_file.close()

    elapsed = time.monotonic() - started
    if output:
        records = done + [
            r for r in journaled if os.path.abspath(r["path"]) not in {os.path.abspath(d["path"]) for d in done}
        ]
        records += new_records
        order = {os.path.abspath(item["path"]): n for n, item in enumerate(items)}
        records.sort(key=lambda r: order.get(os.path.abspath(r["path"]), -1))  # stable: earlier outputs first
        if records:
            files = load_standalone("files")
            files.atomic_write_text(output, render(records, suffix))
        journal.unlink(missing_ok=True)

    summary = (
        f"{len(new_records)} transcribed ({audio_seconds / 3600:.3f} h of audio in {elapsed:.1f} s), "
        f"{skipped} already done, {len(failures)} failed"
    )
    print(summary, file=sys.stderr)
    for path, why in failures:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    return 1 if failures else 0


def transcribe_or_isolate(transcriber, items, waveforms, failures) -> list:
    """Records of a batch; if the batch fails, each recording alone, so that one recording the model cannot
    take (e.g. longer than its positions with a large --chunk_length_s) fails alone, named, with the reason."""
    try:
        return transcriber.transcribe(list(waveforms))
    except Exception as error:  # noqa: BLE001
        if len(waveforms) == 1:
            failures.append((items[0]["path"], f"{type(error).__name__}: {error}"))
            print(f"\nerror: {items[0]['path']}: {failures[-1][1]}", file=sys.stderr)
            return [None]
    return [transcribe_or_isolate(transcriber, [i], [w], failures)[0] for i, w in zip(items, waveforms)]


def reason(path, error: Exception) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
