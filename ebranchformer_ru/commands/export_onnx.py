"""Export a model folder (E-Branchformer or QuartzNet) to ONNX, checked against PyTorch, optionally with int8.

    ebranchformer-export-onnx outputs/mini --output_dir outputs/mini_onnx          # model.onnx, processor, check
    ebranchformer-export-onnx outputs/mini --output_dir outputs/mini_onnx --int8   # + model.int8.onnx and its WER
    ebranchformer-transcribe outputs/mini_onnx recordings/ --output out.jsonl      # ONNX Runtime, no torch

The output folder is self-contained (the model, config.json, the processor files, onnx_export.json) and is
written only after ONNX Runtime's log-probabilities agree with PyTorch's within --tolerance on real audio, each
utterance alone and all as one padded batch. --int8 adds a dynamically quantised model and reports WER/CER of
fp32 and int8 (ebranchformer-transcribe --quantized runs it). The folder appears complete or not at all; an
existing export is replaced only with --overwrite.
"""

from pathlib import Path

from ebranchformer_ru import onnx_export
from ebranchformer_ru.errors import Error, UsageError

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a model folder of this package (ebranchformer-train, -convert, -average)")
    parser.add_argument("--output_dir", required=True, help="the export folder to create")
    cli.add_switch(parser, "int8", "also write a dynamically quantised model.int8.onnx, and the WER of both")
    cli.add_overwrite(parser, "an existing export folder")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |log-prob difference| ONNX vs PyTorch")
    parser.add_argument("--check_audio", nargs="+", help="audio files for the check (default: 8 embedded test files)")
    parser.add_argument(
        "--wer_manifest",
        nargs="+",
        metavar="NAME=MANIFEST",
        help="test sets for the int8 WER report (default: the embedded crowd and farfield sets)",
    )
    cli.add_threads(parser)
    cli.add_trust_remote_code(parser)
    return parser


def export(args) -> dict:
    """The content of the export's onnx_export.json."""
    if not 0 < args.tolerance < 1:
        raise UsageError(
            f"--tolerance must be a positive number below 1 (log-probability difference), got {args.tolerance}"
        )
    if not Path(args.model).is_dir():
        raise Error(
            f"model folder not found: {args.model} (give a folder that ebranchformer-train, -convert or -average wrote)"
        )
    return onnx_export.export(
        args.model,
        args.output_dir,
        args.int8,
        args.overwrite,
        args.tolerance,
        args.check_audio,
        onnx_export.wer_sets_from(args.wer_manifest),
        args.threads,
        trust_remote_code=args.trust_remote_code,
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), export, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
