"""Parameter counts of a model: `python -m ebranchformer_ru.summary [MODEL_FOLDER]`.

Without a folder it counts the default configuration (the course's `ebranchformer_ctc`).
"""

import argparse

from torch import nn


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Counts of the real modules. `course_convention` adds the sinusoidal table, which the course
    registered as a (frozen) nn.Parameter and so counted in `model.encoder.parameters()`."""
    encoder = model.base_model
    head = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(model.base_model_prefix))
    trainable_encoder = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    table = getattr(getattr(encoder, "positions", None), "table", None)
    counts = {
        "encoder_trainable": trainable_encoder,
        "ctc_head": head,
        "total_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if table is not None:
        counts["sinusoidal_table"] = table.numel()
        counts["course_convention_total"] = counts["total_trainable"] + table.numel()
    return counts


def format_counts(counts: dict[str, int]) -> str:
    labels = {
        "encoder_trainable": "encoder, trainable",
        "ctc_head": "CTC head",
        "total_trainable": "total, trainable",
        "sinusoidal_table": "sinusoidal table (a buffer here, not trained)",
        "course_convention_total": "whole model as the course counted it (table included)",
    }
    return "\n".join(f"{labels[key]:<56} {value:>12,}" for key, value in counts.items())


def model_summary(model: nn.Module) -> str:
    """A table of the model's top-level modules (and the encoder's children) with their parameter counts,
    followed by `format_counts`."""
    lines = [f"{'module':<40} {'type':<34} {'parameters':>12}"]
    for name, module in model.named_modules():
        depth = name.count(".")
        if not name or depth > 1 or (depth == 1 and not name.startswith(model.base_model_prefix)):
            continue
        count = sum(p.numel() for p in module.parameters())
        kind = type(module).__name__ + (f" x{len(module)}" if isinstance(module, nn.ModuleList) else "")
        lines.append(f"{name:<40} {kind:<34} {count:>12,}")
    return "\n".join(lines) + "\n" + format_counts(parameter_counts(model))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a from_pretrained folder; default: a fresh default model")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCTC

    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC

    model = AutoModelForCTC.from_pretrained(args.model) if args.model else EBranchformerForCTC(EBranchformerConfig())
    print(f"{type(model).__name__} ({args.model or 'default configuration'})")
    print(model_summary(model))


if __name__ == "__main__":
    main()
