"""Choose the language model's alpha (LM weight) and beta (word bonus) on held-out speech; write them to attrs.json
(`ebranchformer-tune-lm`, `ebranchformer_ru.commands.tune_lm`): `tune`.

The model's logits are computed once; every (alpha, beta) of the grid decodes them with beam search and the
pair with the lowest WER over all held-out words wins (ties: the smaller alpha, then the smaller beta), and is
written to MODEL/language_model/attrs.json (atomically; `dry_run` only prints).

Held-out set: Golos has no development set, so by default the even-numbered utterances (0, 2, 4, ...) of each
test set are used for tuning and the odd-numbered ones stay unseen; greedy and LM WER are printed for both
halves, so that the figure on the unseen half shows whether the choice generalises. `subset="all"` tunes on
whole test sets (then report figures from elsewhere), `data_dir` is any Golos-layout folder (e.g. one holding a
dev set laid out as test_opus/dev/manifest.jsonl).
"""

import json
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

from .errors import Error, UsageError
from .files import atomic_write_text
from .inference import (
    LMDecoder,
    TorchBackend,
    Transcriber,
    choose_test_sets,
    decode_all,
    load_decoder,
    load_test_sets,
    set_log_probs,
)
from .metrics import wer as word_error_rate

DEFAULT_ALPHAS = "0,0.25,0.5,0.75,1,1.5,2"
DEFAULT_BETAS = "-1,0,1,2,3,4,5"


def parse_grid(text, name, bounds):
    """The sorted values of a comma-separated grid (`--alphas`, `--betas`), each checked against `bounds`."""
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"--{name} is empty")
    for value in values:
        try:
            check_range(name.rstrip("s"), value, *bounds)
        except LanguageModelError as error:
            raise UsageError(f"--{name}: {error}") from None
    return values


def tune(
    model_dir,
    data_dir=EMBEDDED_CORPUS,
    sets=("crowd", "farfield"),
    subset="even",
    alphas=None,
    betas=None,
    beam_width=DEFAULT_BEAM_WIDTH,
    batch_size=16,
    dry_run=False,
    trust_remote_code=False,
    max_samples=None,
    device="cpu",
    threads=None,
    dtype="float32",
    torch_compile=False,
) -> dict:
    """The chosen alpha and beta and the WERs they give (also printed); written to attrs.json unless `dry_run`."""
    model_dir = Path(model_dir)
    alphas = alphas or parse_grid(DEFAULT_ALPHAS, "alphas", ALPHA_RANGE)
    betas = betas or parse_grid(DEFAULT_BETAS, "betas", BETA_RANGE)
    if subset not in ("even", "odd", "all"):
        raise UsageError(f"subset must be even, odd or all, got {subset!r}")
    if not model_dir.is_dir():
        raise Error(f"model folder not found: {model_dir} (a model folder with a language model, build_lm.py)")
    sets = choose_test_sets(data_dir, sets)
    decoder = load_decoder(model_dir, "lm").decoder  # the search whose alpha and beta are tuned
    backend = TorchBackend.from_folder(
        str(model_dir),
        device,
        threads,
        trust_remote_code,
        language_model=False,
        dtype=dtype,
        torch_compile=torch_compile,
    )
    processor, transcriber = backend.processor, Transcriber(backend, batch_size)
    test_sets = load_test_sets(data_dir, sets, processor.tokenizer, max_samples)
    tuning, unseen = held_out_halves(transcriber, test_sets, subset)
    if not tuning["references"]:
        raise Error("no held-out utterances to tune on")
    best_wer, alpha, beta = grid_search(transcriber, decoder, tuning, alphas, betas, beam_width)
    decoder.reset_params(alpha=alpha, beta=beta)
    summary = {
        "alpha": alpha,
        "beta": beta,
        "beam_width": beam_width,
        "subset": subset,
        "tuning_utterances": len(tuning["references"]),
        "tuning_greedy_wer": word_error_rate(tuning["references"], tuning["greedy"]),
        "tuning_lm_wer": best_wer,
    }
    if unseen["references"]:
        summary.update(
            {
                "unseen_utterances": len(unseen["references"]),
                "unseen_greedy_wer": word_error_rate(unseen["references"], unseen["greedy"]),
                "unseen_lm_wer": word_error_rate(
                    unseen["references"],
                    decode_all(transcriber, unseen["log_probs"], LMDecoder(decoder, beam_width=beam_width)),
                ),
            }
        )
    attrs_path = model_dir / LM_DIR / ATTRS_FILE
    if not dry_run:
        atomic_write_text(attrs_path, json.dumps(decoder.attrs, indent=1))
    for key, value in summary.items():
        print(f"{key}: {100 * value:.2f} %" if key.endswith("_wer") else f"{key}: {value}")
    print(("would write " if dry_run else "wrote ") + f"alpha {alpha}, beta {beta} to {attrs_path}")
    return summary


def held_out_halves(transcriber, test_sets, subset) -> tuple[dict, dict]:
    """The utterances tuned on and those left unseen ({"references", "greedy", "log_probs"} each): of each set,
    the even- or odd-numbered ones, or all."""
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
    return tuning, unseen


def grid_search(transcriber, decoder, tuning, alphas, betas, beam_width) -> tuple[float, float, float]:
    """(WER, alpha, beta) of the best pair on the tuning half, each pair's WER printed as it comes; ties go to
    the smaller alpha, then the smaller beta."""
    results = []
    for alpha in alphas:
        for beta in betas:
            decoder.reset_params(alpha=alpha, beta=beta)
            hypotheses = decode_all(transcriber, tuning["log_probs"], LMDecoder(decoder, beam_width=beam_width))
            results.append((word_error_rate(tuning["references"], hypotheses), alpha, beta))
            print(f"alpha {alpha:<5g} beta {beta:<5g} WER {100 * results[-1][0]:6.2f} %", flush=True)
    return min(results)
