"""Golos through `datasets`: `load_golos(data_dir, name, split)` prepares, caches and returns a split.

from ebranchformer_ru.golos import load_golos
test = load_golos("ebranchformer_ru/golos/golos_mini", name="farfield", split="test")
test[0]["audio"]  # {"path": ..., "array": float32 samples, "sampling_rate": 16000}
"""

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np

from ebranchformer_ru.audio import read_audio
from ebranchformer_ru.files import atomic_write_text

from .golos import (
    DOMAINS,
    MANIFESTS,
    TEST_SETS,
    Golos,
    GolosConfig,
    ManifestError,
    find_test_sets,
    split_manifests,
)
from .prepare import SAMPLING_RATE
from .selection import SelectionReport, course_filter, normalize_and_check_texts, random_subset_by_duration

EMBEDDED_CORPUS = Path(__file__).resolve().parent / "golos_mini"  # package data: the embedded corpus

__all__ = [
    "EMBEDDED_CORPUS",
    "TEST_SETS",
    "Golos",
    "GolosConfig",
    "ManifestError",
    "SelectionReport",
    "course_filter",
    "decode_with_soundfile",
    "find_test_sets",
    "load_golos",
    "normalize_and_check_texts",
    "random_subset_by_duration",
]


def _fingerprint(data_dir: str, split: str, test_sets: tuple) -> str:
    """Changes when this builder's code or one of the split's manifests (path, size, modification time)
    changes. The audio files are not stat'ed here (12 us a line, 13 s for the 1.1 M train lines): the
    stamps (size, modification time) of every prepared file are saved beside the cache instead, and
    `recheck_audio` compares them on a cached load (see load_golos)."""
    digest = hashlib.sha256()
    for code in ("golos.py", "prepare.py"):
        digest.update(Path(__file__).with_name(code).read_bytes())
    for manifest in split_manifests(data_dir, split, test_sets):
        if not os.path.isfile(manifest):
            continue  # the builder says what is missing
        stat = os.stat(manifest)
        digest.update(f"{manifest}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _changed_audio(builder, split, dataset) -> str | None:
    """Why the cached split is stale (a listed file whose size or modification time is not the one
    prepared, or no saved stamps), or None. One stat per example: about 3 s for 1.1 M files."""
    path = os.path.join(builder.cache_dir, f"golos_stamps_{split}.npy")
    if not os.path.exists(path):
        return "no saved audio stamps"
    saved = np.load(path)
    paths = dataset.data.column("audio").combine_chunks().field("path").to_pylist()
    if len(saved) != len(paths):
        return "the saved audio stamps do not match the cache"
    now = np.full((len(paths), 2), -1, np.int64)
    stat = os.stat
    for index, file in enumerate(paths):
        try:
            info = stat(file)
        except OSError:
            continue
        now[index] = info.st_size, info.st_mtime_ns
    changed = np.flatnonzero((now != saved).any(axis=1))
    if len(changed):
        return f"{len(changed)} audio files changed since preparation, e.g. {paths[changed[0]]}"
    return None


def _save_stamps(builder, split):
    if split in builder.stamps:
        path = os.path.join(builder.cache_dir, f"golos_stamps_{split}.npy")
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, builder.stamps[split])
        os.replace(tmp, path)


def _decode(audio: dict) -> dict:
    return {"path": audio["path"], "array": read_audio(audio["path"], SAMPLING_RATE), "sampling_rate": SAMPLING_RATE}


def _decode_batch(batch: dict) -> dict:
    if "audio" in batch:
        batch["audio"] = [_decode(audio) for audio in batch["audio"]]
    return batch


class _DecodeThen:
    """Decoding followed by a batch transform (a class, not a closure: DataLoader workers may pickle it)."""

    def __init__(self, then):
        self.then = then

    def __call__(self, batch: dict) -> dict:
        return self.then(_decode_batch(batch))


def decode_with_soundfile(dataset, augment=None):
    """Decode `audio` with soundfile when examples are read (no FFmpeg needed): each example's audio
    becomes {"path", "array", "sampling_rate"}, as `datasets.Audio` gave before torchcodec. `augment`, a
    function of a decoded batch (`AudioAugmentation.transform`), then changes it: it runs where the
    examples are read, in the DataLoader workers."""
    if isinstance(dataset, datasets.IterableDataset):
        if augment is not None:
            raise ValueError("augmentation of a streamed dataset is not supported: prepare it (streaming=False)")
        return dataset.map(lambda example: {"audio": _decode(example["audio"])})
    return dataset.with_transform(_DecodeThen(augment) if augment is not None else _decode_batch)


