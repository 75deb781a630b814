"""modeling_ebranchformer.processing_lm: a model folder with a language model (alphabet.json,
language_model/), loaded by AutoProcessor as EBranchformerProcessorWithLM, its batch_decode, its errors, and the
folder loaded without this package through trust_remote_code."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from lm_inputs import LABELS, crafted_logits, model_logits, train_sentences

from modeling_ebranchformer import EBranchformerProcessor, EBranchformerProcessorWithLM
from modeling_ebranchformer.ngram import LanguageModelError


def test_folder_layout_and_auto_processor(lm_folder):
    from transformers import AutoProcessor

    _, folder, plain = lm_folder
    assert json.loads((folder / "alphabet.json").read_text())["labels"] == LABELS
    assert sorted(p.name for p in (folder / "language_model").iterdir()) == ["attrs.json", "lm.arpa", "unigrams.txt"]
    assert set(json.loads((folder / "language_model" / "attrs.json").read_text())) == {
        "alpha",
        "beta",
        "unk_score_offset",
        "score_boundary",
    }
    vocabulary = {w for s in train_sentences() for w in s}
    assert set((folder / "language_model" / "unigrams.txt").read_text().split()) == vocabulary
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is EBranchformerProcessorWithLM
    assert processor.language_model.order == 3 and "салют" in processor.language_model.vocabulary
    assert type(AutoProcessor.from_pretrained(plain)) is EBranchformerProcessor


def test_batch_decode_beam_searches_logits_and_decodes_ids_greedily(lm_folder, speech_like):
    from transformers import AutoProcessor

    model, folder, _ = lm_folder
    processor = AutoProcessor.from_pretrained(folder)
    logits = torch.cat([model_logits(model, processor, speech_like(2.0, seed)) for seed in (1, 2)])
    output = processor.batch_decode(logits, output_word_offsets=True, beam_width=16)
    for i in range(2):
        beams = processor.decoder.decode_beams(logits[i].numpy(), beam_width=16)
        assert output.text[i] == beams[0][0] and output.text[i]
        assert [(o["word"], o["start_offset"], o["end_offset"]) for o in output.word_offsets[i]] == [
            (w, s, e) for w, (s, e) in beams[0][2]
        ]
    ids = logits.argmax(-1)
    assert processor.batch_decode(ids) == processor.tokenizer.batch_decode(ids)
    noisy = torch.tensor(crafted_logits("салют выключи свет", np.random.default_rng(3), noise=2.0))[None]
    n_best = processor.batch_decode(noisy, n_best=2)
    assert n_best.text[0][0] == processor.batch_decode(noisy).text[0] == "салют выключи свет"
    assert len(set(n_best.text[0])) == 2 and n_best.lm_score[0] == sorted(n_best.lm_score[0], reverse=True)
    # per-call weights do not stick
    processor.batch_decode(logits, alpha=0.0, beta=0.0)
    assert processor.decoder.alpha == 0.5 and processor.decoder.beta == 1.5
    with pytest.raises(LanguageModelError, match="alpha"):
        processor.batch_decode(logits, alpha=11.0)


def test_an_alphabet_that_does_not_cover_the_tokenizer_is_refused(lm_folder, tmp_path):
    from transformers import AutoProcessor

    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    alphabet = json.loads((copy / "alphabet.json").read_text())
    alphabet["labels"] = [x for x in alphabet["labels"] if x != "я"]
    (copy / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False))
    with pytest.raises(LanguageModelError, match=r"alphabet.json does not cover the tokenizer: it lacks \['я'\]"):
        AutoProcessor.from_pretrained(copy)
    attrs = copy / "language_model" / "attrs.json"
    attrs.write_text(json.dumps({"alpha": 0.5, "beta": 99.0}))
    alphabet["labels"] = LABELS
    (copy / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False))
    with pytest.raises(LanguageModelError, match=r"attrs.json: beta=99.0 is out of range"):
        AutoProcessor.from_pretrained(copy)
    attrs.write_text(json.dumps({"alpha": 0.5, "beta": 1.0}))
    (copy / "language_model" / "lm.arpa").write_bytes(b"\x00\xff" * 100)
    alphabet["labels"] = LABELS
    (copy / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False))
    with pytest.raises(LanguageModelError, match="lm.arpa is neither an ARPA"):
        AutoProcessor.from_pretrained(copy)


@pytest.mark.slow
def test_folder_loads_without_the_package_through_trust_remote_code(lm_folder, tmp_path, speech_like):
    from transformers import AutoProcessor

    model, folder, _ = lm_folder
    processor = AutoProcessor.from_pretrained(folder)
    logits = model_logits(model, processor, speech_like(2.0, 7))
    np.save(tmp_path / "logits.npy", logits.numpy())
    np.save(tmp_path / "wave.npy", speech_like(2.0, 7))
    script = textwrap.dedent(f"""
        import sys, json
        sys.modules["modeling_ebranchformer"] = None  # importing our package must fail here
        import numpy as np
        from transformers import AutoProcessor, pipeline
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert type(processor).__name__ == "EBranchformerProcessorWithLM"
        text = processor.batch_decode(np.load({str(tmp_path / "logits.npy")!r})).text[0]
        asr = pipeline("automatic-speech-recognition", model={str(folder)!r}, trust_remote_code=True,
                       decoder=processor.decoder)
        piped = asr(np.load({str(tmp_path / "wave.npy")!r}))["text"]
        print(json.dumps([text, piped]))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    text, piped = json.loads(run.stdout.strip().splitlines()[-1])
    assert text == processor.batch_decode(logits).text[0] == piped
