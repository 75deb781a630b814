"""The package as a guest in the user's process: importing it registers our types and does nothing else (no
writes, no change to Transformers' pipelines or loggers), its numpy modules import without torch, and no
script imports another script."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from project import ROOT

pytestmark = pytest.mark.slow  # each test starts Python processes


def run_python(code, tmp_path, env=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_package_writes_nothing(tmp_path):
    """A fresh process with HOME and every cache folder read-only (and empty) imports the package: Python's
    audit hook sees no file opened for writing and no folder made, renamed or removed, and the folders stay
    empty. (Root ignores file modes, hence the audit hook.) torch and transformers are imported first: what
    they do at import is theirs, not ours."""
    home = tmp_path / "home"
    caches = {name: home / name for name in ("HF_HOME", "HF_MODULES_CACHE", "XDG_CACHE_HOME", "HF_DATASETS_CACHE")}
    for folder in caches.values():
        folder.mkdir(parents=True)
    for folder in [*caches.values(), home]:
        folder.chmod(0o555)
    code = """
        import json, os, sys
        import torch, transformers
        from transformers import AutoConfig, AutoModelForCTC, AutoProcessor, AutoTokenizer, AutoFeatureExtractor
        writes = []

        def audit(event, args):
            if event == "open" and args[0] is not None and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1] or "", args[2] or 0
                if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    writes.append(("open", str(args[0])))
            elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink",
                           "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.chmod", "os.utime"):
                writes.append((event, str(args[0])))

        sys.addaudithook(audit)
        import modeling_ebranchformer
        from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessorWithLM
        import ebranchformer_ru, ebranchformer_ru.inference, ebranchformer_ru.transcription, ebranchformer_ru.metrics, ebranchformer_ru.golos
        config = AutoConfig.for_model("ebranchformer")
        print(json.dumps({"writes": writes, "type": type(config).__name__}))
    """
    env = {name: str(path) for name, path in caches.items()} | {"HOME": str(home), "TRANSFORMERS_VERBOSITY": "info"}
    try:
        result = run_python(code, tmp_path, env)
    finally:
        for folder in [home, *caches.values()]:
            folder.chmod(0o755)
    assert result == {"writes": [], "type": "EBranchformerConfig"}
    assert [p for p in home.rglob("*") if p.is_file()] == []


def test_transformers_pipelines_and_loggers_are_the_same_before_and_after_the_import(tmp_path):
    """A wav2vec2 model's ASR pipeline is the stock class before and after the import; the pipeline registry's
    entries and every Transformers logger's level are unchanged."""
    code = """
        import json, logging
        from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                                  Wav2Vec2Processor, pipeline)
        from transformers.pipelines import PIPELINE_REGISTRY

        vocab = {"<pad>": 0, "|": 1, "a": 2, "b": 3}
        with open("vocab.json", "w") as f:
            json.dump(vocab, f)
        processor = Wav2Vec2Processor(Wav2Vec2FeatureExtractor(), Wav2Vec2CTCTokenizer("vocab.json"))
        config = Wav2Vec2Config(vocab_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
        Wav2Vec2ForCTC(config).save_pretrained("w2v")
        processor.save_pretrained("w2v")

        def snapshot():
            tasks = {name: {k: repr(v) for k, v in task.items()} for name, task in PIPELINE_REGISTRY.supported_tasks.items()}
            loggers = {name: (logger.level, logger.disabled) for name, logger in logging.root.manager.loggerDict.items()
                       if name.startswith("transformers") and isinstance(logger, logging.Logger)}
            asr = pipeline("automatic-speech-recognition", model="w2v")
            return {"tasks": tasks, "loggers": loggers, "class": type(asr).__module__ + "." + type(asr).__name__}

        before = snapshot()
        import modeling_ebranchformer
        from modeling_ebranchformer import EBranchformerASRPipeline, EBranchformerProcessorWithLM
        after = snapshot()
        changed_loggers = {k: (before["loggers"].get(k), v) for k, v in after["loggers"].items()
                           if k in before["loggers"] and before["loggers"][k] != v}
        print(json.dumps({"same_tasks": before["tasks"] == after["tasks"], "loggers": changed_loggers,
                          "classes": [before["class"], after["class"]]}))
    """
    result = run_python(code, tmp_path)
    stock = "transformers.pipelines.automatic_speech_recognition.AutomaticSpeechRecognitionPipeline"
    assert result == {"same_tasks": True, "loggers": {}, "classes": [stock, stock]}


