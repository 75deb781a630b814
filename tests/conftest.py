import json
import os

import numpy as np
import pytest
from project import CORPUS, SHARED_EXAMPLE  # tests/ is on the import path: pyproject.toml's pytest `pythonpath`
from small_models import one_channel_head

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def golos_example():
    """The real Golos utterance from ../shared (absent in a user's checkout: skip)."""
    wav = SHARED_EXAMPLE / "001ce26c07c20eaa0d666b824c6c6924.wav"
    if not wav.exists():
        pytest.skip("../shared/golos_example is absent")
    return wav


# The one small E-Branchformer of the tests.
TINY_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    cgmlp_intermediate_size=48,
    ffn_intermediate_size=64,
    merge_conv_kernel_size=7,
    max_position_embeddings=2000,
)


@pytest.fixture(scope="session")
def tiny_config_values() -> dict:
    """The tiny configuration's values (for module-scoped fixtures and other model classes)."""
    return dict(TINY_CONFIG)


@pytest.fixture
def tiny_config(tiny_config_values):
    from modeling_ebranchformer import EBranchformerConfig

    return EBranchformerConfig(**tiny_config_values)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_config_values):
    """A saved folder of the tiny E-Branchformer (seed 0) and the processor; tests must not modify it."""
    import torch

    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    EBranchformerForCTC(EBranchformerConfig(**tiny_config_values)).eval().save_pretrained(folder)
    EBranchformerProcessor().save_pretrained(folder)
    return folder


def speech_like_signal(seconds=1.0, seed=0):
    """A deterministic speech-like signal: harmonics of a gliding pitch with a syllable envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.1 * voice * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def speech_like():
    """speech_like(seconds, seed): a deterministic speech-like signal."""
    return speech_like_signal


TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,cgmlp_intermediate_size=48,ffn_intermediate_size=64"


@pytest.fixture(scope="session")
def tiny_overrides() -> str:
    """The tiny configuration as train_ctc.py's --config_overrides."""
    return TINY


@pytest.fixture(scope="session")
def train_args():
    """train_args(tmp_path, *extra): train_ctc.py options for the tiny model on 40 s of the embedded corpus."""
    return _train_args


def _train_args(tmp_path, *extra):
    """train_ctc.py options for a tiny model on 40 s of the embedded corpus, quick enough for tests."""
    return [
        "--preset",
        "mini",
        "--config_overrides",
        TINY,
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
        "--per_device_train_batch_size",
        "8",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--train_subset_seconds",
        "40",
        "--max_eval_samples",
        "6",
        "--dataset_cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / "out"),
        "--disable_tqdm",
        "true",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A finished train_ctc.py run: 8 steps with checkpoints at 4 and 8, evaluated at the end.
    Returns (tmp folder, trainer, metrics); the run is in tmp/out. Tests must not modify it."""
    from ebranchformer_ru import training

    tmp = tmp_path_factory.mktemp("run")
    trainer, metrics = training.run(
        _train_args(tmp, "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "2")
    )
    return tmp, trainer, metrics


# ---- a small trained model (fixtures of test_confidence.py)

SEEN = 80  # the first 80 utterances of the embedded train set (about 4 minutes of speech)


@pytest.fixture(scope="session")
def recogniser(tmp_path_factory):
    """A small E-Branchformer (two layers) that train_ctc.py trained until it spells words: 200 steps of the
    overfit preset on the first `SEEN` utterances of the embedded train set, about 90 s on 2 cores. Returns (model
    folder, data folder); the data folder has the Golos layout: train_opus/ holds those utterances, test_opus/ the
    embedded test sets (crowd, farfield, heldout_voice) and "seen", the trained-on utterances again as a test set.
    A model trained for 90 s learns the utterances it saw (WER about 20 % on them) and writes mostly wrong words
    on the unseen test sets. Tests must not modify it."""
    from ebranchformer_ru import training

    tmp = tmp_path_factory.mktemp("recogniser")
    data = tmp / "data"
    lines = (CORPUS / "train_opus" / "manifest.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:SEEN]
    for folder in (data / "train_opus", data / "test_opus" / "seen"):
        folder.mkdir(parents=True)
        (folder / "manifest.jsonl").write_text("".join(lines), encoding="utf-8")
        for domain in ("crowd", "farfield"):  # the manifest's audio paths: <domain>/<file>
            (folder / domain).symlink_to(CORPUS / "train_opus" / domain)
    for name in ("crowd", "farfield", "heldout_voice"):
        (data / "test_opus" / name).symlink_to(CORPUS / "test_opus" / name)
    # no dropout, a constant rate: memorising quickly is the point here
    options = ["--preset", "overfit", "--data_dir", str(data), "--train_subset_seconds", "0"]
    options += ["--config_overrides", "num_hidden_layers=2,dropout=0.0", "--max_steps", "200"]
    options += ["--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--warmup_steps", "30"]
    options += ["--do_eval", "false", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "20"]
    options += ["--dataloader_num_workers", "0", "--disable_tqdm", "true", "--dataset_cache_dir", str(tmp / "cache")]
    training.run([*options, "--output_dir", str(tmp / "model")])
    return tmp / "model", data


@pytest.fixture
def foreign_model_folder(tmp_path):
    """A folder whose model type needs its own code, and whose code would leave a file behind if it ran."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mystery",
                "auto_map": {"AutoConfig": "mystery.MysteryConfig", "AutoModelForCTC": "mystery.MysteryForCTC"},
            }
        )
    )
    (folder / "mystery.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return folder, marker


# ---- language models (fixtures of the language-model tests)


@pytest.fixture(scope="session")
def corpus_lm(tmp_path_factory):
    """A trigram model (NGramLanguageModel) of the embedded corpus's train sentences."""
    from lm_inputs import train_sentences

    from modeling_ebranchformer.ngram import NGramLanguageModel, build_arpa

    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    path.write_text(build_arpa(train_sentences(), 3), encoding="utf-8")
    return NGramLanguageModel.from_file(path)


@pytest.fixture(scope="session")
def lm_folder(tmp_path_factory, tiny_config_values, speech_like):
    """(the model, its folder with the language model build_lm.py makes, a copy of the folder without it): a
    tiny model whose transcripts have many words. Tests must not modify them."""
    import shutil

    import torch
    from lm_inputs import build_lm

    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    model = EBranchformerForCTC(EBranchformerConfig(**tiny_config_values)).eval()
    processor = EBranchformerProcessor()
    one_channel_head(model, processor, speech_like(3.0), letter=3, others=-4.0)  # "в" words, candidates for the beam
    folder = tmp_path_factory.mktemp("model") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    plain = folder.with_name("plain")
    shutil.copytree(folder, plain)
    build_lm([str(folder)])
    return model, folder, plain
