"""ebranchformer-evaluate (evaluate_ctc.py): figures checked by an independent decoding, files written together,
bad input named."""

import json
import shutil

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from project import CORPUS

from ebranchformer_ru.commands import evaluate as command
from ebranchformer_ru.errors import Error


def evaluate_main(argv):
    """The command's job on parsed options, as `ebranchformer-evaluate ARGV` runs it (errors raised, not exited)."""
    return command.evaluate(command.build_parser().parse_args(argv))


def exit_status(argv) -> int:
    """`ebranchformer-evaluate ARGV`'s exit status: 2 for a usage error, 1 for a runtime error."""
    try:
        return command.main(argv)
    except SystemExit as exit:
        return exit.code


def reference_transcripts(folder, manifest, count):
    """Greedy transcripts computed here without the package's decoding helpers: each utterance alone
    (no padding), argmax per frame, repeats collapsed, blanks dropped, ids mapped through vocab.json."""
    from transformers import AutoModelForCTC

    from modeling_ebranchformer import EBranchformerFeatureExtractor

    model = AutoModelForCTC.from_pretrained(folder).eval()
    vocab = {i: c for c, i in json.loads((folder / "vocab.json").read_text()).items()}
    blank = model.config.pad_token_id
    lines = [json.loads(line) for line in manifest.read_text().splitlines()][:count]
    texts = {}
    for line in lines:
        audio, _ = sf.read(manifest.parent / line["audio_filepath"], dtype="float32")
        features = EBranchformerFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            ids = model(features["input_features"]).logits[0].argmax(-1).tolist()
        collapsed = [i for n, i in enumerate(ids) if i != blank and (n == 0 or i != ids[n - 1])]
        texts[line["id"]] = " ".join("".join(vocab[i] for i in collapsed).replace("|", " ").split())
    return texts


