"""Character CTC tokenizer whose ids are the course's output indices: space 0, а..я 1..32, blank 33."""

import os

from transformers import Wav2Vec2CTCTokenizer

from .text import WHITESPACE, normalize_text

# The course labels, in output-index order; "|" stands for the space (the Wav2Vec2 word delimiter).
COURSE_LABELS = [" "] + list("абвгдежзийклмнопрстуфхцчшщъыьэюя")
DEFAULT_VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocab.json")


class EBranchformerCTCTokenizer(Wav2Vec2CTCTokenizer):
    """`Wav2Vec2CTCTokenizer` over the course alphabet, with the shared normalisation and no unknown token:
    text with characters outside the vocabulary raises a `ValueError` that names them, instead of being
    mapped to an id the model was not trained on. Use `unknown_characters(text)` to find them first."""

    vocab_files_names = {"vocab_file": "vocab.json"}

    def __init__(
        self,
        vocab_file=DEFAULT_VOCAB_FILE,
        unk_token=None,
        pad_token="<pad>",
        bos_token=None,
        eos_token=None,
        word_delimiter_token="|",
        **kwargs,
    ):
        kwargs.pop("do_lower_case", None)  # normalize_text lower-cases; Wav2Vec2's flag would upper-case
        super().__init__(
            vocab_file,
            unk_token=unk_token,
            pad_token=pad_token,
            bos_token=bos_token,
            eos_token=eos_token,
            word_delimiter_token=word_delimiter_token,
            do_lower_case=False,
            **kwargs,
        )

    @property
    def characters(self) -> set[str]:
        """The characters a transcript may hold (after normalisation)."""
        return {
            self.replace_word_delimiter_char if t == self.word_delimiter_token else t
            for t in self.encoder
            if len(t) == 1
        }

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of the normalised `text` that the vocabulary lacks, in order of first appearance."""
        return list(dict.fromkeys(c for c in normalize_text(text) if c not in self.characters))

    @staticmethod
    def _compute_offsets(char_repetitions, chars, ctc_token):
        """Wav2Vec2's character offsets as plain ints instead of numpy ints: the ASR pipeline multiplies them
        into its timestamps, which were np.float64 and so not JSON-serialisable."""
        offsets = Wav2Vec2CTCTokenizer._compute_offsets(char_repetitions, chars, ctc_token)
        return [{**o, "start_offset": int(o["start_offset"]), "end_offset": int(o["end_offset"])} for o in offsets]

    def prepare_for_tokenization(self, text, is_split_into_words=False, **kwargs):
        """Whitespace is normalised (runs -> one space, none at the ends) on the whole text, before Transformers
        splits it around added tokens: `_tokenize` then sees the pieces between them with their spaces, which
        become word delimiters, as in `Wav2Vec2CTCTokenizer` ("<added> мир" -> [<added>, "|", "м", ...]).
        Case and ё are normalised per piece, in `_tokenize`, so added tokens match as they were added."""
        text = WHITESPACE.sub(" ", text).strip()
        return super().prepare_for_tokenization(text, is_split_into_words=is_split_into_words, **kwargs)

    def _tokenize(self, text, **kwargs):
        # normalize_text without its strip: a piece's leading or trailing space separates it from an added token.
        text = WHITESPACE.sub(" ", text.lower().replace("ё", "е"))
        unknown = self.unknown_characters(text)
        if unknown:
            raise ValueError(f"characters {unknown} are not in the vocabulary, in text {normalize_text(text)!r}")
        return list(text.replace(" ", self.word_delimiter_token))
