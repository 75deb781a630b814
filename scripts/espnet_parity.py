"""How closely does our `EBranchformerLayer` compute what ESPnet's `EBranchformerEncoderLayer` computes
(espnet2/asr/encoder/e_branchformer_encoder.py, the paper authors' code)?

One ESPnet layer is built at the course sizes taken from `EBranchformerConfig()` (width 256, 4 heads, cgMLP
768 with CSGU kernel 7, macaron FFNs 512 with Swish, merge kernel 31): `MultiHeadedAttention` (plain, no flash
attention), `ConvolutionalGatingMLP` (no linear after the conv, identity gate activation) and two
`PositionwiseFeedForward`, with ESPnet's own initialisation. Its weights are copied into our layer through
an explicit name map (our `qkv_proj` is the concatenation of ESPnet's `linear_q`, `linear_k`, `linear_v`;
every tensor on both sides is used exactly once, shapes checked). Both run in eval mode (no dropout), in
float32 on CPU, on the same unpadded inputs, and the script prints the max |difference| of the outputs for
our `layer_norm_eps=1e-12` (ESPnet hard-codes that eps in its LayerNorms) and for our default 1e-5:

- standard normal inputs, batches of 3 utterances of 100 and of 300 encoder steps;
- real speech: three groups of three Golos test utterances (ebranchformer_ru/golos/golos_mini) concatenated, log-mel features
  from our feature extractor, through the subsampling and positions of a freshly initialised (seed 0)
  EBranchformerModel, trimmed to the shortest group (one unpadded batch of 3, about 260 steps).

    pip install --no-deps espnet typeguard   # --no-deps keeps your torch
    python scripts/espnet_parity.py [--threads 1]

About 10 s on one CPU thread, nearly all of it imports. Against ESPnet 202511 (torch 2.13.0, CPU) one layer
agrees within about 1e-6 at eps 1e-12 and 3e-5 at eps 1e-5: the eps alone accounts for the difference.
"""

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from ebranchformer_ru.audio import read_audio
from modeling_ebranchformer import EBranchformerConfig, EBranchformerFeatureExtractor
from modeling_ebranchformer.modeling import EBranchformerLayer, EBranchformerModel

ROOT = Path(__file__).resolve().parents[1]

ESPNET_HINT = "pip install --no-deps espnet typeguard"
CROWD_TEST = ROOT / "ebranchformer_ru" / "golos" / "golos_mini" / "test_opus" / "crowd" / "files"

# Our parameter -> the ESPnet parameters it is made of (more than one: concatenated along dim 0).
# ESPnet's macaron FFN (`feed_forward_macaron`, `norm_ff_macaron`) is the first one, our ffn1.
PREFIX_MAP = {
    "norm_ffn1": ["norm_ff_macaron"],
    "ffn1.linear1": ["feed_forward_macaron.w_1"],
    "ffn1.linear2": ["feed_forward_macaron.w_2"],
    "norm_mha": ["norm_mha"],
    "self_attn.qkv_proj": ["attn.linear_q", "attn.linear_k", "attn.linear_v"],
    "self_attn.out_proj": ["attn.linear_out"],
    "norm_mlp": ["norm_mlp"],
    "cgmlp.channel_proj1": ["cgmlp.channel_proj1.0"],  # ESPnet: Sequential(Linear, GELU)
    "cgmlp.csgu.norm": ["cgmlp.csgu.norm"],
    "cgmlp.csgu.conv": ["cgmlp.csgu.conv"],
    "cgmlp.channel_proj2": ["cgmlp.channel_proj2"],
    "merge.depthwise_conv": ["depthwise_conv_fusion"],
    "merge.proj": ["merge_proj"],
    "norm_ffn2": ["norm_ff"],
    "ffn2.linear1": ["feed_forward.w_1"],
    "ffn2.linear2": ["feed_forward.w_2"],
    "norm_final": ["norm_final"],
}


def import_espnet():
    try:
        import espnet
        from espnet2.asr.encoder import e_branchformer_encoder
    except ImportError as error:
        sys.exit(
            f"ESPnet is not installed ({error}). Install it with:\n    {ESPNET_HINT}\n"
            "(--no-deps keeps your torch; add a small pure-Python package if its import names one)"
        )
    return espnet, e_branchformer_encoder


def build_espnet_layer(config, module):
    from espnet.nets.pytorch_backend.conformer.swish import Swish
    from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
    from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import PositionwiseFeedForward
    from espnet2.asr.layers.cgmlp import ConvolutionalGatingMLP

    size = config.hidden_size

    def ffn():
        return PositionwiseFeedForward(size, config.ffn_intermediate_size, config.dropout, Swish())

    # As EBranchformerEncoder(attention_layer_type="selfattn", use_ffn=True, macaron_ffn=True, ...) builds it.
    return module.EBranchformerEncoderLayer(
        size,
        MultiHeadedAttention(config.num_attention_heads, size, config.attention_dropout, use_flash_attn=False),
        ConvolutionalGatingMLP(
            size,
            config.cgmlp_intermediate_size,
            config.cgmlp_conv_kernel_size,
            config.dropout,
            use_linear_after_conv=False,
            gate_activation="identity",
        ),
        ffn(),  # feed_forward: the second FFN
        ffn(),  # feed_forward_macaron: the first FFN
        config.dropout,
        merge_conv_kernel=config.merge_conv_kernel_size,
    )


