"""convert_checkpoint.py: course-layout modules (tests/course_modules.py, written from REFERENCE.md) are saved
as Lightning checkpoints, converted, and compared with the converted models."""

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from course_modules import (
    CourseCTCModel,
    CourseDecoder,
    CourseQuartzNetEncoder,
    lightning_checkpoint,
    randomize_batch_norms,
)
from project import CORPUS, ROOT
from small_models import course_model
from transformers import AutoModelForCTC

from ebranchformer_ru import conversion
from ebranchformer_ru.conversion import ConversionError, convert
from modeling_ebranchformer import (
    EBranchformerCTCTokenizer,
    EBranchformerFeatureExtractor,
    EBranchformerForCTC,
    QuartzNetForCTC,
)

EXTRACTOR, TOKENIZER = EBranchformerFeatureExtractor(), EBranchformerCTCTokenizer()


@pytest.fixture(scope="module")
def utterance():
    """Features of a real recording of the embedded corpus (Opus, decoded by soundfile)."""
    wave, rate = sf.read(sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[0], dtype="float32")
    assert rate == 16000
    return wave, EXTRACTOR(wave, sampling_rate=16000, return_tensors="pt")


def greedy(log_probs):
    ids = log_probs.argmax(-1)[0].tolist()
    return TOKENIZER.decode(ids)


VARIANTS = [
    ("ebranchformer", "linear"),
    ("ebranchformer", "sequential"),
    ("quartznet", "flat"),
    ("quartznet", "flat-bias"),
    ("quartznet", "nested"),
    ("quartznet", "nested-bias"),
]


@pytest.mark.parametrize("arch,variant", VARIANTS)
def test_converted_model_reproduces_the_course_module(arch, variant, tmp_path, utterance):
    source = course_model(arch, variant)
    torch.save(lightning_checkpoint(source), tmp_path / "model.ckpt")
    model, report = convert(tmp_path / "model.ckpt", tmp_path / "out")
    assert isinstance(model, EBranchformerForCTC if arch == "ebranchformer" else QuartzNetForCTC)
    assert report["tensors"] == len(source.state_dict()) and (report["epoch"], report["global_step"]) == (4, 9794)
    _, inputs = utterance
    reloaded = AutoModelForCTC.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        expected = source(inputs["input_features"])
        got = reloaded(**inputs).logits.log_softmax(-1)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4
    assert greedy(got) == greedy(expected)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "model.ckpt" in card and "epoch 4" in card and "9794" in card


def test_parameter_counts_of_the_course_configurations(tmp_path):
    counts = {}
    for arch, variant in (("ebranchformer", "linear"), ("quartznet", "flat"), ("quartznet", "flat-bias")):
        torch.save(course_model(arch, variant).state_dict(), tmp_path / f"{variant}.pt")  # a bare state dict
        counts[variant] = convert(tmp_path / f"{variant}.pt", tmp_path / variant)[1]["counts"]
    assert counts["linear"]["total_trainable"] == 9_986_850
    # REFERENCE.md: 6.7 M encoder parameters, 6.68-6.71 M over the plausible variants.
    assert counts["flat"]["encoder_trainable"] == 6_683_456 and counts["flat-bias"]["encoder_trainable"] == 6_708_096


def test_converted_model_does_not_depend_on_the_place_in_the_batch(tmp_path, utterance):
    source = course_model("ebranchformer", "linear")
    torch.save(lightning_checkpoint(source), tmp_path / "model.ckpt")
    model, report = convert(tmp_path / "model.ckpt", tmp_path / "out")
    assert report["positions"] == "batch-quirk" and model.config.position_embedding_type == "none"
    features = utterance[1]["input_features"]
    batch = torch.cat([torch.randn_like(features), features])  # our utterance second
    with torch.no_grad():
        alone = model(features).logits.log_softmax(-1)
        second = model(batch).logits.log_softmax(-1)[1:]
        course_second = source(batch)[1:]
    assert (second - alone).abs().max() <= 1e-4
    # The course module adds table row 1 to item 1, so its output there differs from batch size 1:
    assert (course_second - alone).abs().max() > 1e-2


