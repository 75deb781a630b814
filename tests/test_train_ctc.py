"""train_ctc.py and evaluate_ctc.py on the embedded corpus with a tiny model and few steps."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import datasets
import evaluate
import jiwer
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

import train_ctc
from evaluate_ctc import main as evaluate_main
from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC

TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,cgmlp_intermediate_size=48,ffn_intermediate_size=64"


def args(tmp_path, *extra):
    return [
        "--preset", "mini", "--config_overrides", TINY, "--report_to", "none", "--dataloader_num_workers", "0",
        "--dataloader_persistent_workers", "false", "--per_device_train_batch_size", "8", "--logging_steps", "1",
        "--save_strategy", "no", "--eval_strategy", "no", "--train_subset_seconds", "40", "--max_eval_samples", "6",
        "--dataset_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """8 steps with checkpoints at 4 and 8, evaluated at the end."""
    tmp = tmp_path_factory.mktemp("run")
    trainer, metrics = train_ctc.run(args(tmp, "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4",
                                         "--save_total_limit", "2"))
    return tmp, trainer, metrics


def test_training_lowers_the_loss(tmp_path):
    trainer, _ = train_ctc.run(args(tmp_path, "--max_steps", "30", "--learning_rate", "3e-3", "--warmup_steps", "3",
                                    "--do_eval", "false"))  # fmt: skip
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3


def test_output_folder_loads_and_has_a_model_card(trained):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCTC, AutoProcessor

    tmp, trainer, metrics = trained
    out = tmp / "out"
    model = AutoModelForCTC.from_pretrained(out)
    assert isinstance(model, EBranchformerForCTC) and model.config.hidden_size == 32
    assert AutoProcessor.from_pretrained(out).tokenizer.pad_token_id == 33
    assert (out / "checkpoint-4" / "model.safetensors").exists() and (out / "modeling.py").exists()
    card = ModelCard.load(out / "README.md")
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("farfield", "wer")] == pytest.approx(metrics["eval_farfield_wer"], abs=1e-4)
    assert results[("crowd", "cer")] == pytest.approx(metrics["eval_crowd_cer"], abs=1e-4)
    assert metrics["eval_crowd_utterances"] == 6 and metrics["nonfinite_losses"] == 0
    assert json.loads((out / "all_results.json").read_text())["eval_crowd_wer"] == metrics["eval_crowd_wer"]


def test_resume_matches_an_uninterrupted_run(trained, tmp_path):
    tmp, trainer, _ = trained
    resumed_dir = tmp_path / "out"
    resumed_dir.mkdir()
    shutil.copytree(tmp / "out" / "checkpoint-4", resumed_dir / "checkpoint-4")
    resumed, _ = train_ctc.run(args(tmp_path, "--max_steps", "8", "--do_eval", "false",
                                    "--resume_from_checkpoint", str(resumed_dir / "checkpoint-4")))  # fmt: skip
    assert resumed.state.global_step == trainer.state.global_step == 8
    lr = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    lr_resumed = [e["learning_rate"] for e in resumed.state.log_history if "learning_rate" in e]
    # The resumed history starts with the checkpoint's 4 steps; steps 5-8 are computed again and must match:
    assert len(lr) == 8 and lr_resumed == lr  # the schedule continues where it stopped
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    loss_resumed = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert loss_resumed == pytest.approx(loss, rel=1e-4)  # the same batches in the same order
    final, final_resumed = load_file(tmp / "out" / "model.safetensors"), load_file(resumed_dir / "model.safetensors")
    for name, tensor in final.items():
        assert torch.allclose(tensor, final_resumed[name], atol=1e-5), name


def test_evaluation_command_agrees_with_the_trainer_and_writes_its_files(trained, tmp_path):
    tmp, _, metrics = trained
    rows = evaluate_main([str(tmp / "out"), "--max_samples", "6", "--output_dir", str(tmp_path / "eval"),
                          "--batch_size", "4"])  # fmt: skip
    by_set = {row["set"]: row for row in rows}
    for name in ("crowd", "farfield"):
        assert by_set[name]["wer"] == pytest.approx(metrics[f"eval_{name}_wer"], abs=1e-9)
        lines = [json.loads(x) for x in (tmp_path / "eval" / f"utterances_{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 6
        errors = sum(x["substitutions"] + x["deletions"] + x["insertions"] for x in lines)
        assert errors / sum(x["reference_words"] for x in lines) == pytest.approx(by_set[name]["wer"])
        assert jiwer.wer([x["reference"] for x in lines], [x["hypothesis"] for x in lines]) == pytest.approx(
            by_set[name]["wer"]
        )
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert [r["set"] for r in saved] == ["crowd", "farfield"]
    assert "| crowd | 6 |" in (tmp_path / "eval" / "results.md").read_text()


def test_two_processes_hold_identical_weights_and_count_each_test_utterance_once(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import train_ctc
        from safetensors.torch import save_file
        trainer, metrics = train_ctc.run({args(tmp_path, "--max_steps", "4", "--max_eval_samples", "7")!r})
        rank = int(os.environ["RANK"])
        state = {{k: v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}}
        save_file(state, {str(tmp_path)!r} + f"/rank{{rank}}.safetensors")
        if rank == 0:
            json.dump(metrics, open({str(tmp_path / "metrics.json")!r}, "w"))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(script)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_samples_per_second"] > 0
    # 7 utterances over 2 ranks: the sampler pads one rank with a repeat; the metrics must not count it.
    assert metrics["eval_crowd_utterances"] == 7 and metrics["eval_farfield_utterances"] == 7
    single = evaluate_main([str(tmp_path / "out"), "--max_samples", "7", "--output_dir", str(tmp_path / "eval")])
    for row in single:  # CER too: after 4 steps the words are all wrong, the characters not all
        assert row["wer"] == pytest.approx(metrics[f"eval_{row['set']}_wer"], abs=1e-9)
        assert row["cer"] == pytest.approx(metrics[f"eval_{row['set']}_cer"], abs=1e-9)
        assert 0 < row["cer"] < 1


# --- bad input --------------------------------------------------------------------------------------


def test_unknown_preset_and_option(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"unknown preset 'fast': use one of \['course', 'finetune_farfield', 'mini', 'overfit'\]"):
        train_ctc.run(["--preset", "fast"])
    with pytest.raises(SystemExit) as error:
        train_ctc.run(args(tmp_path, "--learning_rat", "1"))
    assert error.value.code == 2 and "--learning_rat" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-3\nwarmup: 10\n")
    with pytest.raises(SystemExit, match=r"preset .*bad.yaml: unknown option\(s\) \['warmup'\]"):
        train_ctc.run(["--preset", str(bad)])


@pytest.mark.parametrize("preset", ["course", "finetune_farfield", "mini", "overfit"])
def test_every_preset_parses(preset):
    model_args, data_args, run_args, training_args = train_ctc.parse_arguments(["--preset", preset])
    assert run_args.preset == preset and training_args.output_dir == f"outputs/{preset}"
    assert training_args.do_train and training_args.max_grad_norm == 1.0


def test_missing_data_folder(tmp_path):
    with pytest.raises(SystemExit, match="data folder not found: .*nowhere"):
        train_ctc.run(args(tmp_path, "--data_dir", str(tmp_path / "nowhere")))


def test_train_set_left_empty_by_the_filters(tmp_path):
    with pytest.raises(SystemExit, match="empty after the filters: course filter: kept 0 of 220"):
        train_ctc.run(args(tmp_path, "--min_duration", "100", "--train_subset_seconds", "0"))


def test_transcripts_longer_than_the_output_frames_are_removed_and_counted():
    from golos.selection import ctc_feasible
    from modeling_ebranchformer import EBranchformerFeatureExtractor
    from modeling_ebranchformer.ctc import output_frames

    dataset = datasets.Dataset.from_dict({"duration": [0.2, 0.2, 0.06, 0.06], "text": ["да", "салют мир", "ааа", "аба"]})
    model = EBranchformerForCTC(EBranchformerConfig(num_hidden_layers=1))
    kept, report = ctc_feasible(dataset, lambda d: output_frames(model, EBranchformerFeatureExtractor(), d))
    # 0.2 s -> 21 feature frames -> 6 CTC frames: "да" fits, "салют мир" (9) does not; 0.06 s -> 7 -> 2 CTC
    # frames: "аба" needs 3, and "ааа" 5 (a blank between repeats).
    assert kept["text"] == ["да"]
    assert report.removed == {"with a transcript longer than the output frames": 3}
    # The model's own frame count decides: stride 2 gives 11 and 4 CTC frames.
    model = EBranchformerForCTC(EBranchformerConfig(num_hidden_layers=1, subsampling_stride=2))
    kept, report = ctc_feasible(dataset, lambda d: output_frames(model, EBranchformerFeatureExtractor(), d))
    assert kept["text"] == ["да", "салют мир", "аба"]
    assert report.removed == {"with a transcript longer than the output frames": 1}


def test_a_non_finite_loss_skips_the_batch_and_is_counted(tmp_path):
    from transformers import TrainingArguments

    config = EBranchformerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 cgmlp_intermediate_size=48, ffn_intermediate_size=64)  # fmt: skip
    model = EBranchformerForCTC(config)
    trainer = train_ctc.CTCTrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none"))
    inputs = {"input_features": torch.randn(1, 20, 64), "attention_mask": torch.ones(1, 20, dtype=torch.long),
              "labels": torch.ones(1, 12, dtype=torch.long)}  # 12 labels, 5 frames: CTC loss is infinite  # fmt: skip
    model.train()
    assert torch.isinf(model(**inputs).loss)
    loss = trainer.compute_loss(model, inputs)
    assert loss.item() == 0.0 and trainer.nonfinite_losses == 1
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