def test_numpy_modules_import_where_torch_and_transformers_cannot(tmp_path):
    """The ONNX runtime, the inference core and the LM decoder in a process where `import torch` and `import
    transformers` fail: they import as package modules and decode."""
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    code = """
        import json, sys
        import numpy as np
        import modeling_ebranchformer
        from modeling_ebranchformer import beam_search, ngram
        from ebranchformer_ru import inference, onnx_runtime, transcription
        labels = [" "] + list("абвгдежзийклмнопрстуфхцчшщъыьэюя") + [""]
        lm = ngram.NGramLanguageModel.from_file(sys.argv[1]) if len(sys.argv) > 1 else None
        decoder = beam_search.CTCBeamSearchDecoder(labels)
        logits = np.full((6, len(labels)), -10.0)
        for t, c in enumerate([labels.index("д"), 33, labels.index("а"), 33, 33, 33]):
            logits[t, c] = 0.0
        beam = decoder.decode_beams(logits, hotwords=["да"])[0]
        print(json.dumps({"text": beam.text, "offsets": beam.word_offsets,
                          "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
    """
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    result = run_python(code, tmp_path, env)
    assert result == {"text": "да", "offsets": [["да", [0, 3]]], "torch": False, "transformers": False}


def test_no_script_imports_another_script_or_edits_sys_path():
    """Scripts (the top-level command lines), benchmarks and scripts/ import packages only (benchmarks share their
    helpers, `benchmarks/common.py`)."""
    scripts = {
        p.stem for p in [*ROOT.glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    }
    scripts.discard("common")
    offenders = []
    for path in [
        *ROOT.glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "scripts").glob("*.py"),
        *(ROOT / "ebranchformer_ru").rglob("*.py"),
    ]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^\s*(?:from|import)\s+([\w.]+)", text, flags=re.M):
            if match.group(1).split(".")[0] in scripts:
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
        if "sys.path" in text:
            offenders.append(f"{path.relative_to(ROOT)}: edits sys.path")
    assert offenders == []


def test_saved_folders_hold_the_model_code_only(tmp_path, tiny_config):
    """What save_pretrained copies for trust_remote_code is the model package's code: no application module."""
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    EBranchformerForCTC(tiny_config).save_pretrained(tmp_path)
    EBranchformerProcessor().save_pretrained(tmp_path)
    copied = sorted(p.name for p in tmp_path.glob("*.py"))
    package = {p.name for p in (ROOT / "modeling_ebranchformer").glob("*.py")}
    assert copied and set(copied) <= package
    assert not {"audio.py", "augmentation.py", "onnx_runtime.py", "files.py", "hub.py", "model_card.py"} & set(copied)


def test_remote_code_needs_only_what_transformers_needs():
    """Transformers refuses a trust_remote_code file that imports, outside a try block, a module that is not
    installed: every file of the package may import only the standard library and what Transformers needs
    (an optional module such as kenlm only inside `try`)."""
    from transformers.dynamic_module_utils import get_imports

    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "numpy", "huggingface_hub"}
    needed = {p.name: set(get_imports(p)) - allowed for p in (ROOT / "modeling_ebranchformer").glob("*.py")}
    assert {name: sorted(extra) for name, extra in needed.items() if extra} == {}


@pytest.mark.parametrize("script", sorted(p.name for p in ROOT.glob("*.py")))
def test_every_script_starts_in_a_fresh_process(script, tmp_path):
    """Each command line imports what it needs by itself (a test process has imported everything already)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
