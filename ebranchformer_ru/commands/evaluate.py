"""WER and CER of a model folder on the test sets of a Golos-layout folder, greedy and with its language model.

    ebranchformer-evaluate outputs/mini                                   # every test set of the embedded corpus
    ebranchformer-evaluate outputs/mini --data_dir /data/golos --sets crowd,farfield --output_dir eval/golos
    ebranchformer-evaluate outputs/mini --decoder greedy                  # greedy only, even with a language model
    ebranchformer-evaluate outputs/mini --update_model_card               # the figures into MODEL/README.md
    torchrun --nproc_per_node 8 evaluate_ctc.py outputs/mini --device cuda

Writes to --output_dir (default MODEL/eval): `results.md` and `results.json` (one row per test set) and
`utterances_<set>.jsonl` (id, reference, hypothesis and the word errors of every utterance). Every test set is
loaded and checked before anything is written, and the files of one evaluation are written together.

When the folder holds a language model (ebranchformer-build-lm), every set is decoded twice from the same
logits, greedily and by beam search with the LM, and the results have both: `WER`/`CER` (greedy) and
`LM WER`/`LM CER`, the LM hypothesis of every utterance, and the decoding settings (--beam_width, --alpha,
--beta override the folder's attrs.json). --update_model_card writes both figures into the folder's README.md.

Under `torchrun` or `accelerate launch` every test set is split between the processes by duration, each decodes
its share (with --device cuda on the GPU numbered LOCAL_RANK; --threads: this machine's cores divided between
the processes unless given), and rank 0 gathers the hypotheses and writes the same files one process writes.
The processes first agree that they were started on one evaluation (model, decoding, data, sets, samples);
else all refuse, naming what differs.
"""

import logging
import sys

from ebranchformer_ru.errors import UsageError
from ebranchformer_ru.evaluation import evaluate_model
from ebranchformer_ru.golos import EMBEDDED_CORPUS

from . import cli

DATA_DIR_HELP = (
    "Golos-layout folder holding test_opus/<set>/manifest.jsonl (crowd, farfield, and any other set) "
    "(NeMo manifests: one JSON object per line with audio_filepath, text, duration); "
    "default: the embedded corpus"
)
LM_OPTIONS = ("beam_width", "alpha", "beta", "best_alignment")


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a model folder (or a Hub model id)")
    parser.add_argument("--data_dir", default=str(EMBEDDED_CORPUS), help=DATA_DIR_HELP)
    cli.add_sets(parser, None, "; default: all of them, e.g. crowd,farfield,heldout_voice for the embedded corpus")
    parser.add_argument("--output_dir", help="where the results go; default: MODEL/eval")
    parser.add_argument("--batch_size", type=cli.positive_int, default=16, help="utterances per forward pass")
    parser.add_argument("--max_samples", type=cli.positive_int, help="evaluate on the first N utterances of each set")
    cli.add_device(parser)
    cli.add_threads(parser)
    cli.add_dtype(parser)
    cli.add_torch_compile(parser)
    cli.add_switch(parser, "itn", "also write each hypothesis with numbers as digits (the itn extra); WER stays spoken")
    parser.add_argument("--itn_cache_dir", default=None, help="--itn: where its compiled grammars are kept")
    cli.add_trust_remote_code(parser)
    cli.add_decoder(parser, None, ": LM figures where the folder has a language model; greedy figures always")
    parser.add_argument("--beam_width", type=cli.positive_int, help="beam width of LM decoding (default 32)")
    parser.add_argument("--alpha", type=float, help="LM weight (default: the folder's attrs.json)")
    parser.add_argument("--beta", type=float, help="word insertion bonus (default: the folder's attrs.json)")
    cli.add_switch(
        parser,
        "best_alignment",
        "score a text by its best CTC alignment instead of the sum of "
        "all (Viterbi); with --alpha 0 --beta 0 this reproduces greedy "
        "decoding",
    )
    cli.add_switch(parser, "update_model_card", "write the greedy (and LM) figures into the model folder's README.md")
    return parser


def evaluate(args):
    """The rows of `evaluate_model` (one per test set)."""
    given = [f"--{name}" for name in LM_OPTIONS if getattr(args, name) not in (None, False)]
    if args.decoder == "greedy" and given:
        raise UsageError(
            f"--decoder greedy decodes without the language model, and {', '.join(given)} would be "
            "ignored: leave them out, or drop --decoder greedy"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    lm_options = {
        "beam_width": args.beam_width,
        "alpha": args.alpha,
        "beta": args.beta,
        "sum_alignments": False if args.best_alignment else None,
    }
    return evaluate_model(
        args.model,
        args.data_dir,
        args.sets,
        args.output_dir,
        args.batch_size,
        args.max_samples,
        args.trust_remote_code,
        args.decoder,
        lm_options,
        args.update_model_card,
        args.device,
        args.threads,
        dtype=args.dtype,
        torch_compile=args.torch_compile,
        itn=args.itn,
        itn_cache_dir=args.itn_cache_dir,
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), evaluate, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
