"""Choose the language model's alpha (LM weight) and beta (word bonus) on held-out speech; write them to attrs.json.

    python tune_lm.py MODEL_DIR [--data_dir DIR] [--sets crowd,farfield] [--subset even] [--beam_width 32]
                      [--alphas 0,0.25,0.5,...] [--betas -1,0,0.5,...] [--dry_run]

The model's logits are computed once; every (alpha, beta) of the grid decodes them with beam search and the
pair with the lowest WER over all held-out words wins (ties: the smaller alpha, then the smaller beta), and is
written to MODEL_DIR/language_model/attrs.json (atomically; --dry_run only prints).

Held-out set: Golos has no development set, so by default the even-numbered utterances (0, 2, 4, ...) of each
test set are used for tuning and the odd-numbered ones stay unseen; the script prints greedy and LM WER on
both halves, so that the figure on the unseen half shows whether the choice generalises. `--subset all`
tunes on whole test sets (then report figures from elsewhere), `--data_dir` points at any Golos-layout
folder (e.g. one holding a dev set laid out as test_opus/crowd/manifest.jsonl).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from ebranchformer_ru.golos import EMBEDDED_CORPUS
from modeling_ebranchformer.beam_search import (
    ALPHA_RANGE,
    ATTRS_FILE,
    BETA_RANGE,
    DEFAULT_BEAM_WIDTH,
    LM_DIR,
    check_range,
)
from modeling_ebranchformer.ngram import LanguageModelError

from .evaluation import decode_all, load_test_sets, set_log_probs
from .files import atomic_write_text
from .inference import InferenceError, LMDecoder, TorchBackend, Transcriber
from .metrics import wer as word_error_rate
from .commands.cli import positive_int

DEFAULT_ALPHAS = "0,0.25,0.5,0.75,1,1.5,2"
DEFAULT_BETAS = "-1,0,1,2,3,4,5"


def parse_grid(text, name, bounds):
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise SystemExit(f"--{name} is empty")
    for value in values:
        try:
            check_range(name.rstrip("s"), value, *bounds)
        except LanguageModelError as error:
            raise SystemExit(f"--{name}: {error}") from None
    return values


def tune(model_dir, data_dir=EMBEDDED_CORPUS, sets=("crowd", "farfield"), subset="even", alphas=None, betas=None,
         beam_width=DEFAULT_BEAM_WIDTH, batch_size=16, dry_run=False, trust_remote_code=False,
         max_samples=None) -> dict:  # fmt: skip
    model_dir = Path(model_dir)
    alphas = alphas or parse_grid(DEFAULT_ALPHAS, "alphas", ALPHA_RANGE)
    betas = betas or parse_grid(DEFAULT_BETAS, "betas", BETA_RANGE)
    try:
        backend = TorchBackend.from_folder(str(model_dir), trust_remote_code=trust_remote_code)
    except (InferenceError, LanguageModelError) as error:
        raise SystemExit(str(error)) from None
    processor, transcriber = backend.processor, Transcriber(backend, batch_size)
    decoder = getattr(processor, "decoder", None)
    if decoder is None:
        raise SystemExit(f"{model_dir} has no {LM_DIR}/: add one with build_lm.py first")
    try:
        test_sets = load_test_sets(data_dir, sets, processor.tokenizer, max_samples)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from None
    tuning = {"references": [], "greedy": [], "log_probs": []}
    unseen = {"references": [], "greedy": [], "log_probs": []}
    for dataset, _ in test_sets.values():
        log_probs = set_log_probs(transcriber, dataset)
        greedy = decode_all(transcriber, log_probs)
        for index, (reference, hypothesis, values) in enumerate(zip(dataset["text"], greedy, log_probs)):
            target = tuning if subset == "all" or index % 2 == (0 if subset == "even" else 1) else unseen
            target["references"].append(reference)
            target["greedy"].append(hypothesis)
            target["log_probs"].append(values)
    if not tuning["references"]:
        raise SystemExit("no held-out utterances to tune on")
    results = []
    for alpha in alphas:
        for beta in betas:
            decoder.reset_params(alpha=alpha, beta=beta)
            hypotheses = decode_all(transcriber, tuning["log_probs"], LMDecoder(decoder, beam_width=beam_width))
            results.append((word_error_rate(tuning["references"], hypotheses), alpha, beta))
            print(f"alpha {alpha:<5g} beta {beta:<5g} WER {100 * results[-1][0]:6.2f} %", flush=True)
    best_wer, alpha, beta = min(results)
    decoder.reset_params(alpha=alpha, beta=beta)
    summary = {"alpha": alpha, "beta": beta, "beam_width": beam_width, "subset": subset,
               "tuning_utterances": len(tuning["references"]),
               "tuning_greedy_wer": word_error_rate(tuning["references"], tuning["greedy"]), "tuning_lm_wer": best_wer}  # fmt: skip
    if unseen["references"]:
        summary.update({
            "unseen_utterances": len(unseen["references"]),
            "unseen_greedy_wer": word_error_rate(unseen["references"], unseen["greedy"]),
            "unseen_lm_wer": word_error_rate(unseen["references"], decode_all(
                transcriber, unseen["log_probs"], LMDecoder(decoder, beam_width=beam_width))),
        })  # fmt: skip
    attrs_path = model_dir / LM_DIR / ATTRS_FILE
    if not dry_run:
        atomic_write_text(attrs_path, json.dumps(decoder.attrs, indent=1))
    for key, value in summary.items():
        print(f"{key}: {100 * value:.2f} %" if key.endswith("_wer") else f"{key}: {value}")
    print(("would write " if dry_run else "wrote ") + f"alpha {alpha}, beta {beta} to {attrs_path}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a model folder with a language model (build_lm.py)")
    parser.add_argument("--data_dir", default=str(EMBEDDED_CORPUS), help="Golos-layout folder (default: embedded)")
    parser.add_argument("--sets", default="crowd,farfield", help="test sets of --data_dir to tune on")
    parser.add_argument("--subset", choices=("even", "odd", "all"), default="even",
                        help="which utterances of each set to tune on (default: even-numbered; the rest stay unseen)")  # fmt: skip
    parser.add_argument("--alphas", default=DEFAULT_ALPHAS, help=f"grid of LM weights (default {DEFAULT_ALPHAS})")
    parser.add_argument("--betas", default=DEFAULT_BETAS, help=f"grid of word bonuses (default {DEFAULT_BETAS})")
    parser.add_argument("--beam_width", type=positive_int, default=DEFAULT_BEAM_WIDTH, help="beam width while tuning")
    parser.add_argument("--batch_size", type=positive_int, default=16)
    parser.add_argument("--max_samples", type=positive_int, help="use the first N utterances of each set")
    parser.add_argument("--dry_run", action="store_true", help="print the choice, do not write attrs.json")
    parser.add_argument("--trust_remote_code", action="store_true")
    return parser


def run(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets or any(s not in ("crowd", "farfield") for s in sets):
        parser.error(f"--sets must name crowd and/or farfield, got {args.sets!r}")
    if args.beam_width < 1:
        parser.error("--beam_width must be at least 1")
    return tune(args.model_dir, args.data_dir, sets, args.subset, parse_grid(args.alphas, "alphas", ALPHA_RANGE),
                parse_grid(args.betas, "betas", BETA_RANGE), args.beam_width, args.batch_size, args.dry_run,
                args.trust_remote_code, args.max_samples)  # fmt: skip


def main(argv=None) -> int:
    """The command line: `run`, exit status 0 (errors exit with their message)."""
    run(argv)
    return 0
