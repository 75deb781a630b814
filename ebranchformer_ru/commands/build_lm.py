"""Add a word n-gram language model to a model folder, for beam-search decoding.

    ebranchformer-build-lm outputs/mini                            # 3-gram of the embedded corpus's train transcripts
    ebranchformer-build-lm outputs/mini --data_dir /data/golos     # of the train manifest of a Golos-layout folder
    ebranchformer-build-lm outputs/mini --text corpus.txt --text more.txt --order 4   # of text files, a sentence a line
    ebranchformer-build-lm outputs/mini --arpa golos_3gram.arpa    # an existing ARPA model (KenLM binary: needs kenlm)
    ebranchformer-build-lm outputs/mini --overwrite --push_to_hub --hub_model_id you/ebranchformer-ru-mini

Text is normalised exactly as the tokenizer normalises training text (lower case, ё -> е, whitespace collapsed;
punctuation removed). A text file line with characters outside the model's alphabet is an error naming the file
and line; manifest utterances with such characters are left out and counted, as training leaves them out. The
model is interpolated Kneser-Ney, written as ARPA.

The folder gets the layout of Transformers' `Wav2Vec2ProcessorWithLM`: `alphabet.json`,
`language_model/{lm.arpa, attrs.json (alpha, beta, ...), unigrams.txt}`, and a processor config naming
`EBranchformerProcessorWithLM`. The whole folder is replaced atomically; an existing language model is replaced
only with --overwrite. Then `AutoProcessor` gives the processor with the LM, `pipeline("automatic-speech-
recognition", model=MODEL)` decodes with it, and `ebranchformer-evaluate MODEL` reports greedy and LM figures.
Tune alpha and beta with `ebranchformer-tune-lm MODEL`.
"""

from ebranchformer_ru import publishing
from ebranchformer_ru.errors import UsageError
from ebranchformer_ru.lm_building import build
from modeling_ebranchformer.beam_search import DEFAULT_ALPHA, DEFAULT_BETA

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "the model folder the language model is added to")
    parser.add_argument(
        "--data_dir",
        help="Golos-layout folder whose train_opus/manifest.jsonl transcripts are "
        "used (default: the embedded corpus, unless --text is given)",
    )
    parser.add_argument("--text", action="append", default=[], help="a text file, one sentence a line (repeatable)")
    parser.add_argument("--order", type=int, default=None, help="n-gram order (default 3; an --arpa has its own)")
    parser.add_argument(
        "--arpa",
        help="use this ARPA file (.arpa or .arpa.gz; a KenLM binary if the kenlm module "
        "is installed) instead of building one",
    )
    parser.add_argument("--alpha", type=float, help=f"LM weight written to attrs.json (default {DEFAULT_ALPHA})")
    parser.add_argument("--beta", type=float, help=f"word insertion bonus (default {DEFAULT_BETA})")
    cli.add_overwrite(parser, "an existing language model")
    cli.add_trust_remote_code(parser)
    cli.add_publishing(parser, "the model folder with its language model (e.g. to the repo it came from)")
    return parser


def build_lm(args):
    """The summary of `build` (what was built); the folder is then published if asked."""
    if args.arpa and (args.text or args.data_dir or args.order is not None):
        raise UsageError(
            "--arpa replaces building (its order is the file's): give either --arpa or --data_dir/--text/--order"
        )
    order = 3 if args.order is None else args.order
    summary = build(
        args.model,
        args.data_dir,
        args.text,
        order,
        args.arpa,
        args.alpha,
        args.beta,
        args.overwrite,
        args.trust_remote_code,
    )
    publishing.publish_from_args(args.model, args)
    return summary


def main(argv=None) -> int:
    return cli.run(build_parser(), build_lm, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
