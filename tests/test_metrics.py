"""The package's WER and CER modules (ebranchformer_ru/metrics) against edit distances counted by hand,
and `evaluate.load("wer")` offline.

Each case lists its substitutions, deletions and insertions as a person counts them; the expected rate is
(S + D + I) / N with N the number of reference words (characters, spaces included, for CER). Over several
utterances the rate is the corpus one: all errors over all reference words, not a mean of per-utterance rates.
"""

import functools
import os
import subprocess
import sys
import textwrap

import pytest

from ebranchformer_ru.metrics import evaluate_modules_cache, load_metric


@pytest.fixture(scope="module")
def wer():
    return load_metric("wer")


@pytest.fixture(scope="module")
def cer():
    return load_metric("cer")


# (reference, hypothesis, substitutions, deletions, insertions, reference words)
WORD_CASES = [
    ("джой включи свет", "джой включи свет", 0, 0, 0, 3),
    # вызов -> вызод, васильевне -> васильевну, николенко -> ниталенко
    ("салют вызов светлане васильевне николенко", "салют вызод светлане васильевну ниталенко", 3, 0, 0, 5),
    ("да", "", 0, 1, 0, 1),  # nothing recognised: the one word deleted
    ("сколько будет стоить", "сколько будет будет стоить", 0, 0, 1, 3),  # N counts reference words: 1/3
    ("джой включи свет", "джой свет", 0, 1, 0, 3),
    ("включи свет в зале", "включите свет зале", 1, 1, 0, 4),  # включи -> включите, "в" deleted
    ("мама мыла раму", "мыла мама раму", 2, 0, 0, 3),  # a swap costs two edits
    ("да", "да да да", 0, 0, 2, 1),  # insertions can push WER above 1
    ("  позвони   маме ", "позвони маме", 0, 0, 0, 2),  # extra spaces are not words
]

# (reference, hypothesis, substitutions, deletions, insertions, reference characters with spaces)
CHARACTER_CASES = [
    ("свет", "свет", 0, 0, 0, 4),
    ("свет", "цвет", 1, 0, 0, 4),
    ("да", "два", 0, 0, 1, 2),
    ("молоко", "малако", 2, 0, 0, 6),
    ("включи свет", "включисвет", 0, 1, 0, 11),  # the space is a character: its loss counts
    ("джой", "", 0, 4, 0, 4),
    ("сто двадцать", "сто двацать пять", 0, 1, 5, 12),  # "д" deleted; " пять" inserted (5 characters)
]


def ids(cases):
    return [f"{ref!r}->{hyp!r}" for ref, hyp, *_ in cases]


@pytest.mark.parametrize("reference,hypothesis,s,d,i,n", WORD_CASES, ids=ids(WORD_CASES))
def test_wer_of_one_utterance_is_its_word_edit_distance_over_its_reference_words(
    wer, reference, hypothesis, s, d, i, n
):
    assert wer.compute(predictions=[hypothesis], references=[reference]) == (s + d + i) / n


@pytest.mark.parametrize("reference,hypothesis,s,d,i,n", CHARACTER_CASES, ids=ids(CHARACTER_CASES))
def test_cer_of_one_utterance_is_its_character_edit_distance_over_its_reference_characters(
    cer, reference, hypothesis, s, d, i, n
):
    assert len(reference) == n
    assert cer.compute(predictions=[hypothesis], references=[reference]) == (s + d + i) / n


def test_wer_of_a_corpus_is_total_errors_over_total_reference_words(wer):
    cases = WORD_CASES[1:5]  # 3 + 1 + 1 + 1 = 6 errors over 5 + 1 + 3 + 3 = 12 words
    references, hypotheses = [c[0] for c in cases], [c[1] for c in cases]
    errors, words = sum(s + d + i for _, _, s, d, i, _ in cases), sum(c[5] for c in cases)
    assert (errors, words) == (6, 12)
    corpus = wer.compute(predictions=hypotheses, references=references)
    assert corpus == 6 / 12
    mean_of_rates = sum((s + d + i) / n for _, _, s, d, i, n in cases) / len(cases)  # 0.567: not the WER
    assert abs(corpus - mean_of_rates) > 0.05
    # The order of the utterances does not matter; each hypothesis is aligned with its own reference only.
    assert wer.compute(predictions=hypotheses[::-1], references=references[::-1]) == 6 / 12


