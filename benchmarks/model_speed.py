"""Training and inference throughput (audio seconds per wall second) and memory of EBranchformerForCTC
against peers of the same width, depth and about the same size, measured in the same run:

- Wav2Vec2ConformerForCTC (transformers): raw-waveform CNN front end, relative-position Conformer;
- ParakeetForCTC (transformers): FastConformer, 8x convolutional subsampling of log-mel features (12.5
  frames per second, half of ours), and the same with 4x subsampling ("parakeet-4x", our frame rate);
- ESPnet's EBranchformerEncoder (the paper authors' code) with a linear CTC head, fed the same stacked
  features as ours; optional: `pip install --no-deps espnet typeguard` (--no-deps keeps your torch).

    python benchmarks/model_speed.py                      # 1x10 s, 16x8 s, 64x4 s on 2 threads
    python benchmarks/model_speed.py --shapes 16x8 --threads 2 --repeats 9
    python benchmarks/model_speed.py --models ebranchformer,quartznet   # this package's two models only

A training step is forward + CTC loss + backward + Adam step, in train mode (dropout on; layer drop and
SpecAugment off for every model). Inference is eval mode under torch.inference_mode. Feature extraction is
not included (Wav2Vec2Conformer's CNN front end is: it is part of that model). Each figure comes from a
fresh process, so "memory" is the growth of resident memory over the step (activations, gradients,
optimizer state), not the shared baseline of Python and torch.
"""

import argparse
import json

from common import machine, model_speed, peak_rss_mib, rss_mib, table, timed

PEERS = ["ebranchformer", "espnet-ebranchformer", "parakeet", "parakeet-4x", "wav2vec2-conformer"]
ESPNET_HINT = "pip install --no-deps espnet typeguard"


