"""Word confidence from a CTC model's log-probabilities (numpy only): the one place of the formulas, which the
inference core (`ebranchformer_ru.inference`: transcribe.py, the server, evaluation) and the ASR pipeline class
(`asr_pipeline.EBranchformerASRPipeline`) both use.

A greedy word's confidence is the geometric mean, over its characters, of each character's peak posterior
probability on the greedy path: near 1 where the model was sure of every character, lower as soon as one was in
doubt. A word of the LM's best beam has two witnesses, and its confidence is their geometric mean: the acoustic
support of the word (the same measure over the best CTC alignment of its characters within its frames, so a word
the LM preferred over what the frames said scores low) and the beam's agreement (the posterior mass, a softmax of
the kept beams' scores, of the beams holding the same word over overlapping frames). Values are rounded to three
decimals.
"""

import math

import numpy as np


def greedy_confidences(log_probs: np.ndarray, ids: np.ndarray, blank_id: int, delimiter_id: int | None) -> list:
    """One confidence per word of the greedy transcript `ids` (the argmax of `log_probs`, (frames, labels)), in
    order. Words are as CTC decoding forms them: runs of equal ids collapse, blanks are dropped, a word delimiter
    ends the word."""
    ids = np.asarray(ids)
    words, current = [], None
    for token, start, end in _runs(ids):
        if token == blank_id:
            continue
        if token == delimiter_id:
            current = None
            continue
        if current is None:
            current = []
            words.append(current)
        current.append(float(log_probs[start:end, token].max()))
    return [_geometric_mean(peaks) for peaks in words]


def aligned_confidence(log_probs: np.ndarray, labels: list, blank_id: int) -> float:
    """The confidence of `labels` (a word's character ids) in `log_probs` (its frames): the Viterbi CTC alignment
    of blank, label, blank, ..., then each label's peak posterior over its aligned frames. 0 where the frames are
    too few for the word."""
    states = [blank_id] + [s for label in labels for s in (label, blank_id)]
    if not labels or len(log_probs) < len(labels):
        return 0.0
    emit = log_probs[:, states]
    # a label may follow the label before the blank between them unless the two are equal (CTC's rule)
    skip = np.array([s >= 2 and states[s] != blank_id and states[s] != states[s - 2] for s in range(len(states))])
    score = np.full(len(states), -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((len(log_probs), len(states)), np.int64)
    for t in range(1, len(log_probs)):
        moves = np.stack(
            [score, np.r_[-np.inf, score[:-1]], np.where(skip, np.r_[-np.inf, -np.inf, score[:-2]], -np.inf)]
        )
        back[t] = moves.argmax(0)
        score = moves.max(0) + emit[t]
    state = len(states) - 1 if score[-1] >= score[-2] else len(states) - 2
    peaks = [-np.inf] * len(labels)
    for t in range(len(log_probs) - 1, -1, -1):
        if state % 2:
            peaks[state // 2] = max(peaks[state // 2], float(emit[t, state]))
        state -= back[t, state]
    return _geometric_mean(peaks) if all(np.isfinite(peaks)) else 0.0


def beam_confidences(log_probs: np.ndarray, beams: list, blank_id: int, word_ids) -> list:
    """One confidence per word of `beams[0]` (the best of the beams an LM search kept, `beam_search.OutputBeam`s,
    best first), in order. `word_ids(word)`: the ids of a word's characters."""
    scores = np.array([b.lm_score for b in beams], np.float64)
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    out = []
    for word, (begin, end) in beams[0].word_offsets:
        acoustic = aligned_confidence(log_probs[begin:end], word_ids(word), blank_id)
        agreement = sum(
            weight
            for weight, beam in zip(weights, beams)
            if any(other == word and start < end and begin < finish for other, (start, finish) in beam.word_offsets)
        )
        out.append(round(math.sqrt(acoustic * min(1.0, agreement)), 3))
    return out


def _runs(ids: np.ndarray) -> list:
    """(id, first frame, end frame) of every run of equal ids."""
    if ids.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], ids.size]
    return [(int(ids[a]), a, b) for a, b in zip(starts.tolist(), ends.tolist())]


def _geometric_mean(log_values: list) -> float:
    return round(math.exp(sum(log_values) / len(log_values)), 3)
