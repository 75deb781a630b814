"""Long recordings: fixed 30 s windows against voice-activity segments (`--vad`), and how well word confidence
tells right words from wrong ones.

    python benchmarks/long_recordings.py outputs/mini                # 20 min, 3 interleaved rounds, 2 threads

1. A 20-minute recording is built from the embedded test sets' utterances (crowd, farfield, heldout_voice, in
   order, repeated as needed) with pauses drawn from 0.3-3 s (seed 0), scaled so that inserted silence is 20 % of
   it. Both ways transcribe it whole (greedy); printed: WER against the utterances' texts joined, wall time
   (median of the rounds, interleaved), and the share of subtitle cue boundaries that lie in an inserted pause
   (not inside an utterance).
2. Confidence: every word of the greedy (and, where the folder has a language model, LM) transcripts of the
   embedded test sets, labelled right or wrong by its alignment to the reference (jiwer); printed: the AUC of
   confidence for "word right" (0.5: no better than chance, 1: every right word above every wrong one).
"""

import argparse
import itertools
import statistics
import sys
import time

import jiwer
import numpy as np
from common import machine, table

from ebranchformer_ru.audio import AudioFile, read_audio
from ebranchformer_ru.formats import cues
from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.inference import Transcriber, load_backend, load_decoder
from ebranchformer_ru.manifest import audio_path, read_manifest
from ebranchformer_ru.vad import VoiceActivity
from modeling_ebranchformer.text import normalize_text

SETS = ("crowd", "farfield", "heldout_voice")
RATE = 16000


def utterances():
    for name in SETS:
        manifest = EMBEDDED_CORPUS / "test_opus" / name / "manifest.jsonl"
        for _, entry in read_manifest(manifest):
            yield audio_path(manifest, entry["audio_filepath"]), normalize_text(entry["text"])


def long_recording(minutes=20.0, silence_share=0.2, seed=0):
    """(samples, reference text, inserted pauses as (start, end) samples)."""
    rng = np.random.default_rng(seed)
    pool, speech, texts = list(utterances()), [], []
    while sum(len(s) for s in speech) < (1 - silence_share) * minutes * 60 * RATE:
        path, text = pool[len(speech) % len(pool)]
        speech.append(read_audio(path))
        texts.append(text)
    pauses = rng.uniform(0.3, 3.0, len(speech) - 1)
    pauses *= silence_share / (1 - silence_share) * sum(len(s) for s in speech) / RATE / pauses.sum()
    pauses = np.clip(pauses, 0.3, 3.0)
    parts, gaps, at = [], [], 0
    for index, samples in enumerate(speech):
        parts.append(samples)
        at += len(samples)
        if index < len(pauses):
            gap = int(pauses[index] * RATE)
            parts.append(np.zeros(gap, np.float32))
            gaps.append((at, at + gap))
            at += gap
    return np.concatenate(parts), " ".join(t for t in texts if t), gaps


def boundaries_in_pauses(record, gaps) -> str:
    """How many boundaries between consecutive subtitle cues lie in an inserted pause, of how many: the silence
    from the end of one cue to the start of the next takes in part of an inserted pause (the utterances' own
    leading and trailing silence is a pause too, but only the inserted one is known for sure to hold no word)."""
    spans = cues(record)
    inside = 0
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        inside += any(end < b / RATE and a / RATE < start for a, b in gaps)
    total = max(1, len(spans) - 1)
    return f"{inside / total:.1%} ({inside} of {total})"


def segmentation(model, threads, rounds):
    samples, reference, gaps = long_recording()
    seconds = len(samples) / RATE
    print(
        f"recording: {seconds / 60:.1f} min, {len(gaps) + 1} utterances, inserted silence "
        f"{sum(b - a for a, b in gaps) / len(samples):.0%}"
    )
    backend = load_backend(model, threads=threads)
    ways = {
        "fixed 30 s windows": Transcriber(backend, timestamps=True),
        "VAD segments (--vad)": Transcriber(backend, timestamps=True, segmenter=VoiceActivity()),
    }
    times, records = {name: [] for name in ways}, {}
    for _ in range(rounds):
        for name, transcriber in ways.items():
            start = time.perf_counter()
            (records[name],) = transcriber.transcribe([samples])
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fixed 30 s windows"])
    rows = []
    for name in ways:
        median = statistics.median(times[name])
        rows.append(
            [
                name,
                f"{100 * jiwer.wer(reference, records[name]['text']):.2f} %",
                f"{median:.1f} s ({min(times[name]):.1f}-{max(times[name]):.1f})",
                f"{1 - median / base:+.0%}" if name != "fixed 30 s windows" else "",
                boundaries_in_pauses(records[name], gaps),
            ]
        )
    print(table(["", "WER", "wall time, median (range)", "time saved", "cue boundaries in a pause"], rows))


def auc(scores, labels) -> float:
    """P(a right word's confidence > a wrong word's), ties counted half (Mann-Whitney)."""
    scores, labels = np.asarray(scores), np.asarray(labels, bool)
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(sorted_scores):  # ties: their mean rank
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    right, wrong = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - right * (right + 1) / 2) / (right * wrong))


def labelled_words(reference, record):
    """(confidence, right) of each hypothesis word, by jiwer's alignment to the reference."""
    words = record["words"]
    if not words:
        return []
    out = jiwer.process_words(reference or "-", " ".join(w["word"] for w in words))
    right = [False] * len(words)
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            for index in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                right[index] = True
    return [(w["confidence"], r) for w, r in zip(words, right)]


def confidence(model, threads):
    backend = load_backend(model, threads=threads)
    decoders = {"greedy": None}
    if (lm := load_decoder(model, "auto")) is not None:
        decoders["LM"] = lm
    entries = list(utterances())
    recordings = [AudioFile(path) for path, _ in entries]
    rows = []
    for name, decoder in decoders.items():
        records = Transcriber(backend, timestamps=True, decoder=decoder).transcribe(recordings)
        pairs = [pair for (_, text), record in zip(entries, records) for pair in labelled_words(text, record)]
        scores, labels = [c for c, _ in pairs], [r for _, r in pairs]
        mean_right = np.mean([c for c, r in pairs if r])
        mean_wrong = np.mean([c for c, r in pairs if not r])
        rows.append(
            [
                name,
                len(pairs),
                f"{np.mean(labels):.0%}",
                f"{mean_right:.3f}",
                f"{mean_wrong:.3f}",
                f"{auc(scores, labels):.3f}",
            ]
        )
    print(table(["decoder", "words", "right", "mean confidence, right", "wrong", "AUC"], rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    print(f"command: python benchmarks/long_recordings.py {' '.join(sys.argv[1:])}\n")
    segmentation(args.model, args.threads, args.rounds)
    print()
    confidence(args.model, args.threads)


if __name__ == "__main__":
    main()
