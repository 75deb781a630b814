"""Average a training run's last or best N checkpoints into one loadable model folder.

    ebranchformer-average outputs/course --last 5          # the 5 newest checkpoints
    ebranchformer-average outputs/course --best 5          # the 5 with the lowest logged eval WER
    ebranchformer-evaluate outputs/course/average-last-5

Every floating-point tensor becomes the mean of its values in the chosen checkpoints (float64, stored in the
checkpoints' dtype), as ESPnet's `ave_10best` and icefall's `--avg` do; see `ebranchformer_ru.averaging`. The
output folder appears complete or not at all; an existing one is replaced only with --overwrite.
"""

from pathlib import Path

from ebranchformer_ru import publishing
from ebranchformer_ru.averaging import average_checkpoints
from ebranchformer_ru.errors import Error, UsageError

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a training run's output folder (ebranchformer-train) holding checkpoint-STEP/ folders")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=cli.positive_int, metavar="N", help="average the N newest checkpoints")
    which.add_argument("--best", type=cli.positive_int, metavar="N", help="average the N with the lowest eval WER")
    parser.add_argument(
        "--metric",
        help="--best: the logged metric to rank by, e.g. eval_crowd_wer (default: the run's first eval_*_wer)",
    )
    parser.add_argument("--output_dir", help="default: MODEL/average-last-N or MODEL/average-best-N")
    cli.add_overwrite(parser, "an existing output folder")
    cli.add_publishing(parser, "the averaged folder")
    return parser


def average(args):
    if args.metric and not args.best:
        raise UsageError("--metric goes with --best")
    if not Path(args.model).is_dir():
        raise Error(f"run folder not found: {args.model} (a training run's --output_dir)")
    output_dir = average_checkpoints(args.model, args.last, args.best, args.metric, args.output_dir, args.overwrite)
    publishing.publish_from_args(output_dir, args)
    return output_dir


def main(argv=None) -> int:
    return cli.run(build_parser(), average, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
