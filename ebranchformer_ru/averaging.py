"""Average the weights of several checkpoints of a train_ctc.py run into one loadable model folder.

    python average_checkpoints.py outputs/course --last 5          # the 5 newest checkpoints
    python average_checkpoints.py outputs/course --best 5          # the 5 with the lowest logged eval WER
    python evaluate_ctc.py outputs/course/average-last-5

What ESPnet (`ave_10best`), NeMo and icefall (`--avg`) do: every floating-point tensor of the model (batch-norm
running means and variances included) becomes the mean of its values in the chosen checkpoints, computed in
float64 and stored in the checkpoints' dtype; integer tensors (batch norm's `num_batches_tracked`) are taken
from the newest checkpoint. A checkpoint is one `checkpoint-STEP/` folder whose save finished (it holds
`trainer_state.json`). `--best` ranks checkpoints by the eval WER that the Trainer logged at their step
(`--metric`, default the run's first `eval_*_wer`), lower is better; checkpoints without one are left out.

The output folder (default RUN_DIR/average-last-N or average-best-N) holds the newest chosen checkpoint's
config, processor and code with the averaged `model.safetensors`, and `averaging.json` (the checkpoints and
the method). It is written to a temporary sibling, loaded once as a check, then renamed into place: it
appears complete or not at all. An existing folder is replaced only with --overwrite.
"""

import json
import re
import shutil
from pathlib import Path

from .errors import Error
from .files import check_output_folder, staged_folder
from .hub import ModelLoadError, load_ctc_model

# Files of a Trainer checkpoint that belong to the training state, not to the model.
TRAINING_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|"
    r"training_args\.bin|model\.safetensors|pytorch_model\.bin|.*\.index\.json)$"
)


def complete_checkpoints(run_dir) -> dict:
    """step -> folder of every checkpoint whose save finished, oldest first."""
    found = {}
    for path in Path(run_dir).glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file() and (path / "model.safetensors").is_file():
            found[int(suffix)] = path
    return dict(sorted(found.items()))


def logged_metric(checkpoints: dict, metric: str | None) -> tuple[str, dict]:
    """(metric, step -> value) from the newest checkpoint's log history (it holds every earlier evaluation)."""
    history = json.loads((checkpoints[max(checkpoints)] / "trainer_state.json").read_text())["log_history"]
    if metric is None:
        names = [k for entry in history for k in entry if k.startswith("eval_") and k.endswith("_wer")]
        if not names:
            raise Error("--best: the run logged no eval WER (was it trained with evaluation?); use --last")
        metric = names[0]
    values = {entry["step"]: entry[metric] for entry in history if metric in entry}
    if not values:
        raise Error(f"--best: the run logged no {metric!r}")
    return metric, values


def choose(run_dir, last=None, best=None, metric=None) -> tuple[list, dict]:
    """The checkpoint folders to average (oldest first) and what chose them."""
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        raise Error(f"no complete checkpoint-STEP folder in {run_dir}")
    if last:
        if last > len(checkpoints):
            raise Error(
                f"--last {last}: {run_dir} holds {len(checkpoints)} complete checkpoints "
                f"({', '.join(p.name for p in checkpoints.values())})"
            )
        steps = list(checkpoints)[-last:]
        return [checkpoints[s] for s in steps], {"method": f"last {last}"}
    metric, values = logged_metric(checkpoints, metric)
    ranked = sorted((values[s], -s) for s in checkpoints if s in values)  # ties: the newer first
    if best > len(ranked):
        raise Error(f"--best {best}: only {len(ranked)} checkpoints have a logged {metric}")
    steps = sorted(-s for _, s in ranked[:best])
    return [checkpoints[s] for s in steps], {
        "method": f"best {best} by {metric}",
        metric: {s: values[s] for s in steps},
    }


def average_state_dicts(state_dicts: list, names=None) -> dict:
    """The mean of every floating-point tensor (in float64, stored in its dtype); other tensors from the
    last (newest) state dict. All must have the same names, shapes and dtypes."""
    import torch

    names = names or [f"checkpoint {i + 1}" for i in range(len(state_dicts))]
    first, newest = state_dicts[0], state_dicts[-1]
    for index, state in enumerate(state_dicts[1:], start=1):
        if state.keys() != first.keys():
            different = sorted(set(state) ^ set(first))[:5]
            raise Error(f"{names[index]} has other tensors than {names[0]}: {different} (another model?)")
        for name, tensor in state.items():
            if tensor.shape != first[name].shape or tensor.dtype != first[name].dtype:
                raise Error(
                    f"{names[index]}: {name} is {tuple(tensor.shape)} {tensor.dtype}, {names[0]} has "
                    f"{tuple(first[name].shape)} {first[name].dtype} (another configuration?)"
                )
    averaged = {}
    for name, tensor in newest.items():
        if tensor.is_floating_point():
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            for state in state_dicts:
                total += state[name].to(torch.float64)
            averaged[name] = (total / len(state_dicts)).to(tensor.dtype).contiguous()
        else:
            averaged[name] = tensor.clone()
    return averaged


def average_checkpoints(run_dir, last=None, best=None, metric=None, output_dir=None, overwrite=False) -> Path:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    folders, chosen = choose(run_dir, last, best, metric)
    output_dir = Path(output_dir or Path(run_dir) / (f"average-last-{last}" if last else f"average-best-{best}"))
    inputs = {run_dir: f"the run folder {run_dir}", **{f: f"the checkpoint {f}" for f in folders}}
    check_output_folder(
        output_dir,
        inputs,
        overwrite,
        "a folder made by average_checkpoints.py",
        lambda folder: (folder / "averaging.json").is_file(),
        may_hold=[run_dir],
    )
    state_dicts = []
    for folder in folders:
        try:
            state_dicts.append(load_file(folder / "model.safetensors"))
        except (OSError, SafetensorError) as error:
            raise Error(
                f"{folder / 'model.safetensors'} cannot be read ({error}): the file is damaged or "
                "truncated; leave this checkpoint out (--last/--best choose others)"
            ) from None
    for folder, state in zip(folders, state_dicts):
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise Error(
                    f"{folder / 'model.safetensors'}: {name} holds NaN or infinite values; this "
                    "checkpoint is broken, leave it out (--last/--best choose others)"
                )
    averaged = average_state_dicts(state_dicts, [folder.name for folder in folders])
    del state_dicts
    newest = folders[-1]
    with staged_folder(output_dir, overwrite=overwrite) as staging:
        for path in newest.iterdir():
            if path.is_file() and not TRAINING_STATE.match(path.name):
                shutil.copy2(path, staging / path.name)
        save_file(averaged, staging / "model.safetensors", metadata={"format": "pt"})
        record = {
            **chosen,
            "checkpoints": [f.name for f in folders],
            "run_dir": Path(run_dir).resolve().name,
            "floating_point": "mean in float64",
            "integer": f"from {newest.name}",
        }
        (staging / "averaging.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        try:
            load_ctc_model(staging)  # refuse to publish a folder that does not load
        except ModelLoadError as error:
            raise Error(f"the averaged folder does not load: {error}") from None
    print(f"{output_dir}: the mean of {', '.join(f.name for f in folders)} ({chosen['method']})")
    return output_dir
