"""What the language-model tests share: the tokenizer's labels, the embedded corpus's sentences, logits crafted
to spell a text, a hand-written ARPA file (a helper module: test modules never import each other)."""

import json

import numpy as np
import torch
from project import CORPUS

from ebranchformer_ru.commands import build_lm as build_lm_command
from modeling_ebranchformer import EBranchformerCTCTokenizer
from modeling_ebranchformer.beam_search import tokenizer_labels

TOKENIZER = EBranchformerCTCTokenizer()


LABELS = tokenizer_labels(TOKENIZER)


BLANK = LABELS.index("")


def build_lm(argv):
    """`ebranchformer-build-lm ARGV`'s job on parsed options (errors raised, not exited)."""
    return build_lm_command.build_lm(build_lm_command.build_parser().parse_args(argv))


def train_sentences():
    return [json.loads(line)["text"].split() for line in (CORPUS / "train_opus" / "manifest.jsonl").open()]


ARPA = """\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.5\tа\t-0.25
-0.7\tб\t-0.2
-0.6\t</s>

\\2-grams:
-0.3\t<s> а\t-0.1
-0.2\tа б\t-0.15
-0.4\tб </s>

\\3-grams:
-0.05\t<s> а б

\\end\\
"""


def crafted_logits(text, rng, frames=(2, 4), noise=1.0, confusion=0.0, confusion_margin=1.0):
    """Logits that spell `text` (each character for a few frames, blanks between), with noise; with
    probability `confusion` a character's frames favour another letter by `confusion_margin`."""
    letters = [i for i, c in enumerate(LABELS) if c not in ("", " ")]
    rows = [rng.normal(0, noise, len(LABELS)) + 8 * (np.arange(len(LABELS)) == BLANK)]
    for char in text:
        index = LABELS.index(char)
        wrong = rng.choice(letters) if char != " " and rng.random() < confusion else None
        for _ in range(rng.integers(*frames, endpoint=True)):
            row = rng.normal(0, noise, len(LABELS))
            row[index] += 8
            if wrong is not None and wrong != index:
                row[wrong] += 8 + confusion_margin
            rows.append(row)
        blank = rng.normal(0, noise, len(LABELS))
        blank[BLANK] += 8
        rows.append(blank)
    return np.array(rows, dtype=np.float32)


def crafted_test_sets():
    """The embedded crowd and farfield transcripts, and logits crafted from them with noise and near-miss
    letters (greedy decoding makes errors on them)."""
    rng = np.random.default_rng(1)
    references, logits = [], []
    for name in ("crowd", "farfield"):
        for line in (CORPUS / "test_opus" / name / "manifest.jsonl").open():
            references.append(json.loads(line)["text"])
            logits.append(crafted_logits(references[-1], rng, noise=1.5, confusion=0.06, confusion_margin=0.8))
    return references, logits


def greedy(logits):
    return TOKENIZER.decode(logits.argmax(-1))


def near_miss(text, confused_index, wrong_char, margin=0.4):
    """Logits spelling `text` where the character at `confused_index` (one frame) slightly favours `wrong_char`."""
    rows = []
    for i, char in enumerate(text):
        for _ in range(1 if i == confused_index else 3):
            row = np.zeros(len(LABELS), dtype=np.float32)
            row[LABELS.index(char)] = 6.0
            if i == confused_index:
                row[LABELS.index(wrong_char)] = 6.0 + margin
            rows.append(row)
        blank = np.zeros(len(LABELS), dtype=np.float32)
        blank[BLANK] = 6.0
        rows.append(blank)
    return np.array(rows)


def model_logits(model, processor, wave):
    with torch.no_grad():
        return model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits
