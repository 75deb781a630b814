"""Character error rate as an `evaluate` module, shipped with the project so that `evaluate.load` works
offline. It computes what the Hub's "cer" module computes: corpus-level CER over characters (spaces
included) with jiwer, (S + D + I) / N, N the number of reference characters.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = "Character error rate: (S + D + I) / N over the whole corpus, N the number of reference characters."
_KWARGS = """
Args:
    predictions (list of str): transcriptions to score.
    references (list of str): reference transcriptions, one per prediction.
    concatenate_texts (bool): score the corpus as one long utterance.
Returns:
    float: the character error rate.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CER(evaluate.Metric):
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
            return jiwer.cer(" ".join(references), " ".join(predictions))
        out = jiwer.process_characters(references, predictions)
        return (out.substitutions + out.deletions + out.insertions) / (out.substitutions + out.deletions + out.hits)