def test_cer_of_a_corpus_is_total_errors_over_total_reference_characters(cer):
    cases = [CHARACTER_CASES[2], CHARACTER_CASES[3], CHARACTER_CASES[4]]  # 1 + 2 + 1 errors over 2 + 6 + 11
    references, hypotheses = [c[0] for c in cases], [c[1] for c in cases]
    assert cer.compute(predictions=hypotheses, references=references) == 4 / 19
    assert abs(4 / 19 - (1 / 2 + 2 / 6 + 1 / 11) / 3) > 0.05  # the mean of per-utterance rates differs


def test_a_perfect_corpus_scores_zero(wer, cer):
    references = ["джой включи свет", "да", "сколько будет стоить"]
    assert wer.compute(predictions=references, references=references) == 0.0
    assert cer.compute(predictions=references, references=references) == 0.0


@pytest.mark.slow
def test_evaluate_load_by_name_works_offline_outside_the_repository(tmp_path):
    """What users type, `evaluate.load("wer")`, offline, from another folder, in a fresh module cache: it fails
    until `python -m ebranchformer_ru.metrics install` has run once (importing the project writes nothing there), then
    works in a process that uses only evaluate; a second install leaves the placed copy as it is."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    compute = textwrap.dedent("""
        import evaluate
        wer = evaluate.load("wer").compute(predictions=["джой свет", "да"], references=["джой включи свет", "да"])
        cer = evaluate.load("cer").compute(predictions=["дажой"], references=["джой"])
        print(wer, cer)
    """)
    run = functools.partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True)
    result = run([sys.executable, "-c", "import modeling_ebranchformer, ebranchformer_ru.metrics\n" + compute])
    assert result.returncode != 0 and not list(tmp_path.rglob("wer.py"))  # (evaluate makes the cache folder)
    install = run([sys.executable, "-m", "ebranchformer_ru.metrics", "install"])
    assert install.returncode == 0 and "wer: placed in" in install.stdout, install.stderr[-2000:]
    result = run([sys.executable, "-c", compute])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(1 / 4), str(1 / 4)]  # 1 deletion in 4 words; 1 insertion in 4 chars
    again = run([sys.executable, "-m", "ebranchformer_ru.metrics", "install"])
    assert again.returncode == 0 and "wer: a copy is in" in again.stdout


def test_the_project_computes_what_the_evaluate_modules_compute(wer, cer):
    """One computation: `ebranchformer_ru.metrics.wer`/`cer`, which the project's code calls, equal the shipped modules."""
    from ebranchformer_ru import metrics

    for cases, module, function in ((WORD_CASES, wer, metrics.wer), (CHARACTER_CASES, cer, metrics.cer)):
        references, hypotheses = [c[0] for c in cases], [c[1] for c in cases]
        assert function(references, hypotheses) == module.compute(predictions=hypotheses, references=references)
        for reference, hypothesis, *_ in cases:
            assert function([reference], [hypothesis]) == module.compute(
                predictions=[hypothesis], references=[reference]
            )


def test_the_module_cache_is_where_evaluate_looks(tmp_path, monkeypatch):
    import evaluate.loading

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    assert evaluate_modules_cache() == tmp_path / "modules" / "evaluate_modules"
    monkeypatch.delenv("HF_MODULES_CACHE")
    expected = evaluate.loading.init_dynamic_modules()  # evaluate's own default (HF_HOME or ~/.cache)
    assert str(evaluate_modules_cache()) == expected