def build(name):
    """(model, make_inputs(batch, seconds, labels) -> kwargs, loss(model, kwargs), logits(model, kwargs))."""
    import torch
    import torch.nn.functional as F

    def labels(batch, seconds):  # ~8 characters per second, no repeats: feasible for every model's frame rate
        n = int(8 * seconds)
        return (torch.arange(n).repeat(batch, 1) % 32 + 1).long()

    def features(batch, seconds):  # 64 log-mel bins at 100 frames per second, as our feature extractor gives
        frames = 1 + int(16000 * seconds) // 160
        return {
            "input_features": torch.randn(batch, frames, 64),
            "attention_mask": torch.ones(batch, frames, dtype=torch.long),
        }

    if name == "ebranchformer":
        from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC

        model = EBranchformerForCTC(EBranchformerConfig())
        return model, features, lambda m, x, y: m(**x, labels=y).loss, lambda m, x: m(**x).logits, labels

    if (
        name == "quartznet"
    ):  # the course's QuartzNet 5x5 (not a peer of the same size: --models ebranchformer,quartznet)
        from modeling_ebranchformer import QuartzNetConfig, QuartzNetForCTC

        model = QuartzNetForCTC(QuartzNetConfig())
        return model, features, lambda m, x, y: m(**x, labels=y).loss, lambda m, x: m(**x).logits, labels

    if name in ("parakeet", "parakeet-4x"):
        from transformers import ParakeetCTCConfig, ParakeetEncoderConfig, ParakeetForCTC

        # "parakeet-4x": subsampling 4 instead of 8, i.e. our frame rate (25 per second), the same work per frame.
        encoder = ParakeetEncoderConfig(
            hidden_size=256,
            num_hidden_layers=8,
            num_attention_heads=4,
            intermediate_size=640,
            num_mel_bins=64,
            subsampling_conv_channels=256,
            subsampling_factor=4 if name == "parakeet-4x" else 8,
            layerdrop=0.0,
        )
        model = ParakeetForCTC(ParakeetCTCConfig(vocab_size=34, pad_token_id=33, encoder_config=encoder))
        return model, features, lambda m, x, y: m(**x, labels=y).loss, lambda m, x: m(**x).logits, labels

    if name == "wav2vec2-conformer":
        from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerForCTC

        config = Wav2Vec2ConformerConfig(
            vocab_size=34,
            pad_token_id=33,
            hidden_size=256,
            num_hidden_layers=8,
            num_attention_heads=4,
            intermediate_size=512,
            conv_dim=(256,) * 7,
            layerdrop=0.0,
            apply_spec_augment=False,
        )
        model = Wav2Vec2ConformerForCTC(config)

        def inputs(batch, seconds):
            return {"input_values": torch.randn(batch, int(16000 * seconds))}

        return model, inputs, lambda m, x, y: m(**x, labels=y).loss, lambda m, x: m(**x).logits, labels

    if name == "espnet-ebranchformer":
        from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder

        class ESPnetCTC(torch.nn.Module):
            def __init__(self):
                super().__init__()
                # The course configuration in ESPnet's terms; "linear" input layer over 4 stacked frames =
                # our stacking subsampling (plus ESPnet's LayerNorm and ReLU).
                self.encoder = EBranchformerEncoder(
                    input_size=256,
                    output_size=256,
                    attention_heads=4,
                    attention_layer_type="selfattn",
                    pos_enc_layer_type="abs_pos",
                    cgmlp_linear_units=768,
                    cgmlp_conv_kernel=7,
                    use_linear_after_conv=False,
                    gate_activation="identity",
                    num_blocks=8,
                    dropout_rate=0.1,
                    positional_dropout_rate=0.1,
                    attention_dropout_rate=0.0,
                    input_layer="linear",
                    linear_units=512,
                    use_ffn=True,
                    macaron_ffn=True,
                    merge_conv_kernel=31,
                    layer_drop_rate=0.0,
                )
                self.head = torch.nn.Linear(256, 34)

            def forward(self, features, lengths):
                hidden, lengths, _ = self.encoder(features, lengths)
                return self.head(hidden), lengths

        def inputs(batch, seconds):
            steps = -(-(1 + int(16000 * seconds) // 160) // 4)
            return {"features": torch.randn(batch, steps, 256), "lengths": torch.full((batch,), steps)}

        def loss(m, x, y):
            logits, lengths = m(**x)
            log_probs = logits.log_softmax(-1).transpose(0, 1)
            return F.ctc_loss(log_probs, y, lengths, torch.full((y.shape[0],), y.shape[1]), blank=33)

        return ESPnetCTC(), inputs, loss, lambda m, x: m(**x)[0], labels

    raise ValueError(name)


def worker(name, phase, batch, seconds, threads, repeats):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, make_inputs, loss_fn, logits_fn, make_labels = build(name)
    inputs, labels = make_inputs(batch, seconds), make_labels(batch, seconds)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = rss_mib()
    if phase == "inference":
        model.eval()

        def step():
            with torch.inference_mode():
                logits_fn(model, inputs)

    else:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, inputs, labels).backward()
            optimizer.step()

    seconds_per_step = timed(step, repeats)
    print(
        json.dumps(
            {
                "parameters": parameters,
                "seconds": seconds_per_step,
                "audio_per_second": batch * seconds / seconds_per_step,
                "memory_mib": peak_rss_mib() - before,
            }
        )
    )


def espnet_available():
    try:
        import espnet2.asr.encoder.e_branchformer_encoder  # noqa: F401

        return True
    except Exception:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1x10,16x8,64x4", help="BATCHxSECONDS, comma-separated")
    parser.add_argument("--models", default=",".join(PEERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per figure (median), after one warm-up")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, phase, batch, seconds = args.worker[0], args.worker[1], int(args.worker[2]), float(args.worker[3])
        return worker(name, phase, batch, seconds, args.threads, args.repeats)

    import torch

    torch.set_num_threads(args.threads)
    print(machine())
    models = args.models.split(",")
    if "espnet-ebranchformer" in models and not espnet_available():
        print(f"ESPnet not installed: skipping espnet-ebranchformer ({ESPNET_HINT})")
        models.remove("espnet-ebranchformer")
    for shape in args.shapes.split(","):
        batch, seconds = int(shape.split("x")[0]), float(shape.split("x")[1])
        results = {
            m: {
                phase: model_speed(m, phase, batch, seconds, args.threads, args.repeats)
                for phase in ("inference", "training")
            }
            for m in models
        }
        ours = results["ebranchformer"]
        rows = []
        for m, r in results.items():
            rows.append(
                [
                    m,
                    f"{r['training']['parameters'] / 1e6:.2f} M",
                    f"{r['inference']['audio_per_second']:.0f}",
                    f"{r['training']['audio_per_second']:.1f}",
                    f"{ours['inference']['audio_per_second'] / r['inference']['audio_per_second']:.2f}",
                    f"{ours['training']['audio_per_second'] / r['training']['audio_per_second']:.2f}",
                    f"{r['inference']['memory_mib']:.0f}",
                    f"{r['training']['memory_mib']:.0f}",
                ]
            )
        print(
            f"\nbatch {batch} x {seconds:g} s, {args.threads} threads (audio seconds per wall second; "
            "ratio = ours / peer, > 1: ours faster; memory = growth over the step, MiB)"
        )
        print(
            table(
                [
                    "model",
                    "params",
                    "inference",
                    "training",
                    "ours/peer inf.",
                    "ours/peer train",
                    "inf. MiB",
                    "train MiB",
                ],
                rows,
            )
        )


if __name__ == "__main__":
    main()
