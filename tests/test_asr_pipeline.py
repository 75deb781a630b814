"""modeling_ebranchformer.asr_pipeline: Transformers' ASR pipeline decoding with a folder's language model
(`pipeline_class=EBranchformerASRPipeline`), with chunks, word times and decoder_kwargs; the stock pipeline."""

import numpy as np
import pytest
import torch
from lm_inputs import build_lm, model_logits

from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor
from modeling_ebranchformer.ngram import LanguageModelError


def test_pipeline_decodes_with_the_lm_with_chunks_and_word_times(lm_folder, speech_like):
    from transformers import AutoProcessor, pipeline

    from modeling_ebranchformer import EBranchformerASRPipeline

    model, folder, plain = lm_folder
    processor = AutoProcessor.from_pretrained(folder)
    asr = pipeline("automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline)
    assert type(asr) is EBranchformerASRPipeline and asr.type == "ctc_with_lm"
    wave = speech_like(3.0, 5)
    result = asr(wave.copy(), return_timestamps="word")
    output = processor.batch_decode(model_logits(model, processor, wave), output_word_offsets=True)
    assert result["text"] == output.text[0]
    assert [c["text"] for c in result["chunks"]] == result["text"].split()
    for chunk, offset in zip(result["chunks"], output.word_offsets[0]):
        assert chunk["timestamp"] == pytest.approx((offset["start_offset"] * 0.04, offset["end_offset"] * 0.04))
    long = np.concatenate([speech_like(6.0, seed) for seed in range(4)])  # 24 s in chunks of 10 s
    chunked = asr(long, chunk_length_s=10, return_timestamps="word")
    starts = [c["timestamp"][0] for c in chunked["chunks"]]
    assert starts == sorted(starts) and starts[-1] > 15.0
    assert (
        pipeline("automatic-speech-recognition", model=str(plain), pipeline_class=EBranchformerASRPipeline).type
        == "ctc"
    )
    greedy = pipeline(
        "automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline, language_model=False
    )
    assert greedy.type == "ctc"
    # the stock pipeline: greedy unless given the decoder, then the same LM decoding
    assert pipeline("automatic-speech-recognition", model=str(folder)).type == "ctc"
    stock = pipeline("automatic-speech-recognition", model=str(folder), decoder=processor.decoder)
    assert type(stock) is not EBranchformerASRPipeline and stock(wave.copy())["text"] == output.text[0]


def test_pipeline_decoder_kwargs_reach_the_search_and_unknown_ones_are_refused(tmp_path, tiny_config, speech_like):
    from transformers import AutoProcessor, pipeline

    from modeling_ebranchformer import EBranchformerASRPipeline

    torch.manual_seed(0)
    folder = tmp_path / "model"
    EBranchformerForCTC(tiny_config).save_pretrained(folder)
    EBranchformerProcessor().save_pretrained(folder)
    build_lm([str(folder)])
    processor = AutoProcessor.from_pretrained(folder)
    asr = pipeline("automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline)
    wave = speech_like(2.0, 3)
    with torch.no_grad():
        logits = asr.model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits
    for options in ({"alpha": 0.0, "beta": 0.0}, {"alpha": 2.0, "beta": -3.0, "beam_width": 4}):
        expected = processor.batch_decode(logits.numpy(), **options).text[0]
        assert asr(wave.copy(), decoder_kwargs=options)["text"] == expected
    with pytest.raises(LanguageModelError, match="beamwidth"):
        asr(wave.copy(), decoder_kwargs={"beamwidth": 8})


def test_word_chunks_carry_the_confidence_that_transcribe_gives(lm_folder, speech_like, tmp_path):
    """Greedy and with the LM: every word chunk of `EBranchformerASRPipeline` has a confidence in (0, 1], the one
    transcribe.py writes for the same file and model (the one decode path: the same log-probabilities,
    `modeling_ebranchformer.confidence`'s formulas); in chunks too (transcribe.py cuts chunks otherwise, so there
    the bounds only); the stock pipeline's output is the same but for the confidences."""
    import json

    import soundfile as sf
    from transformers import AutoProcessor, pipeline

    from ebranchformer_ru.audio import read_audio
    from ebranchformer_ru.commands import transcribe
    from modeling_ebranchformer import EBranchformerASRPipeline

    _, folder, _ = lm_folder
    path = tmp_path / "speech.wav"
    sf.write(path, speech_like(3.0, 5), 16000, subtype="FLOAT")
    long = np.concatenate([speech_like(6.0, seed) for seed in range(4)])  # 24 s in chunks of 10 s
    lm_decoder = AutoProcessor.from_pretrained(folder).decoder
    for decoder, options in (("greedy", {"language_model": False}), ("lm", {})):
        asr = pipeline(
            "automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline, **options
        )
        result = asr(read_audio(path), return_timestamps="word")
        output = tmp_path / f"{decoder}.jsonl"
        args = [str(folder), str(path), "--output", str(output), "--decoder", decoder, "--timestamps", "--no_progress"]
        assert transcribe.main(args) == 0
        words = json.loads(output.read_text(encoding="utf-8"))["words"]
        assert len(words) >= 5 and len({w["confidence"] for w in words}) > 1, words
        assert [(c["text"], c["confidence"]) for c in result["chunks"]] == [(w["word"], w["confidence"]) for w in words]
        chunked = asr(long, chunk_length_s=10, return_timestamps="word")
        assert len(chunked["chunks"]) >= 20
        assert all(0 < c["confidence"] <= 1 for c in result["chunks"] + chunked["chunks"]), (result, chunked)
        # the stock pipeline (given the decoder for the LM): the same output, without confidences
        stock = pipeline(
            "automatic-speech-recognition", model=str(folder), decoder=lm_decoder if decoder == "lm" else None
        )
        for ours, audio, kwargs in ((result, read_audio(path), {}), (chunked, long, {"chunk_length_s": 10})):
            theirs = stock(audio, return_timestamps="word", **kwargs)
            for chunk in ours["chunks"]:
                chunk.pop("confidence")
            assert ours == theirs
        batch = [read_audio(path), long[:32000]]  # in one forward pass, the shorter one padded
        ours, theirs = (p(batch, batch_size=2, return_timestamps="word") for p in (asr, stock))
        for chunk in ours[0]["chunks"] + ours[1]["chunks"]:
            assert 0 < chunk.pop("confidence") <= 1
        assert ours == theirs
