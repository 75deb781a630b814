"""Golos (Russian speech, crowd and farfield domains) as a `datasets` builder.

Reads the course archive layout, or any folder of NeMo-style manifests:

    DATA_DIR/train_opus/manifest.jsonl
    DATA_DIR/test_opus/crowd/manifest.jsonl
    DATA_DIR/test_opus/farfield/manifest.jsonl

Each manifest line is a UTF-8 JSON object with `audio_filepath`, a non-empty `text`, `duration`
(seconds, a positive number; optional: read from the file when absent) and optionally `id` (a string or
an integer, unique within the split; the file's name without extension when absent) and `domain`. In
the train manifest the domain is the `domain` key ("crowd" or "farfield") or else the first folder of
`audio_filepath` ("crowd/..." or "farfield/..."; anything else counts as crowd).

`audio_filepath` is relative to the manifest's folder. An absolute path, or one whose `..` leaves the
folder, is used as it is: it works while the file exists there, but the data folder is then no longer
self-contained (moving or copying it leaves such files behind).

With `verify_audio` "header" or "full" the audio's duration (the header's, or the decoded one) must match
the manifest's within `DURATION_TOLERANCE`: a truncated or replaced file is reported, not trained on.

Configurations: "crowd", "farfield", "all" (both domains); splits "train" and "test".

The `audio` column stores the file's path only, so preparing the 1.1 M-file train split reads no audio
into Arrow and holds nothing in memory; the audio is decoded when an example is read.

With `datasets` < 4, and this package installed, this file also works as a loading script:
`load_dataset("golos/golos.py", "farfield", data_dir=...)`. With any version, use `golos.load_golos`.
"""

import array
import math
import os
import shutil
from dataclasses import dataclass

import datasets
import numpy as np

from ebranchformer_ru.golos import prepare  # absolute: this file is also a loading script (datasets < 4)
from ebranchformer_ru.golos.prepare import check_audio
from ebranchformer_ru.manifest import ManifestError, audio_path, parse_line

MANIFESTS = {
    "train": ["train_opus/manifest.jsonl"],
    "test": ["test_opus/crowd/manifest.jsonl", "test_opus/farfield/manifest.jsonl"],
}
TEST_SETS = ("crowd", "farfield")  # the domains of Golos, each with its own test set
RESERVED_NAMES = ("all", "train")  # never a test set's name: the configuration of both domains, the train split
DOMAINS = {"crowd": ("crowd",), "farfield": ("farfield",), "all": TEST_SETS}
# How far the audio's duration may be from the manifest's. Golos manifests round durations to a few
# decimals (at most 5 ms off at 2 decimals), and an Opus encoder that does not trim its last frame adds
# up to one frame (at most 60 ms in practice); 0.1 s passes both. A truncated Opus file loses whole Ogg
# pages (up to a second of audio each with common encoders), and half of its bytes about half of it.
DURATION_TOLERANCE = 0.1


def split_manifests(data_dir: str, split: str, test_sets: tuple) -> list:
    """The manifests that a split reads: the train manifest, or test_opus/<set>/manifest.jsonl per test set."""
    if split == "train":
        return [os.path.join(data_dir, manifest) for manifest in MANIFESTS["train"]]
    return [os.path.join(data_dir, "test_opus", name, "manifest.jsonl") for name in test_sets]


def find_test_sets(data_dir) -> list:
    """The test sets of a Golos-layout folder: Golos's own (crowd, farfield) first, then any other folder of
    test_opus/ that holds a manifest.jsonl (your own recordings, or the embedded corpus's held-out voice),
    except "all" and "train", which name the configuration of both domains and the train selection."""
    folder = os.path.join(os.path.expanduser(str(data_dir)), "test_opus")
    if not os.path.isdir(folder):
        return []
    found = sorted(
        n
        for n in os.listdir(folder)
        if n not in RESERVED_NAMES and os.path.isfile(os.path.join(folder, n, "manifest.jsonl"))
    )
    return [n for n in TEST_SETS if n in found] + [n for n in found if n not in TEST_SETS]


@dataclass
class GolosConfig(datasets.BuilderConfig):
    """
    Args:
        test_sets: the test sets the test split reads (test_opus/<set>/manifest.jsonl); default: one per
            domain of the configuration. Other sets' examples take their domain from the line's `domain`
            key or their path, as train examples do.
        splits: the splits to prepare (load_golos prepares only the one asked for: a test set then
            never waits for a pass over the 1.1 M train lines).
        skip_invalid: skip bad lines and files (counted in the split's report) instead of raising. A
            missing or empty manifest, or a split left with no example, still raises.
        verify_audio: "header" reads each file's header (rate, channels, length, which must match the
            manifest's duration); "full" also decodes all samples (finds corrupted files and NaN or
            infinite samples, and compares the decoded length; slow on the full train set); "none" only
            checks that the file exists and trusts the manifest's duration.
    """

    domains: tuple = TEST_SETS
    test_sets: tuple | None = None
    splits: tuple = ("train", "test")
    skip_invalid: bool = False
    verify_audio: str = "header"


