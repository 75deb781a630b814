"""train_ctc.py on the embedded corpus with a tiny model and few steps."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from project import CORPUS, ROOT
from safetensors.torch import load_file

from ebranchformer_ru import training
from ebranchformer_ru.commands import train as command
from ebranchformer_ru.errors import Error, UsageError
from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC


@pytest.mark.slow
def test_training_lowers_the_loss(tmp_path, train_args):
    trainer, _ = training.run(
        train_args(
            tmp_path, "--max_steps", "30", "--learning_rate", "3e-3", "--warmup_steps", "3", "--do_eval", "false"
        )
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3


@pytest.mark.slow
def test_output_folder_loads_and_has_a_model_card(trained):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCTC, AutoProcessor

    tmp, _trainer, metrics = trained
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


@pytest.mark.slow
def test_model_card_holds_no_path_of_this_machine(trained):
    tmp, _, _ = trained
    card = (tmp / "out" / "README.md").read_text()
    for path in (str(ROOT), str(CORPUS), str(tmp), "/tmp", os.path.expanduser("~")):
        assert path not in card
    assert "the train set of the embedded synthetic corpus (not Golos)" in card
    assert "soundfile" in card and "FFmpeg" in card  # the usage snippet says what a path needs


@pytest.mark.slow
def test_outputs_get_the_modes_of_a_normal_write(trained, tmp_path):
    tmp, _, _ = trained
    mask = os.umask(0)
    os.umask(mask)
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    expected = stat.S_IMODE(reference.stat().st_mode)
    checked = 0
    for root, _, files in os.walk(tmp / "out"):
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode == expected, f"{os.path.join(root, name)}: {oct(mode)}, a plain write gives {oct(expected)}"
            checked += 1
    assert checked > 20  # the model, the checkpoints, the card, the code for trust_remote_code


@pytest.mark.slow
def test_the_final_evaluation_is_not_run_twice(tmp_path, train_args):
    trainer, metrics = training.run(
        train_args(tmp_path, "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "4")
    )
    evaluations = [e for e in trainer.state.log_history if "eval_crowd_wer" in e]
    assert len(evaluations) == 1 and evaluations[0]["step"] == 4
    assert metrics["eval_crowd_wer"] == evaluations[0]["eval_crowd_wer"]


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(trained, tmp_path, train_args):
    tmp, trainer, _ = trained
    resumed_dir = tmp_path / "out"
    resumed_dir.mkdir()
    shutil.copytree(tmp / "out" / "checkpoint-4", resumed_dir / "checkpoint-4")
    resumed, _ = training.run(
        train_args(
            tmp_path,
            "--max_steps",
            "8",
            "--do_eval",
            "false",
            "--resume_from_checkpoint",
            str(resumed_dir / "checkpoint-4"),
        )
    )
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


# --- an earlier run in the output folder --------------------------------------------------------------


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_an_earlier_run_is_refused_and_left_untouched(trained, tmp_path, train_args):
    tmp, _, _ = trained
    shutil.copytree(tmp / "out", tmp_path / "out")
    before = snapshot(tmp_path / "out")
    with pytest.raises(
        Error,
        match=r"holds an earlier run \(checkpoint-4, checkpoint-8, model.safetensors.*"
        r"--resume_from_checkpoint last \(continues from .*checkpoint-8\), "
        r"--overwrite true",
    ):
        training.run(
            train_args(
                tmp_path,
                "--max_steps",
                "12",
                "--save_strategy",
                "steps",
                "--save_steps",
                "2",
                "--save_total_limit",
                "1",
            )
        )
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow
def test_resume_last_takes_the_newest_complete_checkpoint(trained, tmp_path, train_args):
    tmp, trainer, _ = trained
    shutil.copytree(tmp / "out", tmp_path / "out")
    (tmp_path / "out" / "checkpoint-8" / "trainer_state.json").unlink()  # as if killed while saving
    assert training.last_complete_checkpoint(tmp_path / "out") == str(tmp_path / "out" / "checkpoint-4")
    resumed, _ = training.run(
        train_args(
            tmp_path,
            "--max_steps",
            "8",
            "--do_eval",
            "false",
            "--save_strategy",
            "steps",
            "--save_steps",
            "4",
            "--resume_from_checkpoint",
            "last",
        )
    )
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [e["loss"] for e in resumed.state.log_history if "loss" in e] == pytest.approx(loss, rel=1e-4)
    with pytest.raises(Error, match="no complete checkpoint in .*elsewhere"):
        training.run(
            train_args(tmp_path, "--resume_from_checkpoint", "last", "--output_dir", str(tmp_path / "elsewhere"))
        )


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run(trained, tmp_path, train_args):
    tmp, _, _ = trained
    shutil.copytree(tmp / "out", tmp_path / "out")
    training.run(train_args(tmp_path, "--max_steps", "2", "--do_eval", "false", "--overwrite", "true"))
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named(trained, tmp_path, train_args):
    tmp, _, _ = trained
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(tmp / "out" / "checkpoint-4", checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(Error, match=f"{weights} cannot be read .*corrupt or truncated"):
        training.run(train_args(tmp_path, "--resume_from_checkpoint", str(checkpoint)))
    with pytest.raises(Error, match="no folder .*nowhere"):
        training.run(train_args(tmp_path, "--resume_from_checkpoint", str(tmp_path / "nowhere")))


# --- models from folders --------------------------------------------------------------------------------


@pytest.mark.slow
def test_code_from_a_model_folder_runs_only_with_trust_remote_code(tmp_path, train_args, foreign_model_folder):
    folder, marker = foreign_model_folder
    with pytest.raises(Error, match="--trust_remote_code true only if you trust"):
        training.run(train_args(tmp_path, "--model_name_or_path", str(folder)))
    assert not marker.exists()


@pytest.mark.slow
def test_our_folders_load_without_trust_remote_code(trained, tmp_path):
    tmp, _, _ = trained
    model, _processor = training.load_model_and_processor(training.ModelArguments(str(tmp / "out")))
    assert type(model) is EBranchformerForCTC and model.config.hidden_size == 32  # our class, not a copy


@pytest.mark.slow
def test_missing_and_damaged_model_folders_are_named(trained, tmp_path, train_args):
    with pytest.raises(Error, match=f"no model folder {tmp_path / 'nowhere'} here"):
        training.run(train_args(tmp_path, "--model_name_or_path", str(tmp_path / "nowhere")))
    tmp, _, _ = trained
    shutil.copytree(tmp / "out", tmp_path / "model", ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Error, match=f"{weights} cannot be read .*corrupt or truncated"):
        training.run(train_args(tmp_path, "--model_name_or_path", str(tmp_path / "model")))


@pytest.mark.parametrize("arch,variant", [("quartznet", "flat"), ("ebranchformer", "sequential")])
@pytest.mark.slow
def test_train_ctc_evaluates_and_fine_tunes_a_converted_folder(arch, variant, tmp_path):
    from course_modules import lightning_checkpoint
    from small_models import course_model
    from transformers import AutoModelForCTC

    from ebranchformer_ru.commands import evaluate
    from ebranchformer_ru.conversion import convert

    torch.save(lightning_checkpoint(course_model(arch, variant)), tmp_path / "model.ckpt")
    convert(tmp_path / "model.ckpt", tmp_path / "converted")
    argv = [str(tmp_path / "converted"), "--max_samples", "4", "--output_dir", str(tmp_path / "eval")]
    rows = evaluate.evaluate(evaluate.build_parser().parse_args(argv))
    assert [(row["set"], row["utterances"]) for row in rows] == [("crowd", 4), ("farfield", 4), ("heldout_voice", 4)]
    trainer, metrics = training.run(
        [
            "--model_name_or_path",
            str(tmp_path / "converted"),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--train_subset_seconds",
            "15",
            "--max_eval_samples",
            "4",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--dataloader_num_workers",
            "0",
            "--dataloader_persistent_workers",
            "false",
            "--logging_steps",
            "1",
            "--output_dir",
            str(tmp_path / "tuned"),
            "--dataset_cache_dir",
            str(tmp_path / "cache"),
            "--disable_tqdm",
            "true",
        ]
    )
    assert trainer.state.global_step == 3 and metrics["eval_crowd_utterances"] == 4
    tuned = AutoModelForCTC.from_pretrained(tmp_path / "tuned")
    converted = AutoModelForCTC.from_pretrained(tmp_path / "converted")
    assert type(tuned) is type(converted)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, converted.state_dict()[n])]
    assert any(n.startswith("lm_head") for n in changed)  # the weights were trained


# --- several processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_are_data_parallel(tmp_path, train_args):
    """torchrun with 2 CPU processes: one DDP job (world size 2, gradients all-reduced), each rank reading its
    own half of every epoch, and the test sets counted once each."""
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from ebranchformer_ru import training
        from safetensors.torch import save_file

        seen = []
        class RecordingCollator(training.DataCollatorCTC):
            def __call__(self, examples):
                if "text" in examples[0] and train_ctc_trainer[0].model.training:
                    seen.append([e["id"] for e in examples])
                return super().__call__(examples)
        train_ctc_trainer = []
        original = training.CTCTrainer.__init__
        def init(self, *a, **k):
            original(self, *a, **k)
            train_ctc_trainer.append(self)
        training.CTCTrainer.__init__ = init
        training.DataCollatorCTC = RecordingCollator
        trainer, metrics = training.run({train_args(tmp_path, "--num_train_epochs", "2", "--max_eval_samples", "7")!r})
        rank = int(os.environ["RANK"])
        state = {{k: v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}}
        save_file(state, {str(tmp_path)!r} + f"/rank{{rank}}.safetensors")
        report = {{"world_size": trainer.args.world_size, "parallel_mode": trainer.args.parallel_mode.value,
                   "wrapped": type(trainer.model_wrapped).__name__, "steps": trainer.state.global_step,
                   "batches": seen, "train_size": len(trainer.train_dataset), "metrics": metrics}}
        json.dump(report, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
    """)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    size = reports[0]["train_size"]
    for report in reports:
        assert report["world_size"] == 2 and report["parallel_mode"] == "distributed"
        assert report["wrapped"] == "DistributedDataParallel"
        # The total batch is 2 x 8: one epoch takes ceil(size / 16) steps, not ceil(size / 8).
        assert report["steps"] == 2 * -(-size // 16)
    for epoch in range(2):
        steps = -(-size // 16)
        halves = [{i for batch in r["batches"][epoch * steps : (epoch + 1) * steps] for i in batch} for r in reports]
        assert len(halves[0] | halves[1]) == size  # every utterance in every epoch, split between the ranks
        # Each rank reads its own share; only the padding that evens out the last batches repeats utterances.
        assert len(halves[0] & halves[1]) <= 16 * steps - size < size // 2
    # Fed different data, the ranks still end with identical weights: the gradients were all-reduced.
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    metrics = reports[0]["metrics"]
    # 7 utterances over 2 ranks: the sampler pads one rank with a repeat; the metrics must not count it.
    assert metrics["eval_crowd_utterances"] == 7 and metrics["eval_farfield_utterances"] == 7


# --- bad options ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_preset_and_option(tmp_path, capsys, train_args):
    with pytest.raises(
        UsageError,
        match=r"unknown preset 'fast': use one of \['course', 'finetune_farfield', 'golos', 'mini', 'overfit', 'streaming'\]",
    ):
        training.run(["--preset", "fast"])
    with pytest.raises(UsageError, match="unrecognized arguments: --learning_rat 1"):
        training.run(train_args(tmp_path, "--learning_rat", "1"))
    # The command: a usage error exits 2 with the usage, a fault of the preset file 1 with one line.
    with pytest.raises(SystemExit) as error:
        command.main(train_args(tmp_path, "--learning_rat", "1"))
    err = capsys.readouterr().err
    assert error.value.code == 2 and err.startswith("usage: ")
    assert "error: unrecognized arguments: --learning_rat" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-3\nwarmup: 10\n")
    with pytest.raises(Error, match=r"preset .*bad.yaml: unknown option\(s\) \['warmup'\]"):
        training.run(["--preset", str(bad)])
    bad.write_text("learning_rate: [1\n")
    with pytest.raises(Error, match=r"preset .*bad.yaml: not valid YAML"):
        training.run(["--preset", str(bad)])
    assert command.main(["--preset", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: preset {bad}: not valid YAML"), err


@pytest.mark.parametrize("preset", ["course", "finetune_farfield", "golos", "mini", "overfit"])
def test_every_preset_parses_and_keeps_the_requirements(preset):
    _model_args, _data_args, _, run_args, training_args = training.parse_args(["--preset", preset])
    assert run_args.preset == preset and training_args.output_dir == f"outputs/{preset}"
    assert training_args.do_train and training_args.max_grad_norm == 1.0 and training_args.weight_decay == 0.0
    assert training_args.remove_unused_columns is False and training_args.length_column_name == "duration"


def test_presets_hold_only_what_differs():
    import yaml

    presets = [yaml.safe_load(p.read_text()) for p in sorted(training.PRESETS.glob("*.yaml"))]
    shared = {k: v for k, v in presets[0].items() if all(p.get(k, object()) == v for p in presets[1:])}
    assert not shared, f"put these in training.COMMON_DEFAULTS: {shared}"
    for preset in presets:
        assert not set(preset) & set(training.REQUIRED)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
        (["--per_device_eval_batch_size", "-1"], "--per_device_eval_batch_size must be at least 1, got -1"),
        (["--max_eval_samples", "0"], "--max_eval_samples must be at least 1, got 0"),
        (["--max_steps", "0"], "--max_steps 0 trains nothing"),
        (["--train_subset_seconds", "-5"], "--train_subset_seconds must be positive"),
        (["--eval_every_epochs", "0"], "--eval_every_epochs must be positive"),
        (["--do_eval", "false", "--eval_strategy", "steps"], "--do_eval false contradicts --eval_strategy steps"),
        (["--config_overrides", "hidden_size=30"], "--config_overrides 'hidden_size=30'.*divisible"),
        (["--verify_audio", "deep"], "--verify_audio must be 'none', 'header' or 'full'"),
    ],
)
@pytest.mark.slow
def test_options_that_would_fail_deep_inside_are_refused(tmp_path, extra, message, train_args):
    with pytest.raises(UsageError, match=message):
        training.run(train_args(tmp_path, *extra))
    assert not (tmp_path / "out").exists()


def test_do_eval_false_switches_off_the_presets_evaluation():
    *_, training_args = training.parse_args(["--preset", "overfit", "--do_eval", "false"])
    assert training_args.do_eval is False and training_args.eval_strategy.value == "no"


@pytest.mark.slow
def test_missing_data_folder(tmp_path, train_args, capsys):
    with pytest.raises(Error, match="data folder not found: .*nowhere"):
        training.run(train_args(tmp_path, "--data_dir", str(tmp_path / "nowhere")))
    # The command: exit 1 with one line, the traceback only with --debug (alone, or with Transformers' features).
    assert command.main(train_args(tmp_path, "--data_dir", str(tmp_path / "nowhere"))) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: data folder not found: {tmp_path / 'nowhere'} (expected train_opus/ and test_opus/ inside)"
    ]
    for debug in (["--debug"], ["--debug", "true"], ["--debug", "underflow_overflow"]):
        assert command.main(train_args(tmp_path, "--data_dir", str(tmp_path / "nowhere"), *debug)) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and err.splitlines()[-1].startswith("error: data folder not found"), debug
    assert not (tmp_path / "out").exists()


def test_debug_is_the_switch_of_every_command_and_transformers_debug_features(tmp_path, train_args):
    *_, training_args = command.parse_args(train_args(tmp_path, "--debug"))
    assert training_args.debug == []
    *_, training_args = command.parse_args(train_args(tmp_path, "--debug", "underflow_overflow"))
    assert training_args.debug == ["underflow_overflow"]
    parser = command.build_parser()
    assert [parser.parse_known_args(debug)[0].traceback for debug in ([], ["--debug"], ["--debug", "false"])] == [
        False,
        True,
        False,
    ]
    with pytest.raises(SystemExit):
        parser.parse_known_args(["--debug", "sometimes"])


@pytest.mark.slow
def test_a_missing_test_set_is_named_before_training(tmp_path, train_args):
    data = tmp_path / "golos"
    shutil.copytree(CORPUS, data)
    shutil.rmtree(data / "test_opus" / "farfield")
    with pytest.raises(Error, match=r"unknown eval set 'farfield': use crowd, heldout_voice \(the test sets of"):
        training.run(train_args(tmp_path, "--data_dir", str(data), "--max_steps", "2", "--eval_sets", "crowd,farfield"))
    shutil.rmtree(data / "test_opus")
    with pytest.raises(Error, match="has no test set .* pass --eval_sets train, or --do_eval false"):
        training.run(train_args(tmp_path, "--data_dir", str(data), "--max_steps", "2"))  # the default: every test set
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_train_set_left_empty_by_the_filters(tmp_path, train_args):
    total = len((CORPUS / "train_opus" / "manifest.jsonl").read_text(encoding="utf-8").splitlines())
    with pytest.raises(Error, match=f"empty after the filters: course filter: kept 0 of {total}"):
        training.run(train_args(tmp_path, "--min_duration", "100", "--train_subset_seconds", "0"))


def test_transcripts_longer_than_the_output_frames_are_removed_and_counted():
    from ebranchformer_ru.golos.selection import ctc_feasible
    from modeling_ebranchformer import EBranchformerFeatureExtractor
    from modeling_ebranchformer.ctc import output_frames

    dataset = datasets.Dataset.from_dict(
        {"duration": [0.2, 0.2, 0.06, 0.06], "text": ["да", "салют мир", "ааа", "аба"]}
    )
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


def test_a_non_finite_loss_skips_the_batch_and_is_counted(tmp_path):
    from transformers import TrainingArguments

    config = EBranchformerConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, cgmlp_intermediate_size=48, ffn_intermediate_size=64
    )
    model = EBranchformerForCTC(config)
    trainer = training.CTCTrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none"))
    inputs = {
        "input_features": torch.randn(1, 20, 64),
        "attention_mask": torch.ones(1, 20, dtype=torch.long),
        "labels": torch.ones(1, 12, dtype=torch.long),
    }  # 12 labels, 5 frames: CTC loss is infinite
    model.train()
    assert torch.isinf(model(**inputs).loss)
    loss = trainer.compute_loss(model, inputs)
    assert loss.item() == 0.0 and trainer.nonfinite_losses == 1
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_a_preset_can_start_from_another(tmp_path):
    course, golos = training.load_preset("course"), training.load_preset("golos")
    assert {k: v for k, v in golos.items() if k in course and k != "output_dir"} == {
        k: v for k, v in course.items() if k != "output_dir"
    }
    assert golos["speed_perturbation"] == [0.9, 1.0, 1.1] and "apply_spec_augment=true" in golos["config_overrides"]
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\nlearning_rate: 1.0\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(Error, match="makes a loop"):
        training.load_preset(str(tmp_path / "a.yaml"))


