"""Word error rate as an `evaluate` module, shipped with the project so that `evaluate.load` works
offline. It computes what the Hub's "wer" module computes: corpus-level WER, the total of substitutions,
deletions and insertions over all utterances divided by the total number of reference words, with jiwer.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = "Word error rate: (S + D + I) / N over the whole corpus, N the number of reference words."
_KWARGS = """
Args:
    predictions (list of str): transcriptions to score.
    references (list of str): reference transcriptions, one per prediction.
    concatenate_texts (bool): score the corpus as one long utterance (the same total here).
Returns:
    float: the word error rate (0 = perfect; can exceed 1 with many insertions).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class WER(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Word_error_rate"],
        )

    def _compute(self, predictions=None, references=None, concatenate_texts=False):
        if concatenate_texts:
            return jiwer.wer(" ".join(references), " ".join(predictions))
        out = jiwer.process_words(references, predictions)
        return (out.substitutions + out.deletions + out.insertions) / (out.substitutions + out.deletions + out.hits)
