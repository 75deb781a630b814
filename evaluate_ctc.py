"""WER and CER of a model folder on the Golos test sets (homework step 5).

    python evaluate_ctc.py MODEL_FOLDER [--data_dir data/golos_mini] [--sets crowd,farfield] [--output_dir DIR]

Writes to DIR (default MODEL_FOLDER/eval): `results.md` and `results.json` (one row per test set) and
`utterances_<set>.jsonl` (id, reference, hypothesis and the word errors of every utterance).
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import jiwer
import torch
from transformers import AutoModelForCTC, AutoProcessor

from golos import EMBEDDED_CORPUS, decode_with_soundfile, load_golos, normalize_and_check_texts
from train_ctc import decode_ids, greedy_ids, load_metric

logger = logging.getLogger("evaluate_ctc")


def transcribe(model, processor, dataset, batch_size=16) -> list[str]:
    """Greedy transcripts of a decoded dataset, in its order; batches of similar durations."""
    durations = dataset["duration"]  # the column alone: reading rows would decode every file just to sort
    order = sorted(range(len(dataset)), key=durations.__getitem__)
    hypotheses = [None] * len(dataset)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        audio = [dataset[i]["audio"]["array"] for i in indices]
        inputs = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").to(device)
        with torch.inference_mode():
            ids = greedy_ids(model(**inputs).logits, inputs["attention_mask"], model)
        for index, text in zip(indices, decode_ids(processor.tokenizer, ids.cpu())):
            hypotheses[index] = text
    return hypotheses


def write_atomically(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def evaluate_model(model_path, data_dir=EMBEDDED_CORPUS, sets=("crowd", "farfield"), output_dir=None,
                   batch_size=16, max_samples=None):  # fmt: skip
    model = AutoModelForCTC.from_pretrained(model_path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    wer, cer = load_metric("wer"), load_metric("cer")
    output_dir = Path(output_dir or Path(model_path) / "eval")
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in sets:
        dataset = load_golos(data_dir, name, "test", decode="none")
        dataset, report = normalize_and_check_texts(dataset, processor.tokenizer)
        logger.info("%s: %s", name, report)
        if max_samples:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        references = dataset["text"]
        hypotheses = transcribe(model, processor, decode_with_soundfile(dataset), batch_size)
        lines = []
        for id_, reference, hypothesis in zip(dataset["id"], references, hypotheses):
            errors = jiwer.process_words(reference, hypothesis)
            lines.append({"id": id_, "reference": reference, "hypothesis": hypothesis,
                          "substitutions": errors.substitutions, "deletions": errors.deletions,
                          "insertions": errors.insertions, "reference_words": len(reference.split())})  # fmt: skip
        write_atomically(output_dir / f"utterances_{name}.jsonl",
                         "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))  # fmt: skip
        rows.append({
            "set": name, "utterances": len(references), "words": sum(len(r.split()) for r in references),
            "hours": sum(dataset["duration"]) / 3600, "excluded": report.total - report.kept,
            "wer": wer.compute(predictions=hypotheses, references=references),
            "cer": cer.compute(predictions=hypotheses, references=references),
        })  # fmt: skip
    table = ["| test set | utterances | words | hours | WER | CER |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['set']} | {r['utterances']} | {r['words']} | {r['hours']:.3f} | {100 * r['wer']:.2f} % | "
              f"{100 * r['cer']:.2f} % |" for r in rows]  # fmt: skip
    write_atomically(output_dir / "results.md", f"Model: `{model_path}`, data: `{data_dir}`\n\n" + "\n".join(table) + "\n")
    write_atomically(output_dir / "results.json", json.dumps({"model": str(model_path), "data_dir": str(data_dir),
                                                              "results": rows}, indent=1))  # fmt: skip
    print("\n".join(table))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a from_pretrained folder (or Hub id)")
    parser.add_argument("--data_dir", default=str(EMBEDDED_CORPUS))
    parser.add_argument("--sets", default="crowd,farfield", help="comma-separated test domains")
    parser.add_argument("--output_dir", help="default: MODEL/eval")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_samples", type=int, help="evaluate on the first N utterances of each set")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := [s for s in sets if s not in ("crowd", "farfield")]:
        raise SystemExit(f"unknown test set(s) {unknown}: use crowd and/or farfield")
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"data folder not found: {args.data_dir}")
    return evaluate_model(args.model, args.data_dir, sets, args.output_dir, args.batch_size, args.max_samples)


if __name__ == "__main__":
    main()
