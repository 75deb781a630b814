"""Golos at full size: preparation, cached reload, streaming and the train selection on 1.1 M manifest lines.

    python benchmarks/golos_scale.py --root /tmp/golos_scale             # the full 1,103,799 train lines
    python benchmarks/golos_scale.py --root /tmp/golos_scale --lines 20000

Builds a Golos-layout folder (`train_opus/manifest.jsonl` with `--lines` lines, in folders of 1,000 files
as crowd/NNN/ and farfield/NNN/, 18 % farfield), whose files are hard links to the embedded corpus's Opus files
(no audio space; each of the 310 files is linked about 3,600 times), with the embedded files' durations
(1.4 to 5.4 s, mean 3.0 s) and their texts, 3 % of them doubled (over 68 characters, which the course filter
removes). The test manifests are the embedded ones. Then, each step in a fresh process (its peak resident
memory counted with its worker processes):

    prepare none / header  load_golos(root, "all", "train", verify_audio=...) into an empty cache
    cached reload           the same call again (with and without recheck_audio)
    streaming first batch   load_golos(..., streaming=True) until 64 decoded examples
    selection               course filter, vocabulary check, CTC length check (training.prepare_train)
    grouping                the Trainer's length-grouped sampler: build it and draw one epoch's order
    interrupted             (--interrupt S) a header preparation killed after S s, then run again

Nothing is extrapolated: every figure is measured on the folder built. Prints a Markdown table and writes
it, with the machine and its load average, to --output (JSON).
"""

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_TRAIN_LINES = 1_103_799
BATCH = 64


def build(root: Path, lines: int, seed: int = 0) -> dict:
    """The Golos-layout folder; returns what it holds. An existing folder with the same number of lines is kept."""
    from ebranchformer_ru.golos import EMBEDDED_CORPUS

    manifest = root / "train_opus" / "manifest.jsonl"
    stamp = root / "built.json"
    if stamp.exists() and json.loads(stamp.read_text())["lines"] == lines:
        return json.loads(stamp.read_text())
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    sources = []
    for sub in ("train_opus/manifest.jsonl", "test_opus/crowd/manifest.jsonl", "test_opus/farfield/manifest.jsonl"):
        path = EMBEDDED_CORPUS / sub
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            sources.append((os.path.join(path.parent, entry["audio_filepath"]), entry["text"], entry["duration"]))
    texts = [text for _, text, _ in sources]
    rng = random.Random(seed)
    (root / "train_opus").mkdir(parents=True)
    shutil.copytree(EMBEDDED_CORPUS / "test_opus", root / "test_opus")
    with open(manifest, "w", encoding="utf-8") as out:
        for index in range(lines):
            source, text, duration = sources[rng.randrange(len(sources))]
            domain = "farfield" if rng.random() < 0.18 else "crowd"
            folder = f"{domain}/{index // 1000:04d}"
            if index % 1000 == 0 or not (root / "train_opus" / folder).is_dir():
                (root / "train_opus" / folder).mkdir(parents=True, exist_ok=True)
            name = f"{folder}/{index:07d}.opus"
            os.link(source, root / "train_opus" / name)
            if rng.random() < 0.03:
                text = f"{text} {rng.choice(texts)}"
            entry = {"id": f"{index:07d}", "audio_filepath": name, "text": text, "duration": duration}
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    info = {
        "lines": lines,
        "build_s": round(time.perf_counter() - start, 1),
        "manifest_mb": round(manifest.stat().st_size / 1e6, 1),
    }
    stamp.write_text(json.dumps(info))
    return info


def folder_size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1) if path.exists() else 0.0


# --- the steps, each run in a fresh process (`--step NAME`) -------------------------------------------


def step_prepare(args):
    from ebranchformer_ru.golos import load_golos

    kwargs = {
        "verify_audio": args.verify_audio,
        "cache_dir": args.cache_dir,
        "decode": "none",
        "recheck_audio": args.recheck,
        "num_proc": args.num_proc,
    }
    start = time.perf_counter()
    dataset = load_golos(args.root, "all", "train", **kwargs)
    return {"seconds": time.perf_counter() - start, "rows": len(dataset)}


def step_stream(args):
    from ebranchformer_ru.golos import load_golos

    start = time.perf_counter()
    stream = load_golos(args.root, "all", "train", streaming=True, verify_audio=args.verify_audio)
    batch = list(stream.take(BATCH))
    assert len(batch) == BATCH and batch[0]["audio"]["array"].size > 0
    return {"seconds": time.perf_counter() - start}