@pytest.mark.slow
def test_figures_agree_with_the_trainer_and_an_independent_decoding(trained, tmp_path):
    tmp, _, metrics = trained
    rows = evaluate_main(
        [str(tmp / "out"), "--max_samples", "6", "--output_dir", str(tmp_path / "eval"), "--batch_size", "4"]
    )
    by_set = {row["set"]: row for row in rows}
    assert list(by_set) == ["crowd", "farfield", "heldout_voice"]  # every test set of the folder, Golos's first
    for name in by_set:
        lines = [json.loads(x) for x in (tmp_path / "eval" / f"utterances_{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 6 and by_set[name]["utterances"] == 6
        expected = reference_transcripts(tmp / "out", CORPUS / "test_opus" / name / "manifest.jsonl", 6)
        assert {x["id"]: x["hypothesis"] for x in lines} == expected  # batches of 4, padded: same text
        assert by_set[name]["wer"] == pytest.approx(jiwer.wer([x["reference"] for x in lines], list(expected.values())))
        assert by_set[name]["wer"] == pytest.approx(metrics[f"eval_{name}_wer"], abs=1e-9)
        errors = sum(x["substitutions"] + x["deletions"] + x["insertions"] for x in lines)
        assert errors / sum(x["reference_words"] for x in lines) == pytest.approx(by_set[name]["wer"])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert [r["set"] for r in saved] == ["crowd", "farfield", "heldout_voice"]
    assert "| crowd | 6 |" in (tmp_path / "eval" / "results.md").read_text()


@pytest.mark.slow
def test_a_test_set_that_cannot_be_read_writes_nothing(trained, tmp_path):
    tmp, _, _ = trained
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("earlier")
    data = tmp_path / "golos"
    shutil.copytree(CORPUS, data)
    missing = sorted((data / "test_opus" / "heldout_voice" / "files").iterdir())[-1]
    missing.unlink()  # the last set, read after the others
    with pytest.raises(Error, match=f"heldout_voice/manifest.jsonl, line [0-9]+: audio file not found.*{missing.name}"):
        evaluate_main([str(tmp / "out"), "--data_dir", str(data), "--output_dir", str(out)])
    assert [p.name for p in out.iterdir()] == ["results.json"] and (out / "results.json").read_text() == "earlier"


@pytest.mark.slow
def test_a_test_set_the_folder_lacks_is_named(trained, tmp_path, capsys):
    tmp, _, _ = trained
    data = tmp_path / "golos"
    shutil.copytree(CORPUS, data, ignore=shutil.ignore_patterns("farfield"))
    assert exit_status([str(tmp / "out"), "--data_dir", str(data), "--sets", "crowd,farfield"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: unknown test set(s) ['farfield']: the test sets of {data} are crowd, heldout_voice"
    ]


@pytest.mark.slow
def test_an_empty_test_set_writes_nothing(trained, tmp_path):
    tmp, _, _ = trained
    data = tmp_path / "golos"
    shutil.copytree(CORPUS, data)
    manifest = data / "test_opus" / "farfield" / "manifest.jsonl"
    manifest.write_text("")
    with pytest.raises(Error, match="farfield"):
        evaluate_main([str(tmp / "out"), "--data_dir", str(data), "--output_dir", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, status, message",
    [
        (["--batch_size", "0"], 2, "--batch_size: must be at least 1, got 0"),
        (["--max_samples", "-3"], 2, "--max_samples: must be at least 1, got -3"),
        (["--max_samples", "0"], 2, "--max_samples: must be at least 1, got 0"),
        (["--sets", ","], 2, "--sets: expected comma-separated names"),
        (
            ["--decoder", "greedy", "--alpha", "1"],
            2,
            "--decoder greedy decodes without the language model, and --alpha",
        ),
        (["--decoder", "beam"], 2, "--decoder: invalid choice: 'beam'"),
        (["--update_model_card", "maybe"], 2, "argument --update_model_card: .*maybe"),
        (["--sets", "crowd,street"], 1, r"^error: unknown test set\(s\) \['street'\]"),
        (["--data_dir", "nowhere"], 1, "^error: data folder not found: nowhere"),
        (
            ["--decoder", "lm"],
            1,
            r"^error: --decoder lm: .*out has no language_model/ folder; add one with `ebranchformer-build-lm .*out`",
        ),
    ],
)
def test_bad_options_are_named(trained, tmp_path, capsys, extra, status, message):
    """Usage errors exit 2 with argparse's usage, runtime errors 1 with one line; nothing is written."""
    tmp, _, _ = trained
    assert exit_status([str(tmp / "out"), "--output_dir", str(tmp_path / "eval"), *extra]) == status
    err = capsys.readouterr().err
    assert __import__("re").search(message, err.splitlines()[-1]), err
    if status == 2:
        assert err.startswith("usage:"), err
    else:  # one line (after the progress bars of loading a model, if it was loaded)
        assert [line for line in err.splitlines() if "error" in line.lower()] == err.splitlines()[-1:], err
    assert not (tmp_path / "eval").exists()


def test_code_from_a_model_folder_runs_only_with_trust_remote_code(foreign_model_folder):
    folder, marker = foreign_model_folder
    with pytest.raises(Error, match="--trust_remote_code true only if you trust"):
        evaluate_main([str(folder)])
    assert not marker.exists()


def test_missing_model_folder_is_named(tmp_path, capsys):
    with pytest.raises(Error, match=f"no model folder {tmp_path / 'nowhere'} here"):
        evaluate_main([str(tmp_path / "nowhere")])
    assert exit_status([str(tmp_path / "nowhere")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: no model folder {tmp_path / 'nowhere'} here")


def test_help_describes_the_data_layout(capsys):
    with pytest.raises(SystemExit):
        command.main(["--help"])
    assert "test_opus/<set>/manifest.jsonl (crowd, farfield, and any other set)" in " ".join(
        capsys.readouterr().out.split()
    )


@pytest.mark.slow
def test_pipeline_word_timestamps_are_plain_floats(trained):
    from transformers import pipeline

    tmp, _, _ = trained
    asr = pipeline("automatic-speech-recognition", model=str(tmp / "out"))
    audio, rate = sf.read(next((CORPUS / "test_opus" / "crowd").rglob("*.opus")), dtype="float32")
    out = asr({"raw": np.asarray(audio), "sampling_rate": rate}, return_timestamps="word")
    assert out["chunks"]
    assert all(type(t) is float for chunk in out["chunks"] for t in chunk["timestamp"])
    json.dumps(out)


def test_a_results_place_that_cannot_be_made_is_named_before_any_work(tmp_path, monkeypatch):
    from ebranchformer_ru import evaluation
    from ebranchformer_ru.commands import tune_lm

    (tmp_path / "results").write_text("a file")
    monkeypatch.setattr(evaluation.TorchBackend, "from_folder", lambda *a, **k: pytest.fail("the model was loaded"))
    for place in (tmp_path / "results", tmp_path / "results" / "eval"):
        with pytest.raises(Error, match=f"--output_dir {place}: .*results is a file"):
            evaluate_main([str(tmp_path), "--output_dir", str(place)])
    with pytest.raises(Error, match="unknown test set"):  # the sets too are checked before the model is loaded
        evaluate_main([str(tmp_path), "--sets", "street"])
    for option in ("--max_samples", "--batch_size", "--beam_width", "--threads"):
        with pytest.raises(SystemExit):
            tune_lm.build_parser().parse_args([str(tmp_path), option, "0"])
