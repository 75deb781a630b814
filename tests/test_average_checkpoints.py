"""average_checkpoints.py against a hand-computed mean, on fake Trainer runs of tiny models."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ebranchformer_ru.commands import average as command
from ebranchformer_ru.errors import Error
from ebranchformer_ru.hub import load_ctc_model
from modeling_ebranchformer import (
    EBranchformerConfig,
    EBranchformerForCTC,
    EBranchformerProcessor,
    QuartzNetConfig,
    QuartzNetForCTC,
)

QUARTZNET = {
    "block_channels": [32, 32, 48],
    "block_repeats": [1, 2, 1],
    "block_kernel_sizes": [11, 9, 1],
    "block_strides": [4, 1, 1],
    "block_dilations": [1, 2, 1],
    "block_residual": [False, True, False],
    "block_separable": [True, True, False],
}
WER = {100: 0.50, 200: 0.30, 300: 0.40, 400: 0.35}


def average(argv):
    """The command's job on parsed options, as `ebranchformer-average ARGV` runs it (errors raised, not exited)."""
    return command.average(command.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def make_model(tiny_config_values):
    """make_model(kind): a tiny QuartzNet or E-Branchformer (seed 0)."""

    def make(kind):
        torch.manual_seed(0)
        if kind == "quartznet":
            return QuartzNetForCTC(QuartzNetConfig(**QUARTZNET))
        return EBranchformerForCTC(EBranchformerConfig(**tiny_config_values))

    return make


@pytest.fixture(scope="module")
def fake_run(make_model):
    """fake_run(run_dir, kind, steps): see _fake_run."""
    return lambda run_dir, kind="quartznet", steps=tuple(WER): _fake_run(make_model, run_dir, kind, steps)


def _fake_run(make_model, run_dir, kind="quartznet", steps=tuple(WER)):
    """checkpoint-STEP folders as the Trainer writes them, each with other weights and batch-norm counters,
    and the eval WER logged at each step."""
    model, processor = make_model(kind), EBranchformerProcessor()
    history = []
    for index, step in enumerate(steps):
        with torch.no_grad():
            for number, (name, tensor) in enumerate(model.state_dict().items()):
                if tensor.is_floating_point():
                    values = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(step + number))
                    tensor.copy_(values.abs() + 0.5 if "running_var" in name else values)
                else:
                    tensor.fill_(step // 100 + index)  # num_batches_tracked
        folder = run_dir / f"checkpoint-{step}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / "optimizer.pt").write_bytes(b"optimizer state")
        history.append({"step": step, "eval_crowd_wer": WER[step], "eval_loss": 1.0})
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return model


@pytest.mark.parametrize("kind", ["quartznet", "ebranchformer"])
def test_the_last_n_are_averaged_exactly(tmp_path, kind, fake_run):
    fake_run(tmp_path / "run", kind)
    output = average([str(tmp_path / "run"), "--last", "3"])
    assert output == tmp_path / "run" / "average-last-3"
    states = [load_file(tmp_path / "run" / f"checkpoint-{s}" / "model.safetensors") for s in (200, 300, 400)]
    averaged = load_file(output / "model.safetensors")
    assert averaged.keys() == states[0].keys()
    integers = 0
    for name, tensor in averaged.items():
        if tensor.is_floating_point():
            expected = (states[0][name].double() + states[1][name].double() + states[2][name].double()) / 3
            assert tensor.dtype == states[0][name].dtype
            assert torch.allclose(tensor.double(), expected, atol=1e-6), name
        else:
            integers += 1
            assert torch.equal(tensor, states[2][name]), name  # from the newest
    assert integers == (sum("num_batches_tracked" in n for n in averaged) if kind == "quartznet" else 0)
    if kind == "quartznet":
        assert integers > 0 and any("running_var" in n for n in averaged)  # batch-norm statistics averaged
    record = json.loads((output / "averaging.json").read_text())
    assert record["checkpoints"] == ["checkpoint-200", "checkpoint-300", "checkpoint-400"]
    assert not (output / "optimizer.pt").exists() and not (output / "trainer_state.json").exists()
    model = load_ctc_model(output).eval()  # a loadable model folder, with its processor
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, averaged[name])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 50, model.config.num_mel_bins)).logits).all()


