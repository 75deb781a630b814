"""Choose a model folder's LM weight (alpha) and word bonus (beta) on held-out speech; write them to attrs.json.

    ebranchformer-tune-lm outputs/mini                                   # even-numbered crowd and farfield utterances
    ebranchformer-tune-lm outputs/mini --alphas 0,0.5,1,2 --betas 0,2,4 --dry_run
    ebranchformer-tune-lm outputs/course --data_dir /data/golos_dev --sets dev --subset all --device cuda

The model's logits are computed once; every (alpha, beta) of the grid decodes them with beam search and the pair
with the lowest WER over all held-out words wins (ties: the smaller alpha, then the smaller beta), and is written
to MODEL/language_model/attrs.json (atomically; --dry_run only prints).

Held-out set: Golos has no development set, so by default the even-numbered utterances (0, 2, 4, ...) of each
test set are used for tuning and the odd-numbered ones stay unseen; greedy and LM WER are printed for both
halves, so that the figure on the unseen half shows whether the choice generalises. --subset all tunes on whole
test sets (then report figures from elsewhere); --data_dir points at any Golos-layout folder (e.g. one holding a
dev set laid out as test_opus/dev/manifest.jsonl).
"""

import logging
import sys

from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.lm_tuning import DEFAULT_ALPHAS, DEFAULT_BETAS, parse_grid, tune
from modeling_ebranchformer.beam_search import ALPHA_RANGE, BETA_RANGE, DEFAULT_BEAM_WIDTH

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a model folder with a language model (ebranchformer-build-lm)")
    parser.add_argument("--data_dir", default=str(EMBEDDED_CORPUS), help="Golos-layout folder (default: embedded)")
    cli.add_sets(parser, "crowd,farfield", "; the ones tuned on (default crowd,farfield)")
    parser.add_argument(
        "--subset",
        choices=("even", "odd", "all"),
        default="even",
        help="which utterances of each set to tune on (default: even-numbered; the rest stay unseen)",
    )
    parser.add_argument("--alphas", default=DEFAULT_ALPHAS, help=f"grid of LM weights (default {DEFAULT_ALPHAS})")
    parser.add_argument("--betas", default=DEFAULT_BETAS, help=f"grid of word bonuses (default {DEFAULT_BETAS})")
    parser.add_argument(
        "--beam_width",
        type=cli.positive_int,
        default=DEFAULT_BEAM_WIDTH,
        help=f"beam width while tuning (default {DEFAULT_BEAM_WIDTH})",
    )
    parser.add_argument("--batch_size", type=cli.positive_int, default=16, help="utterances per forward pass")
    parser.add_argument("--max_samples", type=cli.positive_int, help="use the first N utterances of each set")
    cli.add_device(parser)
    cli.add_threads(parser)
    cli.add_dtype(parser)
    cli.add_torch_compile(parser)
    cli.add_switch(parser, "dry_run", "print the choice, do not write attrs.json")
    cli.add_trust_remote_code(parser)
    return parser


def tune_lm(args):
    """The summary of `tune` (the chosen alpha and beta, and the WERs on both halves)."""
    alphas, betas = parse_grid(args.alphas, "alphas", ALPHA_RANGE), parse_grid(args.betas, "betas", BETA_RANGE)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    return tune(
        args.model,
        args.data_dir,
        args.sets,
        args.subset,
        alphas,
        betas,
        args.beam_width,
        args.batch_size,
        args.dry_run,
        args.trust_remote_code,
        args.max_samples,
        args.device,
        args.threads,
        args.dtype,
        args.torch_compile,
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), tune_lm, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