class Golos(datasets.GeneratorBasedBuilder):
    """Golos speech recognition corpus: crowd-sourced and farfield (smart speaker) Russian speech."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = GolosConfig
    BUILDER_CONFIGS = [GolosConfig(name=name, domains=domains) for name, domains in DOMAINS.items()]
    DEFAULT_CONFIG_NAME = "all"

    @property
    def test_sets(self) -> tuple:
        return self.config.test_sets or self.config.domains

    def __init__(self, *args, num_proc=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_proc = num_proc  # processes that check the audio of a preparation (not part of the cache key)
        self.reports = {}  # split -> what preparing it kept and skipped (see SplitReport)
        self.stamps = {}  # split -> (size, modification time) of each kept example's file, in dataset order
        self._verified = {}  # manifest -> the results of golos.prepare.verify_manifest

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        """Checks the audio first, in parallel and restartably (golos.prepare), then writes the Arrow cache in
        one process from those results; the saved shards are deleted once the cache is written. Runs only
        when the split is not cached yet, and never for streaming."""
        work_dirs = []
        for split in self.config.splits:
            data_dir = os.path.abspath(os.path.expanduser(self.config.data_dir or ""))
            for manifest in split_manifests(data_dir, split, self.test_sets):
                if os.path.isfile(manifest):  # _split_generators says what is missing
                    work_dir = os.path.join(
                        self._cache_dir_root, "golos_verify", prepare.manifest_key(manifest, self.config.verify_audio)
                    )
                    self._verified[manifest] = prepare.verify_manifest(
                        manifest, self.config.verify_audio, work_dir, self.num_proc, log=_logger().info
                    )
                    work_dirs.append(work_dir)
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        finally:
            self._verified = {}
        for work_dir in work_dirs:  # only after success: an interrupted run keeps its finished shards
            shutil.rmtree(work_dir, ignore_errors=True)

    def _info(self):
        if self.config.verify_audio not in ("none", "header", "full"):
            raise ValueError(f"verify_audio must be 'none', 'header' or 'full', got {self.config.verify_audio!r}")
        return datasets.DatasetInfo(
            description="Golos: Russian ASR corpus, crowd and farfield domains (SberDevices, 2021)",
            features=datasets.Features(
                {
                    "id": datasets.Value("string"),
                    # The storage of datasets.Audio, written as a plain struct because datasets 4+ needs
                    # torchcodec to encode even a path; load_golos casts it to Audio. Paths only:
                    # audio is decoded on reading, by soundfile or by datasets' Audio feature.
                    "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                    "text": datasets.Value("string"),
                    "duration": datasets.Value("float32"),
                    "domain": datasets.ClassLabel(names=list(TEST_SETS)),
                }
            ),
            homepage="https://github.com/salute-developers/golos",
            license="Golos authors' license (see the homepage)",
        )

    def _split_generators(self, dl_manager):
        data_dir = self.config.data_dir
        if not data_dir:
            raise ValueError("Golos needs data_dir: the folder that holds train_opus/ and test_opus/")
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        generators = []
        for split in self.config.splits:
            manifests = split_manifests(data_dir, split, self.test_sets)
            for manifest in manifests:
                if os.path.isdir(manifest):
                    raise IsADirectoryError(f"{manifest} is a folder: the Golos manifest must be a JSON-lines file")
                if not os.path.isfile(manifest):
                    folder = os.path.dirname(manifest)
                    missing = "file not found" if os.path.isdir(folder) else f"its folder {folder} is missing"
                    raise FileNotFoundError(
                        f"no Golos manifest for the {split} set {self.config.name!r}: {manifest} ({missing}; "
                        f"data_dir must be the folder that holds train_opus/ and test_opus/)"
                    )
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"manifests": manifests, "split": split}))
        return generators

    def _generate_examples(self, manifests, split):
        report = SplitReport()
        kept_lines = [array.array("q") for _ in manifests]  # line index of each kept example, per manifest
        # id -> where it first appeared, packed as manifest index << 32 | line number: at 1.1 M train lines
        # this holds about 170 MB (the ids themselves included), 60 MB less than (manifest, line) tuples.
        first_line = {}
        other_domains = 0
        for index, manifest in enumerate(manifests):
            test_domain = os.path.basename(os.path.dirname(manifest))  # test_opus/<domain>/manifest.jsonl
            lines_read = 0
            # Binary, decoded line by line, so that a line that is not UTF-8 is reported by its number.
            with open(manifest, "rb") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    lines_read += 1
                    try:
                        example = self._parse(line, manifest, number, test_domain, self._verified.get(manifest))
                        first = first_line.setdefault(example["id"], index << 32 | number)
                        if first != index << 32 | number:
                            raise ManifestError(
                                f"{manifest}, line {number}",
                                "duplicate id",
                                f" {example['id']!r}, first on {manifests[first >> 32]}, line {first & 0xFFFFFFFF}: "
                                "ids must be unique",
                            )
                    except ManifestError as error:
                        if not self.config.skip_invalid:
                            raise
                        report.skip(error)
                        continue
                    if example["domain"] not in self.config.domains:
                        other_domains += 1
                        continue
                    report.kept += 1
                    kept_lines[index].append(number - 1)
                    yield f"{manifest}:{number}", example
            if lines_read == 0:
                raise ManifestError(manifest, "empty manifest", ": it has no lines")
        if report.kept == 0:  # datasets would only say "Instruction 'test' corresponds to no data"
            raise ManifestError(
                ", ".join(manifests),
                "no examples",
                f" for Golos {self.config.name!r} {split}: of the lines, {other_domains} are of other domains and "
                f"{len(report.skipped)} invalid {report.reasons}",
            )
        self.reports[split] = report.summary(manifests, self.config.name)
        if all(manifest in self._verified for manifest in manifests):
            self.stamps[split] = np.concatenate(
                [
                    np.stack([self._verified[m]["size"][lines], self._verified[m]["mtime"][lines]], axis=1)
                    for m, lines in zip(manifests, (np.frombuffer(k, np.int64) for k in kept_lines))
                ]
            )

    def _parse(self, line, manifest, number, test_domain, verified=None):
        where = f"{manifest}, line {number}"
        entry = parse_line(line, where)
        if not isinstance(entry.get("text"), str):
            reason = "missing key 'text'" if "text" not in entry else "'text' is not a string"
            raise ManifestError(where, reason, "" if "text" not in entry else f": {entry['text']!r}")
        if not entry["text"].strip():
            raise ManifestError(where, "empty transcript", ": nothing to train or score on")
        duration = entry.get("duration")
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, (int, float)):
                raise ManifestError(where, "'duration' is not a number", f": {duration!r} (seconds, or leave it out)")
            if not (math.isfinite(duration) and duration > 0):
                raise ManifestError(where, "'duration' is not a positive number", f": {duration!r}")
        id_ = entry.get("id")
        if id_ is not None and (isinstance(id_, bool) or not isinstance(id_, (str, int)) or id_ == ""):
            raise ManifestError(where, "'id' is not a non-empty string", f": {id_!r}")
        path = audio_path(manifest, entry["audio_filepath"])
        status = verified["status"][number - 1] if verified is not None else -1
        if verified is not None and status == prepare.FAILED:
            raise ManifestError(where, *verified["errors"][number - 1])
        if self.config.verify_audio != "none" or duration is None:
            if verified is not None and status == prepare.MEASURED:
                measured = float(verified["duration"][number - 1])
            else:
                measured = check_audio(path, self.config.verify_audio, where)
            if duration is not None and abs(measured - duration) > DURATION_TOLERANCE:
                raise ManifestError(
                    where,
                    "duration differs from the audio",
                    f": the manifest says {duration} s, {path} has {measured:.3f} s (truncated or replaced file, "
                    f"or a wrong manifest: fix whichever is wrong)",
                )
            duration = measured
        elif (verified is None or status != prepare.EXISTS) and not os.path.isfile(path):
            raise ManifestError(where, "audio file not found", f": {path}")
        if test_domain in TEST_SETS:
            domain = test_domain
        elif entry.get("domain") is not None:
            domain = entry["domain"]
            if domain not in TEST_SETS:
                raise ManifestError(where, "unknown 'domain'", f": {domain!r} (use 'crowd' or 'farfield')")
        else:
            domain = "farfield" if entry["audio_filepath"].split("/", 1)[0] == "farfield" else "crowd"
        return {
            "id": str(id_) if id_ is not None else os.path.splitext(os.path.basename(path))[0],
            "audio": {"path": path, "bytes": None},
            "text": entry["text"],
            "duration": float(duration),
            "domain": domain,
        }


def _logger():
    return datasets.logging.get_logger(__name__)


class SplitReport:
    """What preparing a split kept and skipped, and why; logged and saved beside the manifests' cache."""

    def __init__(self):
        self.kept = 0
        self.skipped = []
        self.reasons = {}

    def skip(self, error: ManifestError):
        self.skipped.append(str(error))
        self.reasons[error.reason] = self.reasons.get(error.reason, 0) + 1

    def summary(self, manifests, config_name):
        reasons = self.reasons
        summary = {
            "manifests": manifests,
            "kept": self.kept,
            "skipped": len(self.skipped),
            "skipped_by_reason": reasons,
            "skipped_examples": self.skipped,
        }
        if self.skipped:
            datasets.logging.get_logger(__name__).warning(
                f"Golos {config_name}: kept {self.kept}, skipped {len(self.skipped)} invalid examples: {reasons}"
            )
        return summary