def test_a_preset_file_names_its_base_relative_to_itself(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "child.yaml").write_text("base: parent.yaml\nlearning_rate: 0.5\n")
    (folder / "parent.yaml").write_text("base: course\nwarmup_steps: 7\n")
    monkeypatch.chdir(tmp_path)  # not the presets' folder
    values = training.load_preset(str(folder / "child.yaml"))
    assert values["learning_rate"] == 0.5 and values["warmup_steps"] == 7 and values["max_steps"] == 30000
    (folder / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(Error, match="makes a loop"):
        training.load_preset(str(folder / "self.yaml"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("learning_rate: fast", r"learning_rate: 'fast' is not a valid float"),
        ("num_train_epochs: [1, 2]", r"num_train_epochs takes one value, got the list"),
        ("warmup_steps: true", r"warmup_steps: True is not a"),
    ],
)
def test_a_preset_value_of_the_wrong_type_is_named(tmp_path, line, message):
    preset = tmp_path / "mine.yaml"
    preset.write_text(line + "\n")
    with pytest.raises(Error, match=f"preset {preset}: {message}"):
        training.parse_args(["--preset", str(preset), "--output_dir", str(tmp_path / "out")])


@pytest.mark.slow
def test_training_from_a_folder_with_an_lm_keeps_it(lm_folder, tmp_path):
    from transformers import AutoProcessor

    from modeling_ebranchformer import EBranchformerProcessorWithLM

    _, folder, _ = lm_folder
    tiny = (
        "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,cgmlp_intermediate_size=48,ffn_intermediate_size=64"
    )
    training.run(
        [
            "--model_name_or_path",
            str(folder),
            "--config_overrides",
            tiny,
            "--report_to",
            "none",
            "--max_steps",
            "1",
            "--dataloader_num_workers",
            "0",
            "--dataloader_persistent_workers",
            "false",
            "--per_device_train_batch_size",
            "4",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--do_eval",
            "false",
            "--train_subset_seconds",
            "20",
            "--dataset_cache_dir",
            str(tmp_path / "cache"),
            "--output_dir",
            str(tmp_path / "out"),
            "--disable_tqdm",
            "true",
        ]
    )
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(processor) is EBranchformerProcessorWithLM
    assert (tmp_path / "out" / "language_model" / "lm.arpa").read_text() == (
        folder / "language_model" / "lm.arpa"
    ).read_text()
