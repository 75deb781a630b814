"""Convert a course PyTorch Lightning checkpoint (E-Branchformer or QuartzNet) to a model folder.

    ebranchformer-convert q5x5_ru_stride_4_crowd_epoch_4_step_9794.ckpt --output_dir models/quartznet5x5
    ebranchformer-convert my_ebranchformer.ckpt --output_dir models/ebranchformer --overwrite
    ebranchformer-convert model.ckpt --output_dir models/mine --vocab vocab.json --push_to_hub --hub_model_id user/mine

The folder holds model.safetensors, config.json, the processor files, the code for `trust_remote_code=True` and a
model card naming the source checkpoint, its epoch and step; it is reloaded and checked against the converted
weights before anything is published.

- The architecture is detected from the keys (a given --arch must agree); sizes come from tensor shapes, and
  what shapes cannot tell from options whose defaults are the course's (an option of the other architecture is
  refused). Every source tensor must be used and every parameter filled, or nothing is written.
- The CTC head's outputs are the course's 34 symbols unless --vocab gives the vocabulary it was trained with.
- The checkpoint is read with `torch.load(weights_only=True)`, which runs no code; --inert_objects replaces the
  objects it refuses by inert placeholders, --unsafe_unpickle unpickles fully (only for files you trust).
- The folder appears complete or not at all; an existing one is replaced only with --overwrite, and only if it
  holds nothing but model files.
"""

from ebranchformer_ru import conversion, publishing
from ebranchformer_ru.summary import format_counts

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("checkpoint", help="a Lightning .ckpt or a saved state dict")
    parser.add_argument("--output_dir", required=True, help="the model folder to write")
    parser.add_argument(
        "--arch",
        choices=["auto", "ebranchformer", "quartznet"],
        default="auto",
        help="default: from the keys; a given one must be what the keys show",
    )
    cli.add_overwrite(parser, "an existing output folder that holds nothing but model files")
    loading = parser.add_mutually_exclusive_group()
    cli.add_switch(
        loading,
        "inert_objects",
        "load with non-tensor objects replaced by inert placeholders (runs no code from the file)",
    )
    cli.add_switch(
        loading, "unsafe_unpickle", "unpickle fully: runs code from the file, only for checkpoints you trust"
    )
    parser.add_argument(
        "--vocab",
        metavar="VOCAB.json",
        help="the vocabulary the CTC head was trained with, as a vocab.json (symbol -> output index, "
        '"|" the space, "<pad>" the blank); default: the course\'s 34 symbols',
    )
    parser.add_argument("--num_mel_bins", type=int, default=64)
    parser.add_argument("--num_attention_heads", type=int, help="E-Branchformer (not in the shapes); default: 4")
    parser.add_argument(
        "--positions",
        choices=["auto", "batch-quirk", "per-frame"],
        help="E-Branchformer table: auto (default) = batch-quirk for a (max_len, 1, d) table",
    )
    parser.add_argument("--block_strides", type=int, nargs="+", help="QuartzNet; default: the course 5x5")
    parser.add_argument("--block_dilations", type=int, nargs="+", help="QuartzNet; default: the course 5x5")
    parser.add_argument("--batch_norm_eps", type=float, help="QuartzNet; default: 1e-5 (PyTorch's)")
    cli.add_publishing(parser, "the converted folder (after its check)")
    return parser


def convert(args):
    """The converted model (eval mode) and `conversion.convert`'s report, once the written folder passed its check."""
    model, report = conversion.convert(
        args.checkpoint,
        args.output_dir,
        args.arch,
        args.overwrite,
        args.inert_objects,
        args.unsafe_unpickle,
        args.num_mel_bins,
        args.num_attention_heads,
        args.positions,
        args.block_strides,
        args.block_dilations,
        args.batch_norm_eps,
        args.vocab,
    )
    print(
        f"{args.checkpoint} -> {args.output_dir}: {report['architecture']}, epoch {report['epoch']}, "
        f"step {report['global_step']}, {report['tensors']} tensors"
    )
    print(format_counts(report["counts"]))
    conversion.check_reload(model, args.output_dir)
    publishing.publish_from_args(args.output_dir, args)
    return model, report


def main(argv=None) -> int:
    return cli.run(build_parser(), convert, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