@pytest.mark.slow
def test_fresh_process_with_only_transformers_loads_transcribes_and_matches(tmp_path, utterance):
    source = course_model("quartznet", "nested-bias")
    torch.save(lightning_checkpoint(source), tmp_path / "q.ckpt")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "convert_checkpoint.py"),
            str(tmp_path / "q.ckpt"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "6,742,946" in result.stdout and "epoch 4, step 9794" in result.stdout
    assert "max abs difference 0.0e+00" in result.stdout
    wave, inputs = utterance
    np.save(tmp_path / "wave.npy", wave)
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", source(inputs["input_features"]).numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["modeling_ebranchformer"] = None  # our package must not be importable here
        import numpy as np, torch
        from transformers import AutoModelForCTC, AutoProcessor, pipeline
        folder = {str(tmp_path / "out")!r}
        model = AutoModelForCTC.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        wave = np.load({str(tmp_path / "wave.npy")!r})
        with torch.no_grad():
            log_probs = model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits.log_softmax(-1)
        print("DIFF", float((log_probs - torch.from_numpy(np.load({str(tmp_path / "expected.npy")!r}))).abs().max()))
        asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
        print("TEXT", repr(asr(wave)["text"]))
        print("GREEDY", repr(processor.batch_decode(log_probs.argmax(-1))[0]))
    """)
    env = dict(os.environ, PYTHONPATH="")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(
        line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ")[0] in ("DIFF", "TEXT", "GREEDY")
    )
    assert float(lines["DIFF"]) <= 1e-4
    assert lines["TEXT"] == lines["GREEDY"]


# --- bad input ------------------------------------------------------------------------------------------


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_not_a_checkpoint_and_truncated_files(tmp_path):
    (tmp_path / "notes.ckpt").write_text("this is not a checkpoint\n")
    with pytest.raises(ConversionError, match=r"notes.ckpt: not a readable PyTorch checkpoint"):
        convert(tmp_path / "notes.ckpt", tmp_path / "out")
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"cut.ckpt: not a readable PyTorch checkpoint \(truncated"):
        convert(tmp_path / "cut.ckpt", tmp_path / "out")
    with pytest.raises(ConversionError, match=r"missing.ckpt: no such file"):
        convert(tmp_path / "missing.ckpt", tmp_path / "out")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(ConversionError, match="neither a Lightning checkpoint"):
        convert(tmp_path / "list.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_state_dict_of_another_model(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConversionError, match=r"cannot tell the architecture: .*'0.bias', '0.weight'"):
        convert(tmp_path / "other.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_shapes_missing_and_unexpected_keys_are_listed_and_nothing_is_written(tmp_path):
    checkpoint = lightning_checkpoint(course_model("ebranchformer", "linear"))
    state = checkpoint["state_dict"]
    state["encoder.layers.3.merge_proj.weight"] = torch.zeros(256, 500)
    del state["encoder.layers.5.norm_mha.bias"]
    state["encoder.layers.2.extra.weight"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(ConversionError) as error:
        convert(tmp_path / "bad.ckpt", tmp_path / "out")
    message = str(error.value)
    assert "nothing written" in message
    assert "missing (1): ebranchformer.layers.5.norm_mha.bias" in message
    assert "unexpected (1): encoder.layers.2.extra.weight" in message
    assert (
        "mismatched (1): ebranchformer.layers.3.merge.proj.weight: checkpoint (256, 500) vs model (256, 512)" in message
    )
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    checkpoint = lightning_checkpoint(course_model("quartznet", "flat"))
    del checkpoint["state_dict"]["encoder.layers.2.conv.7.running_var"]
    torch.save(checkpoint, tmp_path / "q.ckpt")
    with pytest.raises(ConversionError, match=r"missing \(1\): quartznet.blocks.2.sub_blocks.1.norm.running_var"):
        convert(tmp_path / "q.ckpt", tmp_path / "out")


def test_a_folder_an_empty_file_and_incomplete_modules_get_a_message_not_a_traceback(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConversionError, match=r"run is a folder: give the checkpoint file"):  # was "no such file"
        convert(tmp_path / "run", tmp_path / "out")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"empty.ckpt is empty \(0 bytes\)"):  # was "EOFError: "
        convert(tmp_path / "empty.ckpt", tmp_path / "out")
    # A batch norm without affine weights, a convolution with a bias but no weight: were raw KeyErrors.
    checkpoint = lightning_checkpoint(course_model("quartznet", "flat-bias"))
    state = checkpoint["state_dict"]
    del state["encoder.layers.0.conv.2.weight"], state["encoder.layers.0.conv.2.bias"]
    torch.save(checkpoint, tmp_path / "no_affine.ckpt")
    with pytest.raises(ConversionError, match=r"missing \(2\): quartznet.blocks.0.sub_blocks.0.norm.bias, .*.weight"):
        convert(tmp_path / "no_affine.ckpt", tmp_path / "out")
    del state["encoder.layers.1.conv.5.weight"]
    torch.save(checkpoint, tmp_path / "no_weight.ckpt")
    with pytest.raises(ConversionError, match=r"encoder.layers.1.conv.5.\*: neither a convolution nor a batch norm"):
        convert(tmp_path / "no_weight.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


class AttributeDict(dict):
    """A dict subclass in `hyper_parameters`, as Lightning saves them: no inert placeholder can stand in for it."""


def test_the_advice_names_the_real_problem(tmp_path):
    torch.save(lightning_checkpoint(course_model("ebranchformer", "linear")), tmp_path / "e.ckpt")
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "q.ckpt")
    with pytest.raises(ConversionError, match=r"--arch quartznet, but the checkpoint is an E-Branchformer") as error:
        convert(tmp_path / "e.ckpt", tmp_path / "out", arch="quartznet")
    assert "strides" not in str(error.value)  # it said: give --block_strides and --block_dilations
    with pytest.raises(ConversionError, match=r"--arch ebranchformer, but the checkpoint is a QuartzNet"):
        convert(tmp_path / "q.ckpt", tmp_path / "out", arch="ebranchformer")
    # Refused even with placeholders: torch's reason is given, not the advice to use --inert_objects again.
    checkpoint = lightning_checkpoint(course_model("quartznet", "flat"))
    checkpoint["hyper_parameters"] = AttributeDict(lr=1e-3)
    torch.save(checkpoint, tmp_path / "hparams.ckpt")
    with pytest.raises(
        ConversionError,
        match=r"(?s)even with .* inert placeholders .*: Can only SETITEM for dict.*"
        r"Only --unsafe_unpickle",
    ) as error:
        convert(tmp_path / "hparams.ckpt", tmp_path / "out", inert_objects=True)
    assert "Rerun with --inert_objects" not in str(error.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_options_that_cannot_apply_are_refused_not_ignored(tmp_path):
    torch.save(lightning_checkpoint(course_model("ebranchformer", "linear")), tmp_path / "e.ckpt")
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "q.ckpt")
    with pytest.raises(
        ConversionError,
        match=r"--block_strides, --batch_norm_eps apply to QuartzNet checkpoints, but "
        r"this one is E-Branchformer: drop them",
    ):
        convert(tmp_path / "e.ckpt", tmp_path / "out", block_strides=[2] * 8, batch_norm_eps=1e-3)
    with pytest.raises(ConversionError, match=r"--positions applies to E-Branchformer checkpoints"):
        convert(tmp_path / "q.ckpt", tmp_path / "out", positions="per-frame")
    with pytest.raises(ConversionError, match=r"--num_mel_bins 0: must be positive"):  # was a ZeroDivisionError
        convert(tmp_path / "e.ckpt", tmp_path / "out", num_mel_bins=0)
    with pytest.raises(ConversionError, match=r"--inert_objects and --unsafe_unpickle contradict each other"):
        convert(tmp_path / "q.ckpt", tmp_path / "out", inert_objects=True, unsafe_unpickle=True)
    # The course values said out loud change nothing.
    convert(tmp_path / "q.ckpt", tmp_path / "out", num_attention_heads=4, positions="auto")
    assert leftovers(tmp_path) == []


def test_a_head_of_another_size_needs_a_vocabulary_that_fits(tmp_path):
    torch.manual_seed(0)
    source = randomize_batch_norms(CourseCTCModel(CourseQuartzNetEncoder(), CourseDecoder(1024, classes=40))).eval()
    torch.save(lightning_checkpoint(source), tmp_path / "q40.ckpt")
    # It converted without comment and got the 34-symbol course tokenizer, which has no symbol for outputs 34..39
    # (the blank among them); a smaller head's blank decoded as a letter.
    with pytest.raises(ConversionError, match=r"head .* has 40 outputs, but the course vocabulary has 34 .*--vocab"):
        convert(tmp_path / "q40.ckpt", tmp_path / "out")
    symbols = ["<pad>", "|", *"абвгдежзийклмнопрстуфхцчшщъыьэюя", *"abcdef"]  # the blank first, this time
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    (tmp_path / "vocab34.json").write_text(json.dumps(dict(list(vocab.items())[:34])), encoding="utf-8")
    with pytest.raises(ConversionError, match=r"vocab34.json has 34 symbols but the CTC head .* has 40 outputs"):
        convert(tmp_path / "q40.ckpt", tmp_path / "out", vocab=tmp_path / "vocab34.json")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    model, _ = convert(tmp_path / "q40.ckpt", tmp_path / "out", vocab=tmp_path / "vocab.json")
    assert model.config.vocab_size == 40 and model.config.pad_token_id == 0  # the blank is where the vocabulary says
    tokenizer = EBranchformerCTCTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.get_vocab() == vocab and tokenizer.pad_token_id == 0
    assert tokenizer.decode([0, 2, 0, 1, 39]) == "а f"
    assert "Vocabulary: `vocab.json`, 40 symbols" in (tmp_path / "out" / "README.md").read_text()


def test_a_vocabulary_file_that_cannot_be_right_is_refused_before_the_checkpoint_is_read(tmp_path, monkeypatch):
    def read(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the vocabulary was checked")

    monkeypatch.setattr(conversion, "load_checkpoint", read)
    (tmp_path / "model.ckpt").write_bytes(b"never read")
    course = json.loads((ROOT / "modeling_ebranchformer" / "vocab.json").read_text(encoding="utf-8"))
    cases = [
        ("{not json", r"not a UTF-8 JSON file"),
        (json.dumps(list(course)), r"expected a JSON object mapping each symbol to its output index"),
        ('{"|": 0, "а": 1, "а": 2, "<pad>": 3}', r"symbols listed twice: \['а'\]"),
        (json.dumps({**course, "я": 33, "<pad>": 34}), r"the 34 indices .*; missing: \[32\]; outside: \[34\]"),
        (json.dumps({**course, "я": 0}), r"the 34 indices .*; repeated: \[0\]; missing: \[32\]"),
        (json.dumps({k: v for k, v in course.items() if k != "<pad>"} | {"ё": 33}), r'no "<pad>" \(the CTC blank\)'),
        (json.dumps({(" " if k == "|" else k): v for k, v in course.items()}), r'no "\|" .*write the space as "\|"'),
    ]
    for index, (text, message) in enumerate(cases):
        (tmp_path / f"vocab{index}.json").write_text(text, encoding="utf-8")
        with pytest.raises(ConversionError, match=rf"--vocab .*vocab{index}.json: {message}"):
            convert(tmp_path / "model.ckpt", tmp_path / "out", vocab=tmp_path / f"vocab{index}.json")
    with pytest.raises(ConversionError, match=r"--vocab .*absent.json: cannot read it \(No such file or directory\)"):
        convert(tmp_path / "model.ckpt", tmp_path / "out", vocab=tmp_path / "absent.json")


@pytest.mark.slow
def test_an_existing_output_folder_is_replaced_only_with_overwrite(tmp_path):
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "q.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="out exists; pass --overwrite"):
        convert(tmp_path / "q.ckpt", out)
    result = subprocess.run(
        [sys.executable, str(ROOT / "convert_checkpoint.py"), str(tmp_path / "q.ckpt"), "--output_dir", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1 and result.stderr == f"error: {out} exists; pass --overwrite to replace it\n"
    convert(tmp_path / "q.ckpt", out, overwrite=True)  # an empty folder
    (out / "model.safetensors").write_bytes(b"an older conversion")
    convert(tmp_path / "q.ckpt", out, overwrite=True)  # a model folder
    assert (out / "model.safetensors").read_bytes() != b"an older conversion"
    assert leftovers(tmp_path) == []


def test_the_output_folder_never_replaces_the_checkpoint_the_working_directory_or_other_files(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), source / "model.ckpt")
    (source / "notes.txt").write_text("mine")
    kept = {path: path.read_bytes() for path in source.iterdir()}
    refusals = [
        (source, r"source contains the checkpoint"),  # the checkpoint's own folder (issue #12, item 3)
        (source / "model.ckpt", r"model.ckpt is the checkpoint"),
        (source / "notes.txt", r"notes.txt is a file, not a folder"),
        (tmp_path, r"contains the checkpoint"),
        (".", r"here is the current directory"),  # was a raw OSError leaving an empty ..old.* folder behind
        ("..", r"work contains the current directory"),
    ]
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")  # it would be replaced by a folder, the target kept
    refusals.append((tmp_path / "link", r"link is a symbolic link \(to .*target\)"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.json").write_text("{}")  # one model-folder name does not make a model folder
    (tmp_path / "data" / "keep.txt").write_text("mine")
    (tmp_path / "data" / "runs").mkdir()
    refusals.append((tmp_path / "data", r"data holds what a model folder does not \(keep.txt, runs/\)"))
    (tmp_path / "work" / "here").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "here")
    for output_dir, message in refusals:
        with pytest.raises(ConversionError, match=message):
            convert(source / "model.ckpt", output_dir, overwrite=True)
    # A link to the checkpoint does not hide where it lies.
    (tmp_path / "elsewhere.ckpt").symlink_to(source / "model.ckpt")
    with pytest.raises(ConversionError, match=r"source contains the checkpoint .*elsewhere.ckpt"):
        convert(tmp_path / "elsewhere.ckpt", source, overwrite=True)
    assert {path: path.read_bytes() for path in source.iterdir()} == kept
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine" and (tmp_path / "link").is_symlink()
    assert leftovers(tmp_path) == [] and leftovers(source) == [] and leftovers(tmp_path / "work") == []


def test_an_unwritable_place_fails_before_the_checkpoint_is_read(tmp_path, monkeypatch):
    (tmp_path / "q.ckpt").write_bytes(b"never read")
    (tmp_path / "notes.txt").write_text("a file, not a folder")

    def read(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the output place was checked")

    monkeypatch.setattr(conversion, "load_checkpoint", read)
    with pytest.raises(ConversionError, match=r"cannot write the output folder .*notes.txt/out: Not a directory"):
        convert(tmp_path / "q.ckpt", tmp_path / "notes.txt" / "out")

    def read_only(*args, dir=None, **kwargs):  # what a read-only folder gives (chmod does not stop root)
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    with pytest.raises(ConversionError, match=r"cannot write the output folder .*new/models/out: Permission denied"):
        convert(tmp_path / "q.ckpt", tmp_path / "new" / "models" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "q.ckpt"]  # the parents made are gone


def test_files_and_folder_get_the_modes_of_a_plain_write(tmp_path):
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "q.ckpt")
    umask = os.umask(0o027)
    try:
        convert(tmp_path / "q.ckpt", tmp_path / "out")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750  # mkdtemp made it 0700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").iterdir()}
    assert modes["model.safetensors"] == 0o640  # written through a 0600 temporary file
    assert set(modes.values()) == {0o640}


def test_a_failure_while_writing_changes_nothing(tmp_path, monkeypatch):
    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "q.ckpt")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(conversion.EBranchformerProcessor, "save_pretrained", fail)
        with pytest.raises(ConversionError, match=r"writing .*out failed: disk full; nothing written"):
            convert(tmp_path / "q.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # Replacing: when the new folder cannot be renamed into place, the old one is put back.
    convert(tmp_path / "q.ckpt", tmp_path / "out")
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()}
    rename = os.replace

    def fail_from_staging(source, target):
        if Path(source).name.startswith(".out.") and ".old." not in Path(source).name:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        rename(source, target)

    monkeypatch.setattr(conversion.os, "replace", fail_from_staging)
    with pytest.raises(
        ConversionError,
        match=r"writing .*out failed: Invalid cross-device link; nothing written, an earlier folder is unchanged",
    ):
        convert(tmp_path / "q.ckpt", tmp_path / "out", overwrite=True)
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()} == before
    assert leftovers(tmp_path) == []


class CreatesAFile:
    """Unpickling this calls open(path, "w"): code from the checkpoint running on the user's machine."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_loading_runs_no_code_from_the_checkpoint_unless_asked(tmp_path):
    marker = tmp_path / "pwned.txt"
    checkpoint = lightning_checkpoint(course_model("quartznet", "flat"))
    checkpoint["hyper_parameters"] = CreatesAFile(str(marker))
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(
        ConversionError, match=r"(?s)weights_only=True\) refused it.*\(io.open\).*--unsafe_unpickle.*Unsupported global"
    ):
        convert(tmp_path / "evil.ckpt", tmp_path / "out")
    assert not marker.exists()
    # Inert placeholders: the tensors load, the call to open() is only recorded.
    convert(tmp_path / "evil.ckpt", tmp_path / "out", inert_objects=True)
    assert not marker.exists() and (tmp_path / "out" / "model.safetensors").exists()
    # The explicit flag really unpickles (and so runs the code): it must stay opt-in.
    convert(tmp_path / "evil.ckpt", tmp_path / "out2", unsafe_unpickle=True)
    assert marker.exists()


def test_the_command_checks_the_written_folder_and_reports_errors_in_one_line(tmp_path, capsys):
    from ebranchformer_ru.commands import convert as command

    torch.save(lightning_checkpoint(course_model("quartznet", "flat")), tmp_path / "q.ckpt")
    model, report = command.convert(
        command.build_parser().parse_args([str(tmp_path / "q.ckpt"), "--output_dir", str(tmp_path / "out")])
    )
    assert report["architecture"] == "quartznet" and "max abs difference 0.0e+00" in capsys.readouterr().out
    with torch.no_grad():  # weights that are not the folder's: the check must say so
        next(model.parameters()).add_(1.0)
    with pytest.raises(ConversionError, match=r"out reloads with other log-probabilities .* do not use or publish it"):
        conversion.check_reload(model, tmp_path / "out", log=lambda line: None)
    capsys.readouterr()
    # An error of the run: exit 1, one line; contradictory options: exit 2 with the usage.
    assert command.main([str(tmp_path / "q.ckpt"), "--output_dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'out'} exists; pass --overwrite to replace it\n"
    with pytest.raises(SystemExit) as exit:
        command.main(
            [str(tmp_path / "q.ckpt"), "--output_dir", str(tmp_path / "x"), "--inert_objects", "--unsafe_unpickle"]
        )
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert (
        command.main(
            [
                str(tmp_path / "q.ckpt"),
                "--output_dir",
                str(tmp_path / "x"),
                "--inert_objects",
                "false",
                "--unsafe_unpickle",
                "false",
            ]
        )
        == 0
    )