def mapped_state_dict(ours: dict, theirs: dict) -> dict:
    """Our state dict made of ESPnet's tensors; raises unless every tensor on both sides is used exactly once."""
    result, used = {}, []
    for name, target in ours.items():
        prefix, _, leaf = name.rpartition(".")
        if prefix not in PREFIX_MAP:
            raise KeyError(f"our {name} has no ESPnet counterpart in PREFIX_MAP")
        sources = [f"{source}.{leaf}" for source in PREFIX_MAP[prefix]]
        missing = [source for source in sources if source not in theirs]
        if missing:
            raise KeyError(f"our {name}: ESPnet has no {missing}")
        tensor = torch.cat([theirs[source] for source in sources]) if len(sources) > 1 else theirs[sources[0]]
        if tensor.shape != target.shape:
            raise ValueError(f"our {name} {tuple(target.shape)} <- {sources} {tuple(tensor.shape)}")
        result[name] = tensor.clone()
        used += sources
    repeated = sorted({source for source in used if used.count(source) > 1})
    unused = sorted(set(theirs) - set(used))
    if repeated or unused or len(used) != len(theirs):
        raise ValueError(f"ESPnet tensors used twice: {repeated}; never used: {unused}")
    return result


def random_inputs(config, steps):
    generator = torch.Generator().manual_seed(steps)
    return torch.randn(3, steps, config.hidden_size, generator=generator)


def speech_inputs(config):
    """Three groups of three Golos utterances, each group concatenated, through a fresh (seed 0) model's
    subsampling and sinusoidal positions: the first layer's input. Trimmed to the shortest: no padding."""
    files = sorted(CROWD_TEST.glob("*.opus"))[:9]
    if len(files) < 9:
        return None
    waves = [torch.cat([torch.from_numpy(read_audio(f)) for f in files[i : i + 3]]).numpy() for i in (0, 3, 6)]
    features = [
        EBranchformerFeatureExtractor()([w], sampling_rate=16000, return_tensors="pt").input_features for w in waves
    ]
    torch.manual_seed(0)
    model = EBranchformerModel(config).eval()
    with torch.inference_mode():
        hidden = [model.positions(model.subsampling(f)) for f in features]
    steps = min(h.shape[1] for h in hidden)
    return torch.cat([h[:, :steps] for h in hidden])


def rms(tensor: torch.Tensor) -> float:
    return tensor.pow(2).mean().sqrt().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    espnet, module = import_espnet()

    defaults = EBranchformerConfig()
    torch.manual_seed(0)
    espnet_layer = build_espnet_layer(defaults, module).eval()
    state = mapped_state_dict(EBranchformerLayer(defaults).state_dict(), espnet_layer.state_dict())
    ours = {}
    for eps in (1e-12, defaults.layer_norm_eps):
        config = EBranchformerConfig(layer_norm_eps=eps, attn_implementation="sdpa")
        ours[eps] = EBranchformerLayer(config).eval()
        ours[eps].load_state_dict(state, strict=True)
        assert all(m.eps == eps for m in ours[eps].modules() if isinstance(m, torch.nn.LayerNorm))
    assert all(m.eps == 1e-12 for m in espnet_layer.modules() if isinstance(m, torch.nn.LayerNorm))

    inputs = {f"standard normal, 3 x {steps} steps": random_inputs(defaults, steps) for steps in (100, 300)}
    speech = speech_inputs(defaults)
    if speech is not None:
        inputs[f"Golos speech, 3 x {speech.shape[1]} steps"] = speech
    else:
        print(f"(no Golos test files under {CROWD_TEST}: speech input skipped)")

    print(
        f"{datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
        f"espnet {espnet.__version__}  Python {platform.python_version()}  {args.threads} thread(s)"
    )
    print(
        f"ESPnet EBranchformerEncoderLayer vs our EBranchformerLayer ({sum(state[k].numel() for k in state):,} "
        f"parameters, {len(state)} tensors from {len(espnet_layer.state_dict())} ESPnet tensors), eval, float32"
    )
    print(f"{'input':34} {'input rms':>9} {'output rms':>10} {'max|diff| eps 1e-12':>20} {'eps 1e-5':>10}")
    with torch.inference_mode():
        for name, x in inputs.items():
            mask = torch.ones(x.shape[0], 1, x.shape[1], dtype=torch.bool)  # ESPnet's (B, 1, T), nothing padded
            reference, _ = espnet_layer(x, mask)
            diffs = [(ours[eps](x)[0] - reference).abs().max().item() for eps in ours]
            print(f"{name:34} {rms(x):9.3f} {rms(reference):10.3f} {diffs[0]:20.2e} {diffs[1]:10.2e}")
    print(f"run time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
