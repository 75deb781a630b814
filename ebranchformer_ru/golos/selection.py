"""Data selections of a Golos split (the course filter, random subsets by duration, the CTC length check), each
returning the selection and a report of what it removed and why.

Columns are read whole, with Arrow (`column`): with datasets >= 4 `dataset[name]` is a lazy column whose
items are read one Arrow row at a time (about 15 us each when iterated, 140 us when indexed), minutes at the
1.1 M Golos train lines, and even `dataset[name][:]` gathers a selection row by row (9 s for 1.1 M
durations, against 0.1 s for Arrow's `take`). Selections pass their indices as a NumPy array, which
datasets fingerprints as one buffer (a list of 1.1 M ints is pickled item by item: about 10 s).
"""

import random
from collections import Counter
from dataclasses import dataclass, field

import datasets
import numpy as np

from modeling_ebranchformer.tokenization import normalize_text


def column(dataset: datasets.Dataset, name: str) -> list:
    """`dataset[name][:]` (a list of the plain, unformatted values) read through Arrow in one go."""
    try:
        values = dataset.data.column(name)
        if dataset._indices is not None:
            values = values.take(dataset._indices.column(0))
    except AttributeError:  # not an Arrow-backed Dataset as datasets 2 to 5 build it
        return list(dataset[name][:])
    return values.to_pylist()


def _select(dataset: datasets.Dataset, keep: list) -> datasets.Dataset:
    return dataset if len(keep) == len(dataset) else dataset.select(np.asarray(keep, dtype=np.int64))


@dataclass
class SelectionReport:
    name: str
    total: int
    removed: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.total - sum(self.removed.values())

    def __str__(self):
        reasons = ", ".join(f"{n} {why}" for why, n in self.removed.items() if n) or "none"
        text = f"{self.name}: kept {self.kept} of {self.total}; removed: {reasons}"
        return text + "".join(f"\n  {d}" for d in self.details)


def course_filter(dataset: datasets.Dataset, min_duration=1.0, max_duration=16.7, max_text_length=68):
    """The course's train filter: duration in [min_duration, max_duration] s and at most max_text_length
    characters. Apply it to train only: test sets are evaluated whole."""
    keep = []
    report = SelectionReport("course filter", len(dataset))
    reasons = (f"shorter than {min_duration} s", f"longer than {max_duration} s", f"text over {max_text_length} chars")
    report.removed = dict.fromkeys(reasons, 0)
    for index, (duration, text) in enumerate(zip(column(dataset, "duration"), column(dataset, "text"))):
        if duration < min_duration:
            report.removed[reasons[0]] += 1
        elif duration > max_duration:
            report.removed[reasons[1]] += 1
        elif len(text) > max_text_length:
            report.removed[reasons[2]] += 1
        else:
            keep.append(index)
    return _select(dataset, keep), report


def random_subset_by_duration(dataset: datasets.Dataset, total_seconds=600.0, seed=0):
    """A reproducible random subset of about `total_seconds` of audio (for example "a random ~10 minutes,
    ~100 utterances"): utterances in a seeded random order until the total is reached."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    durations = column(dataset, "duration")
    chosen, total = [], 0.0
    for index in order:
        if total >= total_seconds:
            break
        chosen.append(index)
        total += durations[index]
    report = SelectionReport(f"random subset of {total_seconds:.0f} s (seed {seed})", len(dataset))
    report.removed = {"not drawn": len(dataset) - len(chosen)}
    report.details = [f"{len(chosen)} utterances, {total:.1f} s of {sum(durations):.1f} s"]
    return _select(dataset, sorted(chosen)), report


def normalize_and_check_texts(dataset: datasets.Dataset, tokenizer):
    """Apply the tokenizer's normalisation to `text` and remove the utterances whose text has characters
    outside the vocabulary, naming the characters and counting them: nothing is dropped silently.

    The same check as `tokenizer.unknown_characters`, with the vocabulary's characters read once (the
    tokenizer builds that set on every call: 0.6 ms a text, 10 minutes for the Golos train set). The text
    column is rewritten only when normalisation changed a text."""
    texts = column(dataset, "text")
    characters = tokenizer.characters
    keep, normalized, unknown = [], [], Counter()
    changed = False
    for index, text in enumerate(texts):
        clean = normalize_text(text)
        missing = () if characters.issuperset(clean) else [c for c in dict.fromkeys(clean) if c not in characters]
        if missing:
            unknown.update(missing)
        else:
            keep.append(index)
            normalized.append(clean)
            changed = changed or clean != text
    removed = {"with characters outside the vocabulary": len(texts) - len(keep)}
    report = SelectionReport("vocabulary check", len(dataset), removed)
    if unknown:
        report.details = [f"unknown characters (utterances): {dict(unknown.most_common(20))}"]
    dataset = _select(dataset, keep)
    if changed:
        dataset = dataset.remove_columns("text").add_column("text", normalized)
    return dataset, report


def ctc_feasible(dataset: datasets.Dataset, output_frames):
    """Remove utterances whose transcript cannot fit their CTC frames: CTC needs one frame per character plus
    a blank between repeated characters, or the loss is infinite. `output_frames(durations)` gives the CTC
    frames of each duration (`modeling_ebranchformer.ctc.output_frames` binds a model and its features)."""
    durations = column(dataset, "duration")
    distinct = sorted(set(durations))  # Golos durations repeat (a few thousand values in 1.1 M lines)
    frames_of = dict(zip(distinct, output_frames(distinct)))
    # len(text) + repeats <= 2 len(text) - 1: most transcripts fit without counting their repeats
    keep = [
        i
        for i, (text, d) in enumerate(zip(column(dataset, "text"), durations))
        if 2 * len(text) - 1 <= frames_of[d] or ctc_target_frames(text) <= frames_of[d]
    ]
    report = SelectionReport("CTC length check", len(dataset))
    report.removed = {"with a transcript longer than the output frames": len(dataset) - len(keep)}
    return _select(dataset, keep), report


def ctc_target_frames(text: str) -> int:
    """The fewest CTC frames that can emit `text`: its characters plus a blank between each repeated pair."""
    return len(text) + sum(map(str.__eq__, text, text[1:]))
