"""export_onnx.py (ebranchformer-export-onnx): ONNX Runtime log-probabilities agree with PyTorch's on real audio
(batch 1 and a padded batch) for E-Branchformer and QuartzNet; int8; the folder is complete or absent; and
transcribe.py runs the export in a process where torch cannot be imported."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from small_models import QUARTZNET_SMALL

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from project import CORPUS, ROOT

from ebranchformer_ru import onnx_export, onnx_runtime
from ebranchformer_ru.commands import export_onnx as command
from ebranchformer_ru.commands import transcribe

CROWD = CORPUS / "test_opus" / "crowd"
FILES = sorted((CROWD / "files").glob("*.opus"))[:6]


def save_quartznet(folder):
    """A tiny QuartzNet (seed 0) with the processor: the E-Branchformer export uses the shared tiny_model."""
    from modeling_ebranchformer import EBranchformerProcessor, QuartzNetConfig, QuartzNetForCTC

    torch.manual_seed(0)
    config = QuartzNetConfig(**QUARTZNET_SMALL)
    model = QuartzNetForCTC(config)
    with torch.no_grad():  # running statistics that are not the identity, so batch norm is really checked
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval().save_pretrained(folder)
    EBranchformerProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("export")
    model_dir = shutil.copytree(tiny_model, root / "model")
    sets = {"crowd": CROWD / "manifest.jsonl"}
    info = onnx_export.export(
        model_dir, root / "onnx", int8=True, check_audio=FILES, wer_sets=sets, log=lambda *a: None
    )
    return model_dir, root / "onnx", info


@pytest.mark.slow
def test_export_is_checked_and_self_contained(exported):
    _model_dir, out, info = exported
    check = info["check"]
    assert check["utterances"] == len(FILES) and check["max_abs_diff_batch1"] <= 1e-4
    assert check["max_abs_diff_padded_batch"] <= 1e-4
    assert json.loads((out / "onnx_export.json").read_text()) == info
    for name in (
        "model.onnx",
        "model.int8.onnx",
        "config.json",
        "processor_config.json",
        "vocab.json",
        "tokenizer_config.json",
    ):
        assert (out / name).is_file(), name
    assert info["samples_per_frame"] == 640 and info["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert set(info["wer"]) == {"fp32", "int8"} and info["wer"]["int8"]["crowd"]["utterances"] == len(
        (CROWD / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    )
    # the processor loads from the folder alone
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(out).tokenizer.pad_token_id == 33


@pytest.mark.slow
def test_onnx_runtime_threads_do_not_spin_between_runs(exported):
    """Spinning threads would hold the cores that the features, the decoding and the caller's next call need between
    runs: on 2 cores one 10 s recording ran 1.85x slower with them (docs/benchmarks.md, ONNX Runtime); the live
    chunk step opens its graph with the same options."""
    _, out, _ = exported
    for quantized in (False, True):
        model = onnx_runtime.OnnxCTCModel(out, quantized=quantized, num_threads=2)
        assert model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.slow
def test_numpy_runtime_matches_pytorch(exported):
    """The torch-free path (numpy features + ONNX Runtime) against the PyTorch model on real audio: log-mel
    features within float32 rounding, log-probabilities close, identical greedy transcripts."""
    from transformers import AutoModelForCTC, AutoProcessor

    from ebranchformer_ru.audio import read_audio

    model_dir, out, _ = exported
    model, processor = AutoModelForCTC.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    onnx = onnx_runtime.OnnxCTCModel(out)
    waveforms = [read_audio(p) for p in FILES]
    inputs = processor(audio=waveforms, sampling_rate=16000, return_tensors="pt")
    features, mask = onnx.features.batch(waveforms)
    assert np.array_equal(mask, inputs["attention_mask"].numpy())
    assert np.abs(features - inputs["input_features"].numpy()).max() < 1e-3  # near-silent bins, log domain
    texts = processor.batch_decode(model.generate(**inputs))
    log_probs = onnx(waveforms)
    assert [onnx.vocabulary.decode(lp.argmax(-1)) for lp in log_probs] == texts
    with torch.no_grad():
        reference = torch.log_softmax(model(**inputs).logits, -1).numpy()
    for i, lp in enumerate(log_probs):
        assert np.abs(lp - reference[i, : len(lp)]).max() < 1e-3


def test_quartznet_export(tmp_path, capsys):
    model_dir = save_quartznet(tmp_path / "q")
    # through the command line, with the folder's own code allowed (our model types load as ours all the same)
    argv = [
        str(model_dir),
        "--output_dir",
        str(tmp_path / "q_onnx"),
        "--check_audio",
        *map(str, FILES[:3]),
        "--threads",
        "1",
        "--trust_remote_code",
    ]
    info = command.export(command.build_parser().parse_args(argv))
    assert info["model_type"] == "quartznet" and info["check"]["max_abs_diff_padded_batch"] <= 1e-4
    assert "int8" not in info["files"] and not (tmp_path / "q_onnx" / "model.int8.onnx").exists()
    # the torch-free runtime gives the PyTorch model's transcripts
    texts = [r["text"] for r in run_transcribe(tmp_path / "q_onnx", FILES[:3], tmp_path / "q.jsonl")]
    assert texts == [r["text"] for r in run_transcribe(model_dir, FILES[:3], tmp_path / "q_torch.jsonl")]
    # asking for the int8 model of an export without one is a named error
    assert transcribe.main([str(tmp_path / "q_onnx"), str(FILES[0]), "--quantized"]) == 1
    assert "no int8 model in this export (run export_onnx.py with --int8)" in capsys.readouterr().err


def run_transcribe(model, files, output):
    assert transcribe.main([str(model), *map(str, files), "--output", str(output), "--no_progress"]) == 0
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_out_dir_is_never_overwritten_or_half_written(exported, tmp_path, capsys):
    model_dir, out, _ = exported
    before = sorted(os.listdir(out))
    assert command.main([str(model_dir), "--output_dir", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out} exists; pass --overwrite to replace it\n"
    assert sorted(os.listdir(out)) == before
    # a failed check writes nothing
    target = tmp_path / "strict"
    with pytest.raises(onnx_export.ExportError, match="differ from PyTorch's by .* > 1e-12; nothing written"):
        onnx_export.export(model_dir, target, tolerance=1e-12, check_audio=FILES[:2], log=lambda *a: None)
    assert not target.exists() and not list(tmp_path.glob(".strict*"))
    assert command.main([str(tmp_path / "nothing"), "--output_dir", str(target)]) == 1
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bars of the export above
    assert error.startswith(f"error: model folder not found: {tmp_path / 'nothing'} (")
    assert not target.exists()


@pytest.mark.slow
def test_transcribe_onnx_without_torch(exported, tmp_path):
    """transcribe.py on the export in a process where `import torch` and `import transformers` fail: same
    transcripts as the PyTorch model, fp32 and int8."""
    model_dir, out, _ = exported
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    # the repository as `python transcribe.py` puts it on sys.path (runpy puts the probe's folder there instead)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    probe = tmp_path / "probe.py"  # runs the script, then checks that neither module got imported
    probe.write_text(
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch or transformers imported'\n"
        "sys.exit(status)\n"
    )
    files = [str(f) for f in FILES]
    outputs = {}
    for variant in ("fp32", "int8"):
        output = tmp_path / f"{variant}.jsonl"
        command = [
            sys.executable,
            str(ROOT / "transcribe.py"),
            str(out),
            *files,
            "--output",
            str(output),
            "--no_progress",
            "--timestamps",
        ] + (["--quantized"] if variant == "int8" else [])
        result = subprocess.run(
            [sys.executable, str(probe), *command[1:]], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert f"{len(files)} transcribed" in result.stderr
        outputs[variant] = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    # the same folder through the PyTorch model
    reference = tmp_path / "torch.jsonl"
    assert transcribe.main([str(model_dir), *files, "--output", str(reference), "--no_progress", "--timestamps"]) == 0
    expected = [json.loads(line) for line in reference.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in outputs["fp32"]] == [r["text"] for r in expected]
    assert [r["words"] for r in outputs["fp32"]] == [r["words"] for r in expected]
    assert [r["path"] for r in outputs["int8"]] == files


@pytest.mark.slow
def test_an_export_never_replaces_its_model_or_a_foreign_folder(exported, tmp_path):
    """--output_dir may not be, contain or lie inside the model folder, and --overwrite replaces only an export."""
    model_dir, out, _ = exported
    parent = tmp_path / "parent"
    shutil.copytree(model_dir, parent / "model")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    model = parent / "model"
    cases = [
        (model, "is the model folder"),
        (parent, "contains the model folder"),
        (model / "onnx", "lies inside the model folder"),
        (tmp_path / "notes", "is not a folder made by export_onnx"),
    ]
    for target, message in cases:
        with pytest.raises(onnx_export.ExportError, match=message):
            onnx_export.export(model, target, overwrite=True, check_audio=FILES[:1], log=lambda *a: None)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert json.loads((out / "onnx_export.json").read_text())["source"] == Path(model_dir).name  # no machine path


@pytest.mark.slow
def test_a_damaged_export_and_a_too_long_input_are_named(exported, tmp_path, capsys):
    import soundfile as sf

    _, out, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    assert transcribe.main([str(broken), str(FILES[0]), "--no_progress"]) == 1
    assert "model.onnx: ONNX Runtime cannot load it" in capsys.readouterr().err
    positions = json.loads((out / "config.json").read_text())["max_position_embeddings"]
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros((positions * 4 + 8) * 160, np.float32), 16000)
    assert transcribe.main([str(out), str(long), "--chunk_length_s", "100000", "--no_progress"]) == 1
    assert f"longer than max_position_embeddings ({positions}); split the audio" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "2"])
@pytest.mark.slow
def test_a_tolerance_that_cannot_check_anything_is_refused(exported, tmp_path, capsys, value):
    model_dir, _, _ = exported
    with pytest.raises(SystemExit) as exit:
        command.main([str(model_dir), "--output_dir", str(tmp_path / "out"), "--tolerance", value])
    assert exit.value.code == 2
    assert "--tolerance must be a positive number below 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
