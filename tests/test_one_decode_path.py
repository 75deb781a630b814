"""One decode path: every command, the server, the Transformers pipeline and training's evaluation give the same
texts for the same model and recordings, and training reports the WER that evaluation reports."""

import itertools
import json
import logging
import shutil
import threading
import time

import pytest
import requests
import torch
from project import CORPUS
from safetensors.torch import load_file
from small_models import give_words

from ebranchformer_ru import training
from ebranchformer_ru.audio import read_audio
from ebranchformer_ru.commands import build_lm, transcribe
from ebranchformer_ru.evaluation import evaluate_model
from modeling_ebranchformer import EBranchformerASRPipeline

pytestmark = pytest.mark.slow

SET = "twelve"  # six utterances of crowd and six of farfield, as one test set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Golos-layout folder: the embedded train set, and one test set of the first six recordings of crowd and
    of farfield (copied with their manifest lines)."""
    folder = tmp_path_factory.mktemp("golos")
    (folder / "train_opus").symlink_to(CORPUS / "train_opus")
    test = folder / "test_opus" / SET
    (test / "files").mkdir(parents=True)
    lines = []
    for domain in ("crowd", "farfield"):
        source = CORPUS / "test_opus" / domain
        for line in (source / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[:6]:
            shutil.copy(source / json.loads(line)["audio_filepath"], test / "files")
            lines.append(line + "\n")
    (test / "manifest.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_config_values, data):
    """The tiny E-Branchformer (seed 0), its output biases set so that it spells words (`give_words`), with the
    language model that build_lm.py makes of the embedded train text."""
    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    network = EBranchformerForCTC(EBranchformerConfig(**tiny_config_values)).eval()
    processor = EBranchformerProcessor()
    waves = [read_audio(path) for path in sorted((data / "test_opus" / SET / "files").iterdir())]
    inputs = processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt")
    give_words(network, inputs)
    folder = tmp_path_factory.mktemp("model") / "model"
    network.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert build_lm.main([str(folder)]) == 0
    return folder


def transcribed(model, data, tmp_path, *options):
    """transcribe.py's text of each recording of the test set's manifest, by file name."""
    output = tmp_path / f"transcribe{len(options)}.jsonl"
    manifest = data / "test_opus" / SET / "manifest.jsonl"
    assert transcribe.main([str(model), str(manifest), "--output", str(output), "--no_progress", *options]) == 0
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    return {record["path"].rsplit("/", 1)[-1]: record["text"] for record in records}


def evaluated(model, data, tmp_path):
    """evaluate_model's row of the test set and its greedy and LM hypotheses by file name."""
    (row,) = evaluate_model(str(model), str(data), [SET], tmp_path / "eval")
    lines = (tmp_path / "eval" / f"utterances_{SET}.jsonl").read_text(encoding="utf-8").splitlines()
    utterances = {json.loads(line)["id"] + ".opus": json.loads(line) for line in lines}
    return row, utterances


def served(model, files, *options):
    """The server's JSON answer's text of each file (the OpenAI transcription API over HTTP, serve.py's app in a
    thread of this process)."""
    import uvicorn

    from ebranchformer_ru import serving
    from ebranchformer_ru.commands import serve

    args = serve.build_parser().parse_args([str(model), "--port", "0", *options])
    server = uvicorn.Server(uvicorn.Config(serving.make_app(args), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1/audio/transcriptions"
        texts = {}
        for path in files:
            with open(path, "rb") as audio:
                answer = requests.post(
                    url, files={"file": audio}, data={"model": model.name, "response_format": "json"}, timeout=60
                )
            assert answer.status_code == 200, answer.text
            texts[path.name] = answer.json()["text"]
        return texts
    finally:
        server.should_exit = True
        thread.join()


def piped(model, files, **options):
    """The Transformers ASR pipeline's text of each file."""
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(model), **options)
    return {path.name: asr(read_audio(path))["text"] for path in files}


def trained(model, data, tmp_path, train_args, caplog):
    """Training's final evaluation of `model` on the test set, after one step at learning rate 0 (the weights
    stay as they were, checked): its metrics and the hypothesis it logged for each reference."""
    caplog.set_level(logging.INFO, logger="train_ctc")
    options = ["--model_name_or_path", str(model), "--data_dir", str(data), "--eval_sets", SET]
    options += ["--max_steps", "1", "--learning_rate", "0", "--warmup_steps", "0", "--logged_predictions", "12"]
    _, metrics = training.run(train_args(tmp_path, *options, "--max_eval_samples", "12"))
    before, after = load_file(model / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    logged = [r.getMessage() for r in caplog.records if r.name == "train_ctc"]
    pairs = itertools.pairwise(logged)
    return metrics, {
        reference.removeprefix("reference : "): prediction.removeprefix("prediction: ")
        for reference, prediction in pairs
        if reference.startswith("reference : ") and prediction.startswith("prediction: ")
    }


def test_every_path_gives_the_same_texts_and_training_reports_evaluations_wer(
    model, data, tmp_path, train_args, caplog
):
    files = sorted((data / "test_opus" / SET / "files").iterdir())
    row, utterances = evaluated(model, data, tmp_path)
    greedy = {name: utterance["hypothesis"] for name, utterance in utterances.items()}
    lm = {name: utterance["lm_hypothesis"] for name, utterance in utterances.items()}
    assert len(greedy) == 12 and len({u["reference"] for u in utterances.values()}) == 12
    # words, not one letter or nothing: three a recording on average, many different, and the LM changes texts
    words = [word for text in greedy.values() for word in text.split()]
    assert all(greedy.values()) and len(words) >= 36 and len(set(words)) >= 24, greedy
    assert lm != greedy and all(lm.values()), lm

    assert transcribed(model, data, tmp_path) == greedy
    assert transcribed(model, data, tmp_path, "--decoder", "lm") == lm
    assert served(model, files) == greedy
    assert served(model, files, "--decoder", "lm") == lm
    assert piped(model, files) == greedy
    assert piped(model, files, pipeline_class=EBranchformerASRPipeline) == lm

    metrics, logged = trained(model, data, tmp_path, train_args, caplog)
    assert logged == {u["reference"]: u["hypothesis"] for u in utterances.values()}
    assert metrics[f"eval_{SET}_utterances"] == 12
    assert metrics[f"eval_{SET}_wer"] == pytest.approx(row["wer"], abs=1e-12)
    assert metrics[f"eval_{SET}_cer"] == pytest.approx(row["cer"], abs=1e-12)
