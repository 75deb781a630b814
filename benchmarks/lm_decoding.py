"""Decoding time per audio second: greedy against beam search with the language model (beam 16, 32, 64, 128),
on the embedded test sets, from the same logits; and the WER each gives.

    python benchmarks/lm_decoding.py MODEL_DIR [--threads 2] [--beams 16,32,64,128] [--repeats 3]
    python benchmarks/lm_decoding.py MODEL_DIR --lengths 30,900,7200    # RTF against the recording's length

MODEL_DIR should be a trained model with a language model (`build_lm.py`); a folder without one gets a
3-gram of the embedded train transcripts in a temporary copy. The model's forward pass (2 threads) is
timed once and reported for scale; decoding is timed over all utterances of both test sets (median of
`--repeats` runs); "RTF added" is decoding time / audio time beyond greedy decoding's.

`--lengths` instead decodes one recording of each length (seconds) at the default beam: the test sets'
log-probabilities joined end to end and repeated to that length, so that every length holds the same kind of
speech and only the length differs; it prints RTF and its ratio to the shortest's (a search whose cost per
frame grew with the recording would show here).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import machine, table

from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.inference import TorchBackend, Transcriber, load_decoder, load_test_sets, set_log_probs
from ebranchformer_ru.metrics import wer as word_error_rate
from modeling_ebranchformer.beam_search import DEFAULT_BEAM_WIDTH, LM_DIR


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beams", default="16,32,64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", help="comma-separated recording lengths in seconds, e.g. 30,900,7200")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    temporary = None
    if not (model_dir / LM_DIR).is_dir():
        from ebranchformer_ru import lm_building

        temporary = Path(tempfile.mkdtemp())
        shutil.copytree(model_dir, temporary / "model", ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
        model_dir = temporary / "model"
        lm_building.build(model_dir)
    try:
        backend = TorchBackend.from_folder(str(model_dir), language_model=False)
        processor, transcriber = backend.processor, Transcriber(backend)
        decoder = load_decoder(model_dir, "lm").decoder
        print(machine())
        print(
            f"model {args.model_dir}; LM {decoder.language_model.path} (order {decoder.language_model.order}); "
            f"alpha {decoder.alpha}, beta {decoder.beta}"
        )
        references, log_probs, seconds = [], [], 0.0
        start = time.perf_counter()
        for name, (dataset, _) in load_test_sets(EMBEDDED_CORPUS, ("crowd", "farfield"), processor.tokenizer).items():
            values = set_log_probs(transcriber, dataset)
            references += [(name, r) for r in dataset["text"]]
            log_probs += values
            seconds += sum(dataset["duration"])
        forward = time.perf_counter() - start
        if args.lengths:
            return print(length_table(decoder, log_probs, [float(x) for x in args.lengths.split(",")]))

        def wer(hypotheses):
            return {
                name: word_error_rate(
                    [r for (n, r) in references if n == name],
                    [h for (n, _), h in zip(references, hypotheses) if n == name],
                )
                for name in ("crowd", "farfield")
            }

        greedy_time, greedy = median_time(
            lambda: [backend.vocabulary.decode(x.argmax(-1)) for x in log_probs], args.repeats
        )
        rows = [
            [
                "greedy",
                f"{greedy_time:.3f}",
                f"{greedy_time / seconds:.5f}",
                "-",
                *(f"{100 * v:.2f} %" for v in wer(greedy).values()),
            ]
        ]
        for beam in [int(b) for b in args.beams.split(",")]:
            elapsed, hypotheses = median_time(
                lambda beam=beam: [decoder.decode_beams(x, beam_width=beam)[0].text for x in log_probs], args.repeats
            )
            label = f"LM, beam {beam}" + (" (default)" if beam == DEFAULT_BEAM_WIDTH else "")
            rows.append(
                [
                    label,
                    f"{elapsed:.3f}",
                    f"{elapsed / seconds:.5f}",
                    f"{(elapsed - greedy_time) / seconds:.5f}",
                    *(f"{100 * v:.2f} %" for v in wer(hypotheses).values()),
                ]
            )
        print(
            f"{len(log_probs)} utterances, {seconds:.1f} s of audio; model forward (features + encoder, "
            f"{args.threads} threads, batches of 16): {forward:.2f} s, RTF {forward / seconds:.4f}"
        )
        print(table(["decoding", "time (s)", "RTF", "RTF added", "WER crowd", "WER farfield"], rows))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def length_table(decoder, log_probs, lengths) -> str:
    import numpy as np

    joined = np.concatenate(log_probs)  # 25 frames a second
    rows, first = [], None
    for seconds in lengths:
        frames = int(seconds * 25)
        recording = np.resize(joined, (frames, joined.shape[1]))  # repeated to the length
        start = time.perf_counter()
        decoder.decode_beams(recording, beam_width=DEFAULT_BEAM_WIDTH)
        rtf = (time.perf_counter() - start) / seconds
        first = first or rtf
        rows.append([f"{seconds:g} s ({seconds / 3600:.2f} h)", f"{rtf:.5f}", f"{rtf / first:.2f}"])
    return table(["recording", "RTF (beam 32)", "against the first"], rows)


if __name__ == "__main__":
    main()
