"""Text normalisation shared by training, evaluation, the tokenizer and LM decoding (no dependencies, so that
torch-free LM decoding can use it)."""

import re

WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, ё -> е (the course alphabet has no ё), runs of whitespace -> one space, no leading or
    trailing space."""
    return WHITESPACE.sub(" ", text.lower().replace("ё", "е")).strip()
