import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(TESTS)]
SHARED_EXAMPLE = ROOT.parent / "shared" / "golos_example"
CORPUS = ROOT / "data" / "golos_mini"


@pytest.fixture
def golos_example():
    """The real Golos utterance from ../shared (absent in a user's checkout: skip)."""
    wav = SHARED_EXAMPLE / "001ce26c07c20eaa0d666b824c6c6924.wav"
    if not wav.exists():
        pytest.skip("../shared/golos_example is absent")
    return wav


@pytest.fixture
def tiny_config():
    from modeling_ebranchformer import EBranchformerConfig

    return EBranchformerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        cgmlp_intermediate_size=48,
        ffn_intermediate_size=64,
        merge_conv_kernel_size=7,
        max_position_embeddings=2000,
    )


@pytest.fixture
def speech_like():
    """A deterministic speech-like signal: harmonics of a gliding pitch with a syllable envelope, plus noise."""

    def make(seconds=1.0, seed=0):
        rng = np.random.default_rng(seed)
        t = np.arange(int(16000 * seconds)) / 16000
        f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
        return (0.1 * voice * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)

    return make
