"""Golos (Russian speech, crowd and farfield domains) as a `datasets` builder.

Reads the course archive layout, or any folder of NeMo-style manifests:

    DATA_DIR/train_opus/manifest.jsonl
    DATA_DIR/test_opus/crowd/manifest.jsonl
    DATA_DIR/test_opus/farfield/manifest.jsonl

Each manifest line is a JSON object with `audio_filepath` (relative to the manifest's folder), `text`,
`duration` (seconds, optional: read from the file when absent) and optionally `id` and `domain`. In the
train manifest the domain is the `domain` key or else the first folder of `audio_filepath`
("crowd/..." or "farfield/..."; anything else counts as crowd).

Configurations: "crowd", "farfield", "all" (both domains); splits "train" and "test".

The `audio` column stores the file's path only, so preparing the 1.1 M-file train split reads no audio
into Arrow and holds nothing in memory; the audio is decoded when an example is read.

With `datasets` < 4 this file also works as a loading script:
`load_dataset("golos/golos.py", "farfield", data_dir=...)`. With any version, use `golos.load_golos`.
"""

import json
import os
from dataclasses import dataclass

import datasets
import soundfile as sf

SAMPLING_RATE = 16000
MANIFESTS = {
    "train": ["train_opus/manifest.jsonl"],
    "test": ["test_opus/crowd/manifest.jsonl", "test_opus/farfield/manifest.jsonl"],
}
DOMAINS = {"crowd": ("crowd",), "farfield": ("farfield",), "all": ("crowd", "farfield")}


class ManifestError(ValueError):
    """A bad manifest line or audio file; the message names the manifest, the line and the fault,
    `reason` is the kind of fault (what skip reports count by)."""

    def __init__(self, where: str, reason: str, detail: str = ""):
        super().__init__(f"{where}: {reason}{detail}")
        self.reason = reason


@dataclass
class GolosConfig(datasets.BuilderConfig):
    """
    Args:
        splits: the splits to prepare (load_golos prepares only the one asked for: a test set then
            never waits for a pass over the 1.1 M train lines).
        skip_invalid: skip bad lines and files (counted in the split's report) instead of raising.
        verify_audio: "header" reads each file's header (rate, channels, length); "full" also decodes
            all samples (finds truncated or corrupted files, slow on the full train set); "none" only
            checks that the file exists.
    """

    domains: tuple = ("crowd", "farfield")
    splits: tuple = ("train", "test")
    skip_invalid: bool = False
    verify_audio: str = "header"


class Golos(datasets.GeneratorBasedBuilder):
    """Golos speech recognition corpus: crowd-sourced and farfield (smart speaker) Russian speech."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = GolosConfig
    BUILDER_CONFIGS = [GolosConfig(name=name, domains=domains) for name, domains in DOMAINS.items()]
    DEFAULT_CONFIG_NAME = "all"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reports = {}  # split -> what preparing it kept and skipped (see SplitReport)

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
                    "domain": datasets.ClassLabel(names=["crowd", "farfield"]),
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
        for split, manifests in MANIFESTS.items():
            if split not in self.config.splits:
                continue
            paths = [os.path.join(data_dir, m) for m in manifests]
            present = [p for p in paths if os.path.isfile(p)]
            if present:
                generators.append(
                    datasets.SplitGenerator(name=split, gen_kwargs={"manifests": present, "split": split})
                )
        if not generators:
            raise FileNotFoundError(
                f"{data_dir}: no Golos manifest found (expected {', '.join(sum(MANIFESTS.values(), []))})"
            )
        return generators

    def _generate_examples(self, manifests, split):
        report = SplitReport()
        for manifest in manifests:
            test_domain = os.path.basename(os.path.dirname(manifest))  # test_opus/<domain>/manifest.jsonl
            with open(manifest, encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        example = self._parse(line, manifest, number, test_domain)
                    except ManifestError as error:
                        if not self.config.skip_invalid:
                            raise
                        report.skip(error)
                        continue
                    if example["domain"] not in self.config.domains:
                        continue
                    report.kept += 1
                    yield f"{manifest}:{number}", example
        self.reports[split] = report.summary(manifests, self.config.name)

    def _parse(self, line, manifest, number, test_domain):
        where = f"{manifest}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ManifestError(where, "not valid JSON", f" ({error.msg})") from None
        if not isinstance(entry, dict):
            raise ManifestError(where, "not a JSON object", f", got {type(entry).__name__}")
        for key in ("audio_filepath", "text"):
            if not isinstance(entry.get(key), str):
                reason = f"missing key {key!r}" if key not in entry else f"{key!r} is not a string"
                raise ManifestError(where, reason)
        path = os.path.normpath(os.path.join(os.path.dirname(manifest), entry["audio_filepath"]))
        if not os.path.isfile(path):
            raise ManifestError(where, "audio file not found", f": {path}")
        duration = entry.get("duration")
        if self.config.verify_audio != "none" or duration is None:
            duration = self._check_audio(path, where)
        if test_domain in ("crowd", "farfield"):
            domain = test_domain
        else:
            domain = entry.get("domain") or entry["audio_filepath"].split("/", 1)[0]
            domain = "farfield" if domain == "farfield" else "crowd"
        return {
            "id": str(entry.get("id") or os.path.splitext(os.path.basename(path))[0]),
            "audio": {"path": path, "bytes": None},
            "text": entry["text"],
            "duration": float(duration),
            "domain": domain,
        }

    def _check_audio(self, path, where):
        try:
            info = sf.info(path)
            if self.config.verify_audio == "full":
                samples, _ = sf.read(path, dtype="float32")
                if len(samples) == 0:
                    raise ManifestError(where, "audio file has no samples", f": {path}")
        except ManifestError:
            raise
        except Exception as error:  # libsndfile raises several types for unreadable data
            raise ManifestError(where, "cannot decode audio file", f" {path} ({error})") from None
        if info.samplerate != SAMPLING_RATE:
            raise ManifestError(where, "wrong sampling rate", f": {path} is at {info.samplerate} Hz, expected {SAMPLING_RATE}")
        if info.channels != 1:
            raise ManifestError(where, "not mono", f": {path} has {info.channels} channels")
        return info.frames / info.samplerate


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
        summary = {"manifests": manifests, "kept": self.kept, "skipped": len(self.skipped),
                   "skipped_by_reason": reasons, "skipped_examples": self.skipped}  # fmt: skip
        if self.skipped:
            datasets.logging.get_logger(__name__).warning(
                f"Golos {config_name}: kept {self.kept}, skipped {len(self.skipped)} invalid examples: {reasons}"
            )
        return summary