def load_golos(
    data_dir=EMBEDDED_CORPUS,
    name="all",
    split="train",
    *,
    streaming=False,
    skip_invalid=False,
    verify_audio="header",
    decode="soundfile",
    cache_dir=None,
    return_report=False,
    num_proc=None,
    recheck_audio=True,
):
    """Prepare (once, cached) and return one split of Golos. The cache is prepared again when this builder,
    one of the split's manifests, or (with `recheck_audio`) the size or modification time of an audio file
    they list changes.

    Args:
        data_dir: folder with train_opus/ and test_opus/ (default: the embedded mini corpus).
        name: "crowd", "farfield" or "all"; for the test split also any other test set of the folder
            (test_opus/<name>/manifest.jsonl, see `find_test_sets`), e.g. the embedded corpus's "heldout_voice".
        split: "train" or "test".
        streaming: an `IterableDataset` read straight from the manifests: training starts at once,
            nothing is written to the cache.
        skip_invalid: skip bad manifest lines and audio files (counted in the report) instead of raising;
            a missing or empty manifest, or a split with no example left, still raises.
        verify_audio: "header", "full" or "none" (see `GolosConfig`).
        decode: "soundfile" (no FFmpeg needed), "datasets" (the standard `Audio` feature: torchcodec and
            FFmpeg) or "none" (the `audio` column holds paths; see `decode_with_soundfile`).
        return_report: also return the preparation report (kept and skipped examples, with reasons);
            None for streaming, where it is only known after a full pass.
        num_proc: processes that check the audio when the split is prepared (default: one per CPU core).
            The checks are saved shard by shard: a preparation killed midway goes on from the shards it
            finished (see golos.prepare).
        recheck_audio: on a cached load, stat every listed file and prepare the split again if one's size
            or modification time changed since it was prepared (a replaced file; about 3 s for the 1.1 M
            train files). False trusts the cache: only the manifests and this code are compared.
    """
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    config = _config(data_dir, name, split, decode)
    builder = Golos(
        **config,
        data_dir=data_dir,
        cache_dir=cache_dir,
        hash=None
        if streaming
        else _fingerprint(data_dir, split, config.get("test_sets", DOMAINS.get(name))),  # streaming caches nothing
        splits=(split,),
        skip_invalid=skip_invalid,
        verify_audio=verify_audio,
        num_proc=num_proc,
    )
    report = None
    if streaming:
        dataset = builder.as_streaming_dataset(split=split)
    else:
        dataset, report = _prepared(builder, name, split, recheck_audio)
    if decode == "datasets":
        dataset = dataset.cast_column("audio", datasets.Audio(sampling_rate=SAMPLING_RATE))
    elif not streaming:  # an IterableDataset would re-encode Audio on every example, which needs torchcodec
        dataset = dataset.cast_column("audio", datasets.Audio(sampling_rate=SAMPLING_RATE, decode=False))
    if decode == "soundfile":
        dataset = decode_with_soundfile(dataset)
    return (dataset, report) if return_report else dataset


def _config(data_dir, name, split, decode) -> dict:
    """The builder's configuration for `load_golos`' arguments, checked (errors name the value and the choices)."""
    if split not in MANIFESTS:
        raise ValueError(f"unknown Golos split {split!r}: use 'train' or 'test'")
    config = {"config_name": name}
    if name not in DOMAINS:
        others = find_test_sets(data_dir) if split == "test" and os.path.isdir(data_dir) else []
        if name not in others:
            hint = f"; the test sets of {data_dir} are {', '.join(others)}" if others else ""
            raise ValueError(f"unknown Golos configuration {name!r}: use 'crowd', 'farfield' or 'all'{hint}")
        config = {"config_name": "all", "test_sets": (name,)}  # another test set, with every domain it holds
    if decode not in ("soundfile", "datasets", "none"):
        raise ValueError(f"decode must be 'soundfile', 'datasets' or 'none', got {decode!r}")
    if os.path.isfile(data_dir):
        raise NotADirectoryError(f"{data_dir} is a file: data_dir is the folder that holds train_opus/ and test_opus/")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Golos data folder not found: {data_dir}")
    return config


def _prepared(builder, name, split, recheck_audio) -> tuple:
    """The split from the cache (prepared first where needed, again where an audio file changed) and its report."""
    _prepare(builder)
    dataset = builder.as_dataset(split=split)
    stale = _changed_audio(builder, split, dataset) if recheck_audio and split not in builder.reports else None
    if stale:
        datasets.logging.get_logger(__name__).warning(f"Golos {name} {split}: {stale}: preparing it again")
        _prepare(builder, datasets.DownloadMode.FORCE_REDOWNLOAD, datasets.VerificationMode.NO_CHECKS)
        dataset = builder.as_dataset(split=split)
    _save_stamps(builder, split)
    return dataset, _saved_report(builder, split)


def _prepare(builder, download_mode=None, verification_mode=None):
    try:
        # (NO_CHECKS when preparing again: the number of examples may change, datasets would refuse it)
        builder.download_and_prepare(download_mode=download_mode, verification_mode=verification_mode)
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, (ManifestError, OSError)):
            raise error.__cause__ from None  # the message names the manifest, line or file
        raise


def _saved_report(builder, split):
    """The preparation report, kept beside the cached Arrow files so that a cached load still has it."""
    path = os.path.join(builder.cache_dir, f"golos_report_{split}.json")
    if split in builder.reports:  # prepared just now
        atomic_write_text(path, json.dumps(builder.reports[split], ensure_ascii=False, indent=1))
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
