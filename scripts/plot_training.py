"""Plot training loss and evaluation WER against steps from a train_ctc.py output folder.

    python scripts/plot_training.py outputs/overfit docs/overfit.png

Reads OUTPUT_DIR/trainer_state.json (written at the end of training) and prints the figures it plots.
Needs matplotlib (pip install matplotlib; not a dependency of the package).
"""

import argparse
import json
import os
from pathlib import Path


def curves(log_history: list[dict]):
    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    wer = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and key.endswith("_wer"):
                wer.setdefault(key[len("eval_") : -len("_wer")], []).append((entry["step"], value))
    return loss, wer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="a train_ctc.py output folder")
    parser.add_argument("png", help="where to write the plot")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    state_path = Path(args.output_dir) / "trainer_state.json"
    if not state_path.exists():
        raise SystemExit(f"{state_path} not found: is {args.output_dir} a finished train_ctc.py run?")
    state = json.loads(state_path.read_text())
    loss, wer = curves(state["log_history"])
    if not loss:
        raise SystemExit(f"{state_path}: no training loss logged")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=110)
    loss_axis.plot(*zip(*loss), color="tab:blue", label="train loss (CTC)")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("CTC loss", color="tab:blue")
    wer_axis = loss_axis.twinx()
    for (name, points), color in zip(wer.items(), ["tab:orange", "tab:green", "tab:red", "tab:purple"]):
        wer_axis.plot(*zip(*[(s, 100 * w) for s, w in points]), marker="o", color=color, label=f"WER, {name}")
    wer_axis.set_ylabel("WER, %")
    wer_axis.set_ylim(bottom=0)
    handles = loss_axis.get_legend_handles_labels()[0] + wer_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="upper right")
    loss_axis.set_title(args.title or Path(args.output_dir).name)
    figure.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{args.png}.tmp.png"
    figure.savefig(tmp)
    os.replace(tmp, args.png)

    runtime = next((e["train_runtime"] for e in state["log_history"] if "train_runtime" in e), None)
    print(
        f"{args.output_dir}: {state['global_step']} steps, {state['epoch']:.0f} epochs"
        + (f", train wall time {runtime / 60:.1f} min" if runtime else "")
    )
    for name, points in wer.items():
        print(f"  WER {name}: " + ", ".join(f"step {s}: {100 * w:.2f} %" for s, w in points))
    print(f"  final train loss {loss[-1][1]:.4g} at step {loss[-1][0]}; plot: {args.png}")


if __name__ == "__main__":
    main()