def step_select(args):
    """What train_ctc does with the prepared split (prepare_train), then the length-grouped order of one
    epoch as its Trainer draws it (CTCTrainer._get_train_sampler, batch 64)."""
    import tempfile

    from ebranchformer_ru import training
    from ebranchformer_ru.golos import decode_with_soundfile, load_golos
    from modeling_ebranchformer import DataCollatorCTC

    start = time.perf_counter()
    dataset = load_golos(args.root, "all", "train", cache_dir=args.cache_dir, decode="none", recheck_audio=False)
    loaded = time.perf_counter()
    output_dir = tempfile.mkdtemp()
    model_args, data_args, _, _, training_args = training.parse_args(
        [
            "--data_dir",
            str(args.root),
            "--dataset_cache_dir",
            args.cache_dir,
            "--output_dir",
            output_dir,
            "--config_overrides",
            args.tiny,
            "--per_device_train_batch_size",
            str(BATCH),
            "--report_to",
            "none",
            "--do_eval",
            "false",
        ]
    )
    model, processor = training.load_model_and_processor(model_args)
    selected = training.prepare_train(data_args, processor, model)  # calls load_golos again: cached
    selection = time.perf_counter()
    trainer = training.CTCTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorCTC(processor),
        train_dataset=decode_with_soundfile(selected),
    )
    sampler = trainer._get_train_sampler()
    built = time.perf_counter()
    order = list(iter(sampler))
    drawn = time.perf_counter()
    shutil.rmtree(output_dir)
    assert len(order) == len(selected) and sorted(order) == list(range(len(selected)))
    return {
        "rows": len(dataset),
        "selected": len(selected),
        "load_s": loaded - start,
        "selection_s": selection - loaded,
        "sampler_s": built - selection,
        "epoch_order_s": drawn - built,
        "order_per_step_ms": 1000 * (drawn - built) / (len(order) / BATCH),
    }


