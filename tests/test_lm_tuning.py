"""ebranchformer-tune-lm (tune_lm.py, ebranchformer_ru.lm_tuning) and evaluation with the language model:
greedy and LM figures side by side, the model card, alpha and beta tuned and written to attrs.json."""

import json
import shutil

import jiwer
import pytest
from project import CORPUS

from ebranchformer_ru.errors import Error, UsageError


def test_evaluation_reports_greedy_and_lm_side_by_side_and_tuning_writes_attrs(lm_folder, tmp_path):
    from huggingface_hub import ModelCard

    from ebranchformer_ru.commands import evaluate, tune_lm

    def evaluate_main(argv):
        return evaluate.evaluate(evaluate.build_parser().parse_args(argv))

    def tune(argv):
        return tune_lm.tune_lm(tune_lm.build_parser().parse_args(argv))

    _, folder, plain = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    rows = evaluate_main(
        [str(copy), "--max_samples", "3", "--output_dir", str(tmp_path / "eval"), "--update_model_card"]
    )
    lines = [json.loads(x) for x in (tmp_path / "eval" / "utterances_crowd.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["lm_wer"] >= 0 and 0 <= row["lm_cer"] <= 1
    references = [x["reference"] for x in lines]
    assert rows[0]["lm_wer"] == pytest.approx(jiwer.wer(references, [x["lm_hypothesis"] for x in lines]))
    assert rows[0]["wer"] == pytest.approx(jiwer.wer(references, [x["hypothesis"] for x in lines]))
    assert "| LM WER | LM CER |" in (tmp_path / "eval" / "results.md").read_text()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["lm_decoding"]["alpha"] == 0.5
    card = ModelCard.load(copy / "README.md")
    names = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert names[("farfield", "WER (3-gram LM)")] == pytest.approx(rows[1]["lm_wer"], abs=1e-4)
    assert names[("crowd", "WER")] == pytest.approx(rows[0]["wer"], abs=1e-4)
    assert "| WER, greedy | WER, with the LM |" in card.text
    greedy_only = evaluate_main([str(plain), "--max_samples", "2", "--output_dir", str(tmp_path / "eval2")])
    assert "lm_wer" not in greedy_only[0]
    # --decoder greedy: the folder's LM left out, the same greedy figures; --decoder lm requires one
    greedy = evaluate_main(
        [
            str(copy),
            "--max_samples",
            "3",
            "--output_dir",
            str(tmp_path / "eval3"),
            "--sets",
            "crowd",
            "--decoder",
            "greedy",
        ]
    )
    assert greedy == [{k: v for k, v in rows[0].items() if not k.startswith("lm_")}]
    assert "lm_hypothesis" not in (tmp_path / "eval3" / "utterances_crowd.jsonl").read_text()
    assert (
        evaluate_main(
            [
                str(copy),
                "--max_samples",
                "2",
                "--output_dir",
                str(tmp_path / "eval4"),
                "--sets",
                "farfield",
                "--decoder",
                "lm",
            ]
        )[0]["lm_wer"]
        >= 0
    )
    with pytest.raises(
        Error,
        match=f"--decoder lm: {plain} has no language_model/ folder; add one with `ebranchformer-build-lm {plain}`",
    ):
        evaluate_main([str(plain), "--decoder", "lm", "--output_dir", str(tmp_path / "eval5")])
    assert not (tmp_path / "eval5").exists()
    before = (copy / "language_model" / "attrs.json").read_text()
    summary = tune([str(copy), "--max_samples", "4", "--alphas", "0,1", "--betas", "0,2", "--dry_run"])
    assert (copy / "language_model" / "attrs.json").read_text() == before
    tune([str(copy), "--max_samples", "4", "--alphas", "0,1", "--betas", "0,2", "--dry_run", "false"])
    attrs = json.loads((copy / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (summary["alpha"], summary["beta"])
    assert summary["tuning_utterances"] == 4 and summary["unseen_utterances"] == 4
    with pytest.raises(UsageError, match="alpha=11.0 is out of range"):
        tune([str(copy), "--alphas", "0,11"])
    # any test set of the data folder; an unknown one named with those there are, before the model is loaded
    assert (
        tune(
            [
                str(copy),
                "--sets",
                "heldout_voice",
                "--max_samples",
                "2",
                "--alphas",
                "0",
                "--betas",
                "0",
                "--subset",
                "all",
                "--dry_run",
                "--threads",
                "1",
            ]
        )["tuning_utterances"]
        == 2
    )
    with pytest.raises(
        Error,
        match=rf"unknown test set\(s\) \['street'\]: the test sets of {CORPUS} are crowd, "
        "farfield, heldout_voice",
    ):
        tune([str(copy), "--sets", "crowd,street"])
    with pytest.raises(
        Error, match=f"{plain} has no language_model/ folder; add one with `ebranchformer-build-lm {plain}`"
    ):
        tune([str(plain)])
    assert tune_lm.main([str(tmp_path / "nowhere")]) == 1
