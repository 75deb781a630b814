import subprocess
import sys

import pytest
from project import ROOT

from ebranchformer_ru.summary import parameter_counts
from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC


def test_counts_of_the_default_model():
    counts = parameter_counts(EBranchformerForCTC(EBranchformerConfig()))
    assert counts["encoder_trainable"] == 9_978_112
    assert counts["ctc_head"] == 8_738
    assert counts["total_trainable"] == 9_986_850
    assert counts["sinusoidal_table"] == 5000 * 256
    assert counts["course_convention_total"] == 11_266_850


def test_counts_follow_the_configuration():
    small = parameter_counts(EBranchformerForCTC(EBranchformerConfig(num_hidden_layers=7)))
    full = parameter_counts(EBranchformerForCTC(EBranchformerConfig()))
    per_layer = full["encoder_trainable"] - small["encoder_trainable"]
    # One layer: 2 FFNs, attention, cgMLP, merge and 5 LayerNorms, from the formulas in REFERENCE.md.
    ffn = 2 * (256 * 512 + 512 + 512 * 256 + 256)
    attention = 256 * 768 + 768 + 256 * 256 + 256
    cgmlp = 256 * 768 + 768 + 2 * 384 + 384 * 7 + 384 + 384 * 256 + 256
    merge = 512 * 31 + 512 + 512 * 256 + 256
    assert per_layer == ffn + attention + cgmlp + merge + 5 * 2 * 256


@pytest.mark.slow
def test_command_prints_the_figures():
    out = subprocess.run(
        [sys.executable, "-m", "ebranchformer_ru.summary"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    for figure in ("9,978,112", "8,738", "9,986,850", "11,266,850"):
        assert figure in out