def test_the_best_n_by_the_logged_wer(tmp_path, fake_run):
    fake_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoint-500").mkdir()  # a save that was killed: no trainer_state.json
    output = average([str(tmp_path / "run"), "--best", "2", "--output_dir", str(tmp_path / "avg")])
    record = json.loads((output / "averaging.json").read_text())
    assert record["checkpoints"] == ["checkpoint-200", "checkpoint-400"]  # WER 0.30 and 0.35
    assert record["method"] == "best 2 by eval_crowd_wer"
    states = [load_file(tmp_path / "run" / f"checkpoint-{s}" / "model.safetensors") for s in (200, 400)]
    for name, tensor in load_file(output / "model.safetensors").items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, (states[0][name] + states[1][name]) / 2, atol=1e-6)


def test_refusals_leave_nothing_behind(tmp_path, make_model, fake_run):
    run = tmp_path / "run"
    fake_run(run)
    with pytest.raises(Error, match="--last 5: .* holds 4 complete checkpoints"):
        average([str(run), "--last", "5"])
    with pytest.raises(Error, match="logged no 'eval_farfield_wer'"):
        average([str(run), "--best", "2", "--metric", "eval_farfield_wer"])
    with pytest.raises(Error, match="no complete checkpoint"):
        average([str(tmp_path), "--last", "1"])
    # a checkpoint of another model: shapes differ, nothing is written
    other = make_model("ebranchformer")
    other.save_pretrained(run / "checkpoint-500")
    (run / "checkpoint-500" / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    with pytest.raises(Error, match="checkpoint-500 has other tensors than checkpoint-400"):
        average([str(run), "--last", "2"])
    assert sorted(p.name for p in run.iterdir()) == [f"checkpoint-{s}" for s in (100, 200, 300, 400, 500)]
    # an existing output folder is replaced only when asked
    average([str(run), "--last", "1"])
    with pytest.raises(Error, match="exists; pass --overwrite"):
        average([str(run), "--last", "1"])
    average([str(run), "--last", "1", "--overwrite"])
    with pytest.raises(SystemExit):
        command.build_parser().parse_args([str(run), "--last", "2", "--best", "2"])
    with pytest.raises(SystemExit):
        command.build_parser().parse_args([str(run), "--last", "0"])


def test_an_output_never_replaces_an_input_or_a_foreign_folder(tmp_path, fake_run):
    """The output may not be, contain or lie inside a checkpoint or the run, and --overwrite replaces only a
    folder this script made: the run (its checkpoints, trainer state, logs) survives every attempt."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    fake_run(run)
    (run / "trainer_state.json").write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    cases = [
        (run, "is the run folder"),
        (tmp_path, "contains the run folder"),
        (run / "checkpoint-400", "is the checkpoint"),
        (run / "checkpoint-400" / "avg", "lies inside the checkpoint"),
        (tmp_path / "notes", "is not a folder made by average_checkpoints.py"),
    ]
    for output, message in cases:
        with pytest.raises(Error, match=message):
            average([str(run), "--last", "2", "--output_dir", str(output), "--overwrite"])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "notes" not in p.parts) == before
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    # a checkpoint with NaN weights is refused by name (checkpoint and tensor)
    state = load_file(run / "checkpoint-400" / "model.safetensors")
    name = next(n for n, t in state.items() if t.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, run / "checkpoint-400" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Error, match=f"checkpoint-400/model.safetensors: {name} holds NaN"):
        average([str(run), "--last", "2"])
    assert not (run / "average-last-2").exists()


@pytest.mark.slow
def test_the_script_in_a_fresh_process_and_damaged_checkpoints(tmp_path, fake_run):
    """`python average_checkpoints.py` as a user runs it (a fresh process: the model types must register
    themselves); a truncated checkpoint and one of another configuration are named by folder."""
    import subprocess
    import sys

    from project import ROOT

    run = tmp_path / "run"
    fake_run(run, "ebranchformer")
    result = subprocess.run(
        [sys.executable, str(ROOT / "average_checkpoints.py"), str(run), "--last", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_ctc_model(run / "average-last-2") is not None
    weights = run / "checkpoint-400" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Error, match=r"checkpoint-400/model.safetensors cannot be read .*damaged or truncated"):
        average([str(run), "--last", "2", "--output_dir", str(tmp_path / "avg")])
    other = tmp_path / "other"
    fake_run(other, "ebranchformer", steps=(100,))
    fake_run(other, "quartznet", steps=(200,))
    with pytest.raises(Error, match=r"checkpoint-200 has other tensors than checkpoint-100"):
        average([str(other), "--last", "2"])