def step_train(args):
    """train_ctc.py on the folder: a tiny model, batch 4 on the CPU, 2 DataLoader workers, length-grouped
    batches, a checkpoint every half of the steps (keeping 1); then resumed from the last one for 10 more
    steps. Startup: from the start of run() to the first training step."""
    import tempfile

    import transformers

    from ebranchformer_ru import training

    first_step = []
    training_step = transformers.Trainer.training_step

    def timed_step(self, *a, **k):
        if not first_step:
            first_step.append(time.perf_counter())
        return training_step(self, *a, **k)

    transformers.Trainer.training_step = timed_step
    output_dir = tempfile.mkdtemp()
    argv = [
        "--data_dir",
        str(args.root),
        "--dataset_cache_dir",
        args.cache_dir,
        "--output_dir",
        output_dir,
        "--config_overrides",
        args.tiny,
        "--per_device_train_batch_size",
        "4",
        "--do_eval",
        "false",
        "--max_steps",
        str(args.train_steps),
        "--save_steps",
        str(max(1, args.train_steps // 2)),
        "--save_total_limit",
        "1",
        "--dataloader_num_workers",
        "2",
        "--logging_steps",
        "10",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
    ]
    start = time.perf_counter()
    trainer, metrics = training.run(argv)
    end = time.perf_counter()
    startup = first_step[0] - start
    checkpoints = sorted(p.name for p in Path(output_dir).glob("checkpoint-*"))
    steps = trainer.state.global_step
    first_step.clear()
    resume_start = time.perf_counter()
    argv[argv.index("--max_steps") + 1] = str(args.train_steps + 10)
    trainer, _ = training.run(argv + ["--resume_from_checkpoint", "last"])
    resumed = time.perf_counter()
    shutil.rmtree(output_dir)
    return {
        "seconds": end - start,
        "startup_s": startup,
        "steps": steps,
        "checkpoints": checkpoints,
        "resumed_to": trainer.state.global_step,
        "resume_startup_s": first_step[0] - resume_start,
        "resume_s": resumed - resume_start,
        "train_loss": metrics.get("train_loss"),
    }


STEPS = {"prepare": step_prepare, "stream": step_stream, "select": step_select, "train": step_train}


def run_step(args, step, timeout=None, **overrides) -> dict:
    """Runs one step in a fresh process; returns its result with peak resident memory (the process and
    its workers) and the wall time of the whole process."""
    command = [
        sys.executable,
        __file__,
        "--step",
        step,
        "--root",
        str(args.root),
        "--cache_dir",
        args.cache_dir,
        "--verify_audio",
        args.verify_audio,
        "--recheck",
        str(args.recheck),
        "--num_proc",
        str(args.num_proc or 0),
        "--train_steps",
        str(args.train_steps),
    ]
    for key, value in overrides.items():
        command[command.index(f"--{key}") + 1] = str(value)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the step and its pool workers, as a crash would
        process.communicate()
        return {"killed_after_s": round(time.perf_counter() - start, 1)}
    if process.returncode:
        raise SystemExit(f"step {step} failed ({process.returncode})")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}


def child(args):
    result = STEPS[args.step](args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["peak_rss_mb"] = round(max(own, workers), 1)
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/golos_scale"))
    parser.add_argument("--lines", type=int, default=FULL_TRAIN_LINES)
    parser.add_argument("--num_proc", type=int, default=0, help="audio-checking processes (0: one per core)")
    parser.add_argument("--interrupt", type=float, default=0, help="also kill a header preparation after S s")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument("--keep", action="store_true", help="keep the folder and caches (default: deleted)")
    parser.add_argument("--train_steps", type=int, default=0, help="also train train_ctc.py for N steps (item 3)")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--verify_audio", default="header", help=argparse.SUPPRESS)
    parser.add_argument("--recheck", default="True", help=argparse.SUPPRESS)
    parser.add_argument(
        "--tiny",
        default="hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "cgmlp_intermediate_size=48,ffn_intermediate_size=64",
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    args.num_proc = args.num_proc or None
    if args.step:
        args.recheck = args.recheck == "True"
        return child(args)

    figures = {"machine": f"{os.cpu_count()} CPUs", "load_before": os.getloadavg()}
    figures["build"] = build(args.root, args.lines)
    print("folder:", figures["build"], flush=True)
    caches = args.root / "caches"
    shutil.rmtree(caches, ignore_errors=True)
    rows = []

    def record(name, result, target=""):
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
        figures[name] = result
        print(name, result, flush=True)
        rows.append((name, result, target))

    args.cache_dir = str(caches / "none")
    record("prepare, verify_audio none", run_step(args, "prepare", verify_audio="none"))
    figures["cache_mb_none"] = folder_size_mb(caches / "none")
    args.cache_dir = str(caches / "header")
    if args.interrupt:
        killed = run_step(args, "prepare", timeout=args.interrupt)
        shards = list((caches / "header" / "golos_verify").glob("*/shard-*.npz"))
        killed["shards_saved"] = len(shards)
        record("header preparation killed", killed)
        record("prepare, header, after the kill", run_step(args, "prepare"), "<= 600 s")
        shutil.rmtree(caches / "header")
    record("prepare, verify_audio header", run_step(args, "prepare"), "<= 600 s")
    figures["cache_mb_header"] = folder_size_mb(caches / "header")
    record("cached reload, recheck_audio", run_step(args, "prepare"), "<= 10 s")
    record("cached reload, no recheck", run_step(args, "prepare", recheck=False), "<= 10 s")
    record("streaming, first batch of 64", run_step(args, "stream"), "<= 5 s")
    record("train selection + grouping", run_step(args, "select"))
    if args.train_steps:
        record(f"train_ctc.py, {args.train_steps} steps", run_step(args, "train", train_steps=args.train_steps))
    figures["load_after"] = os.getloadavg()

    print(
        f"\n{args.lines:,} train lines; cache {figures['cache_mb_header']} MB on disk (header), "
        f"{figures['cache_mb_none']} MB (none); load average before {figures['load_before']}, "
        f"after {figures['load_after']}"
    )
    print("| step | wall s (process s) | peak RSS MB | load avg | target | other |")
    print("|---|---:|---:|---:|---|---|")
    for name, result, target in rows:
        seconds = result.get("seconds", result.get("killed_after_s", ""))
        other = {k: v for k, v in result.items() if k not in ("seconds", "process_s", "peak_rss_mb", "load_avg_1m")}
        print(
            f"| {name} | {seconds} ({result.get('process_s', '')}) | {result.get('peak_rss_mb', '')} | "
            f"{result['load_avg_1m']} | {target} | {other} |"
        )
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1))
    if not args.keep:
        shutil.rmtree(args.root)


if __name__ == "__main__":
    main()
