"""Does padding change results? The default model (random weights, seed 0) transcribes real utterances of
the embedded corpus in one padded batch and each alone; prints the max |difference| of their logits.

    python scripts/padding_check.py [--utterances 8] [--attn_implementation sdpa|eager]

tests/test_modeling.py asserts the same property (<= 1e-4) on tiny configurations; this prints the figure
for the full-size model that docs/benchmarks.md quotes.
"""

import argparse

import torch

from ebranchformer_ru import golos
from modeling_ebranchformer import EBranchformerConfig, EBranchformerFeatureExtractor, EBranchformerForCTC


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"])
    args = parser.parse_args(argv)

    test = golos.decode_with_soundfile(golos.load_golos(name="crowd", split="test", decode="none"))
    waves = [test[i]["audio"]["array"] for i in range(args.utterances)]
    torch.manual_seed(0)
    model = EBranchformerForCTC(EBranchformerConfig(attn_implementation=args.attn_implementation)).eval()
    batch = EBranchformerFeatureExtractor()(waves, sampling_rate=16000, padding=True, return_tensors="pt")

    with torch.inference_mode():
        batched = model(**batch).logits
        lengths = model.get_output_lengths(batch.attention_mask.sum(-1))
        differences = []
        for i, n in enumerate(batch.attention_mask.sum(-1).tolist()):
            alone = model(batch.input_features[i : i + 1, :n]).logits[0]
            differences.append((batched[i, : lengths[i]] - alone).abs().max().item())
    seconds = [len(w) / 16000 for w in waves]
    print(
        f"{len(waves)} utterances of {min(seconds):.1f}-{max(seconds):.1f} s in one padded batch vs alone, "
        f"{args.attn_implementation} attention: max |logit difference| {max(differences):.1e}"
    )


if __name__ == "__main__":
    main()
