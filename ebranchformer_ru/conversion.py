"""Convert a course PyTorch Lightning checkpoint (E-Branchformer or QuartzNet) to a `from_pretrained` folder.

    ebranchformer-convert q5x5_ru_stride_4_crowd_epoch_4_step_9794.ckpt --output_dir models/quartznet5x5
    ebranchformer-convert my_ebranchformer.ckpt --output_dir models/ebranchformer --overwrite

The folder holds model.safetensors, config.json (with auto_map), the processor files, the code for
`trust_remote_code=True` and a model card naming the source checkpoint, its epoch and step.

- The architecture is detected from the keys (a given `--arch` must agree). Sizes are read from tensor
  shapes; what shapes cannot tell (attention heads, strides, dilations, batch-norm epsilon) comes from
  options whose defaults are the course configurations; an option of the other architecture is refused.
- The CTC head's outputs are the course's 34 symbols (space, а..я, blank) unless `--vocab` gives the
  vocabulary the model was trained with (a vocab.json: symbol -> output index); a head of another size
  without a vocabulary that fits is refused, since its outputs would decode as the wrong letters.
- Every source tensor must be used and every target parameter filled with the right shape; otherwise
  nothing is written and the error lists the missing, unexpected and mismatched keys.
- Positions: the course adds its (5000, 1, 256) sinusoidal table to batch-first activations, so item b of a
  batch gets row b on every frame; at batch size 1 that is the constant row 0. The converter folds row 0
  into the subsampling bias and turns positions off: the converted model computes exactly what the course
  model computes at batch size 1, for every utterance of a batch (the course's output depended on the
  utterance's place in the batch).
- A checkpoint is a pickle: it is read with `torch.load(weights_only=True)`, which runs no code. If that is
  refused (e.g. Hydra/OmegaConf objects in `hyper_parameters`), the error names the classes;
  `--inert_objects` then loads the tensors with those objects replaced by inert placeholders (still no code
  from the file runs), and `--unsafe_unpickle` unpickles fully (only for files you trust).
- The output folder appears complete or not at all, with the modes a plain write gives (umask respected).
  An existing one is replaced only with `--overwrite` and only if it holds nothing but model files; a folder
  that holds the checkpoint or the working directory, a symbolic link or a file is never replaced. Where the
  folder can go is checked before the checkpoint is read.
"""

import hashlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import modeling_ebranchformer
from ebranchformer_ru.files import OutputFolderError, staged_folder
from ebranchformer_ru.model_card import write_model_card
from ebranchformer_ru.summary import parameter_counts
from modeling_ebranchformer import (
    EBranchformerConfig,
    EBranchformerCTCTokenizer,
    EBranchformerFeatureExtractor,
    EBranchformerForCTC,
    EBranchformerProcessor,
    QuartzNetConfig,
    QuartzNetForCTC,
)
from modeling_ebranchformer.configuration_quartznet import COURSE_BLOCKS

from .errors import Error


class ConversionError(Error):
    """A checkpoint that cannot be converted; the message says why and what to do."""


# --- reading the checkpoint ---------------------------------------------------------------------------


class InertObject:
    """Stands in for a class the checkpoint names but we do not trust: it only records what it is given."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def check_checkpoint_file(path: Path):
    """Refuses, before anything is loaded or made, a checkpoint path that names no readable, non-empty file."""
    if path.is_dir():
        raise ConversionError(f"{path} is a folder: give the checkpoint file (a Lightning .ckpt or a saved state dict)")
    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as error:
        raise ConversionError(f"{path}: cannot read it ({error.strerror})") from None
    if empty:
        raise ConversionError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch the checkpoint again")


def load_checkpoint(path: str | Path, inert_objects=False, unsafe_unpickle=False) -> tuple[dict, dict]:
    """The state dict and the Lightning metadata (epoch, global_step, version) of a .ckpt or bare state dict."""
    path = Path(path)
    check_checkpoint_file(path)
    try:
        if unsafe_unpickle:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        elif inert_objects:
            checkpoint = _load_with_inert_objects(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except ConversionError:
        raise
    except Exception as error:  # torch raises pickle.UnpicklingError, RuntimeError, EOFError, ... by format
        refused = "weights_only" in str(error) or "Weights only load failed" in str(error)
        if refused and inert_objects:  # the placeholders did not suffice: only torch's reason can help
            raise ConversionError(
                f"{path}: torch.load(weights_only=True) refused it even with the classes it names replaced by inert "
                f"placeholders (--inert_objects): {_weights_only_reason(error)}\nOnly --unsafe_unpickle can load it, "
                "which runs whatever code the file names: use it only if you trust the file."
            ) from None
        if refused:
            names = _unsafe_globals(path)
            raise ConversionError(
                f"{path}: torch.load(weights_only=True) refused it: the pickle names classes or functions beyond "
                f"tensors and plain containers ({', '.join(names) or 'see below'}). Loading it fully would run "
                "whatever code those names point to. Rerun with --inert_objects to load the tensors with those "
                "objects replaced by inert placeholders (no code from the file runs), or with --unsafe_unpickle "
                f"only if you trust the file.\ntorch said: {_weights_only_reason(error)}"
            ) from None
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupted or another format): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None

    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict = checkpoint["state_dict"]
        meta = {k: checkpoint.get(k) for k in ("epoch", "global_step", "pytorch-lightning_version")}
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict, meta = checkpoint, {}
    else:
        raise ConversionError(
            f"{path}: neither a Lightning checkpoint (a dict with 'state_dict') nor a state dict of tensors "
            f"(got {type(checkpoint).__name__}{' with keys ' + str(sorted(checkpoint)[:8]) if isinstance(checkpoint, dict) else ''})"
        )
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: state_dict entries that are not tensors: {not_tensors[:8]}")
    return dict(state_dict), meta


def _weights_only_reason(error: Exception) -> str:
    """torch's own reason, without its advice: the text after "WeightsUnpickler error:", which may start on
    the next line, up to the pointer to the documentation."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith("Check the documentation")), "")


def _unsafe_globals(path: Path) -> list[str]:
    try:  # torch >= 2.5 lists them without unpickling anything
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []


def _load_with_inert_objects(path: Path):
    names = _unsafe_globals(path)
    stubs = [(type(name.rsplit(".", 1)[-1], (InertObject,), {"__module__": "inert"}), name) for name in names]
    with torch.serialization.safe_globals(stubs):
        return torch.load(path, map_location="cpu", weights_only=True)


# --- the vocabulary ---------------------------------------------------------------------------------------


def read_vocab(path) -> dict[str, int]:
    """A --vocab file: a JSON object mapping each symbol to its output index, like vocab.json in a model
    folder, with "|" for the space and "<pad>" for the CTC blank, and the indices 0..N-1 each once."""

    def refuse_repeats(pairs):
        symbols = [symbol for symbol, _ in pairs]
        repeated = sorted({symbol for symbol in symbols if symbols.count(symbol) > 1})
        if repeated:
            raise ConversionError(f"--vocab {path}: symbols listed twice: {repeated}")
        return dict(pairs)

    try:
        vocab = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=refuse_repeats)
    except OSError as error:
        raise ConversionError(f"--vocab {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        raise ConversionError(f"--vocab {path}: not a UTF-8 JSON file ({error})") from None
    if not isinstance(vocab, dict) or not all(type(index) is int for index in vocab.values()):
        raise ConversionError(
            f"--vocab {path}: expected a JSON object mapping each symbol to its output index, like "
            '{"|": 0, "а": 1, ..., "<pad>": 33} (modeling_ebranchformer/vocab.json)'
        )
    indices, size = sorted(vocab.values()), len(vocab)
    if indices != list(range(size)):
        problems = {
            "repeated": sorted({index for index in indices if indices.count(index) > 1}),
            "missing": sorted(set(range(size)) - set(indices)),
            "outside": [index for index in indices if not 0 <= index < size],
        }
        raise ConversionError(
            f"--vocab {path}: the {size} indices must be 0..{size - 1}, each once; "
            + "; ".join(f"{label}: {values[:8]}" for label, values in problems.items() if values)
        )
    for symbol, role in (("<pad>", "the CTC blank"), ("|", "the space")):
        if symbol not in vocab:
            hint = ' (write the space as "|", not " ")' if symbol == "|" and " " in vocab else ""
            raise ConversionError(f'--vocab {path}: no "{symbol}" ({role}), which the tokenizer needs{hint}')
    return vocab


def tokenizer_for_head(classes: int, vocab_path=None, vocab: dict | None = None) -> EBranchformerCTCTokenizer:
    """The tokenizer whose ids are the head's `classes` outputs: the course's, or the one `vocab_path` gives."""
    if vocab is None:
        tokenizer = EBranchformerCTCTokenizer()
        if classes != len(tokenizer):
            raise ConversionError(
                f"the CTC head (decoder.layers.0.weight) has {classes} outputs, but the course vocabulary has "
                f"{len(tokenizer)} (space, а..я, blank), so the outputs would decode as the wrong symbols. Pass "
                f"--vocab VOCAB.json mapping each of the {classes} outputs to its symbol, in the order the model was "
                'trained with ("|" for the space, "<pad>" for the CTC blank).'
            )
        return tokenizer
    if len(vocab) != classes:
        raise ConversionError(
            f"--vocab {vocab_path} has {len(vocab)} symbols but the CTC head (decoder.layers.0.weight) has {classes} "
            "outputs: give the vocabulary the model was trained with"
        )
    return EBranchformerCTCTokenizer(vocab_file=str(vocab_path))


# --- architecture detection and hyper-parameters --------------------------------------------------------


def strip_prefix(state_dict: dict) -> dict:
    """Lightning modules that wrap the model (self.model = ...) prefix every key with 'model.'."""
    if not any(k.startswith("encoder.") for k in state_dict) and all(k.startswith("model.") for k in state_dict):
        return {k[len("model.") :]: v for k, v in state_dict.items()}
    return state_dict


ARCHITECTURE_KEYS = {  # name: (key pattern, what it is, the keys in words)
    "ebranchformer": (r"encoder\.layers\.\d+\.cgmlp\.", "E-Branchformer", "encoder.layers.N.cgmlp.*"),
    "quartznet": (r"encoder\.layers\.\d+\.conv\.", "QuartzNet", "encoder.layers.N.conv.*"),
}


def detect_architecture(state_dict: dict, arch="auto") -> str:
    """The architecture the keys show; a given `arch` (--arch) must be the one they show."""
    shown = next(
        (name for name, (pattern, _, _) in ARCHITECTURE_KEYS.items() if any(re.match(pattern, k) for k in state_dict)),
        None,
    )
    if shown is None:
        raise ConversionError(
            "cannot tell the architecture: no 'encoder.layers.N.cgmlp.*' (E-Branchformer) or "
            f"'encoder.layers.N.conv.*' (QuartzNet) keys; first keys: {sorted(state_dict)[:8]}. "
            "This converter reads the course's layout (encoder.*, decoder.*, perhaps under 'model.'): is this a "
            "course checkpoint?"
        )
    if arch not in ("auto", shown):
        _, name, keys = ARCHITECTURE_KEYS[shown]
        raise ConversionError(
            f"--arch {arch}, but the checkpoint is a{'n' if name[0] in 'AEIOU' else ''} {name} (its keys have {keys}): "
            f"drop --arch or give --arch {shown}"
        )
    return shown


def _shape(state_dict, key, dims=None):
    if key not in state_dict:
        raise ConversionError(f"the checkpoint lacks {key!r}, needed to infer the configuration")
    shape = tuple(state_dict[key].shape)
    if dims is not None and len(shape) != dims:
        raise ConversionError(f"{key} has shape {shape}, expected {dims} dimensions")
    return shape


def _first_key(state_dict, *candidates):
    for key in candidates:
        if key in state_dict:
            return key
    return candidates[0]


def ebranchformer_config(state_dict: dict, args) -> tuple[EBranchformerConfig, str]:
    hidden, stacked = _shape(state_dict, "encoder.subsampling.out.weight", 2)
    if stacked % args.num_mel_bins:
        raise ConversionError(
            f"encoder.subsampling.out.weight takes {stacked} inputs, not a multiple of --num_mel_bins {args.num_mel_bins}"
        )
    layers = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    proj1 = _first_key(
        state_dict, "encoder.layers.0.cgmlp.channel_proj1.weight", "encoder.layers.0.cgmlp.channel_proj1.0.weight"
    )
    if any(".csgu.linear." in k for k in state_dict):
        raise ConversionError(
            "the checkpoint has cgmlp.csgu.linear (use_linear_after_conv=true), which the course "
            "configuration and this package do not use"
        )
    positions = args.positions
    pe = state_dict.get("encoder.pos_embedding.pe")
    if positions == "auto":
        positions = "batch-quirk" if pe is not None and pe.dim() == 3 and pe.shape[1] == 1 else "per-frame"
    config = EBranchformerConfig(
        vocab_size=_shape(state_dict, "decoder.layers.0.weight")[0],
        pad_token_id=args.blank_id,
        num_mel_bins=args.num_mel_bins,
        subsampling_stride=stacked // args.num_mel_bins,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=args.num_attention_heads,
        cgmlp_intermediate_size=_shape(state_dict, proj1)[0],
        cgmlp_conv_kernel_size=_shape(state_dict, "encoder.layers.0.cgmlp.csgu.conv.weight", 3)[-1],
        ffn_intermediate_size=_shape(state_dict, "encoder.layers.0.feed_forward1.linear1.weight")[0],
        merge_conv_kernel_size=_shape(state_dict, "encoder.layers.0.depthwise_conv_fusion.weight", 3)[-1],
        position_embedding_type="none" if positions == "batch-quirk" else "sinusoidal",
        max_position_embeddings=pe.shape[0] if pe is not None else 5000,
    )
    return config, positions


# Course E-Branchformer key -> ours. channel_proj1/2 may be Sequential(Linear, ...): ".0." is dropped.
EBRANCHFORMER_KEYS = [
    (r"encoder\.subsampling\.out\.", "ebranchformer.subsampling.projection."),
    (r"encoder\.layers\.(\d+)\.attn\.in_proj_(weight|bias)", r"ebranchformer.layers.\1.self_attn.qkv_proj.\2"),
    (r"encoder\.layers\.(\d+)\.attn\.out_proj\.", r"ebranchformer.layers.\1.self_attn.out_proj."),
    (r"encoder\.layers\.(\d+)\.cgmlp\.channel_proj([12])\.(?:0\.)?", r"ebranchformer.layers.\1.cgmlp.channel_proj\2."),
    (r"encoder\.layers\.(\d+)\.cgmlp\.csgu\.(norm|conv)\.", r"ebranchformer.layers.\1.cgmlp.csgu.\2."),
    (r"encoder\.layers\.(\d+)\.feed_forward([12])\.", r"ebranchformer.layers.\1.ffn\2."),
    (r"encoder\.layers\.(\d+)\.(norm_ffn1|norm_ffn2|norm_mha|norm_mlp|norm_final)\.", r"ebranchformer.layers.\1.\2."),
    (r"encoder\.layers\.(\d+)\.depthwise_conv_fusion\.", r"ebranchformer.layers.\1.merge.depthwise_conv."),
    (r"encoder\.layers\.(\d+)\.merge_proj\.", r"ebranchformer.layers.\1.merge.proj."),
    (r"decoder\.layers\.0\.", "lm_head."),
]


def map_ebranchformer(state_dict: dict, config: EBranchformerConfig, positions: str) -> tuple[dict, list[str]]:
    mapped, unexpected = {}, []
    source = dict(state_dict)
    pe = source.pop("encoder.pos_embedding.pe", None)
    for key, tensor in source.items():
        for pattern, replacement in EBRANCHFORMER_KEYS:
            if re.match(pattern, key):
                mapped[re.sub(pattern, replacement, key, count=1)] = tensor
                break
        else:
            unexpected.append(key)
    if "lm_head.weight" in mapped and mapped["lm_head.weight"].dim() == 3:
        mapped["lm_head.weight"] = mapped["lm_head.weight"][..., 0]  # Conv1d(k=1) -> Linear
    if pe is None:
        raise ConversionError("the checkpoint lacks encoder.pos_embedding.pe (the positional table)")
    table = pe.reshape(pe.shape[0], -1)
    if positions == "batch-quirk":
        # Row 0 on every frame at batch size 1 == a constant added to the subsampling output.
        key = "ebranchformer.subsampling.projection.bias"
        if key in mapped and mapped[key].shape == table[0].shape:
            mapped[key] = mapped[key] + table[0]
    else:
        ours = EBranchformerForCTC(config).ebranchformer.positions.make_table(config)
        if table.shape != ours.shape or (table - ours).abs().max() > 1e-4:
            raise ConversionError(
                f"encoder.pos_embedding.pe {tuple(pe.shape)} is not the sinusoidal table this package computes; "
                "--positions batch-quirk treats it as the course's (max_len, 1, d) table"
            )
    return mapped, unexpected


def quartznet_config(state_dict: dict, args) -> QuartzNetConfig:
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.layers\.(\d+)\.conv\.", k))})
    if blocks != list(range(len(blocks))):
        raise ConversionError(f"QuartzNet blocks are not numbered 0..N-1: found {blocks}")
    strides = args.block_strides or [b[3] for b in COURSE_BLOCKS]
    dilations = args.block_dilations or [b[4] for b in COURSE_BLOCKS]
    if len(strides) != len(blocks) or len(dilations) != len(blocks):
        raise ConversionError(
            f"the checkpoint has {len(blocks)} blocks but {len(strides)} strides and {len(dilations)} dilations: "
            "give --block_strides and --block_dilations (not stored in the weights)"
        )
    channels, repeats, kernels, residual, separable, biases = [], [], [], [], [], set()
    for block in blocks:
        modules = _modules(state_dict, f"encoder.layers.{block}.conv.")
        norms = [m for m in modules if m[1] == "norm"]
        convs = [m for m in modules if m[1] == "conv"]
        if not norms or len(convs) not in (len(norms), 2 * len(norms)):
            raise ConversionError(
                f"encoder.layers.{block}.conv: {len(convs)} convolutions and {len(norms)} batch norms do not form "
                "sub-blocks of (conv, batch norm) or (depthwise conv, pointwise conv, batch norm)"
            )
        channels.append(state_dict[norms[0][0] + "running_mean"].shape[0])
        repeats.append(len(norms))
        kernels.append(state_dict[convs[0][0] + "weight"].shape[-1])
        separable.append(len(convs) == 2 * len(norms))
        residual.append(any(k.startswith(f"encoder.layers.{block}.res.") for k in state_dict))
        biases.update(prefix + "bias" in state_dict for prefix, kind in modules if kind == "conv")
    if len(biases) != 1:
        raise ConversionError("some QuartzNet convolutions have biases and others not; this package expects either")
    decoder = _shape(state_dict, "decoder.layers.0.weight")
    return QuartzNetConfig(
        vocab_size=decoder[0],
        pad_token_id=args.blank_id,
        num_mel_bins=args.num_mel_bins,
        block_channels=channels,
        block_repeats=repeats,
        block_kernel_sizes=kernels,
        block_strides=strides,
        block_dilations=dilations,
        block_residual=residual,
        block_separable=separable,
        conv_bias=biases.pop(),
        batch_norm_eps=args.batch_norm_eps,
    )


def _natural(key: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


def _modules(state_dict: dict, prefix: str) -> list[tuple[str, str]]:
    """(module prefix, 'conv' | 'norm') under `prefix`, in module order, flat or nested alike: the order of
    the sub-blocks' modules is the numeric order of their paths."""
    found = {}
    for key in state_dict:
        if key.startswith(prefix):
            module, _, name = key.rpartition(".")
            found.setdefault(module + ".", set()).add(name)
    modules = []
    for module in sorted(found, key=_natural):
        names = found[module]
        if "running_mean" in names:
            kind = "norm"
        else:
            kind = "conv" if "weight" in names and state_dict[module + "weight"].dim() == 3 else "?"
        if kind == "?":
            raise ConversionError(f"{module}*: neither a convolution nor a batch norm ({sorted(names)})")
        modules.append((module, kind))
    return modules


def map_quartznet(state_dict: dict, config: QuartzNetConfig) -> tuple[dict, list[str]]:
    mapped, used = {}, set()
    for block, separable in enumerate(config.block_separable):
        ours = f"quartznet.blocks.{block}."
        convs = ["depthwise_conv", "pointwise_conv"] if separable else ["conv"]
        names = [f"sub_blocks.{i}.{part}." for i in range(config.block_repeats[block]) for part in [*convs, "norm"]]
        residual = ["residual.conv.", "residual.norm."] if config.block_residual[block] else []
        for source_prefix, names_here in (
            (f"encoder.layers.{block}.conv.", names),
            (f"encoder.layers.{block}.res.", residual),
        ):
            modules = _modules(state_dict, source_prefix)
            expected = ["norm" if n.endswith("norm.") else "conv" for n in names_here]
            if [kind for _, kind in modules] != expected:
                raise ConversionError(
                    f"{source_prefix}*: modules {[f'{m}({k})' for m, k in modules]} do not follow the expected "
                    f"order {expected}"
                )
            for (module, _), name in zip(modules, names_here):
                for key in state_dict:
                    if key.startswith(module) and "." not in key[len(module) :]:
                        mapped[ours + name + key[len(module) :]] = state_dict[key]
                        used.add(key)
    for suffix in ("weight", "bias"):
        key = f"decoder.layers.0.{suffix}"
        if key in state_dict:
            tensor = state_dict[key]
            mapped[f"lm_head.{suffix}"] = tensor[..., 0] if tensor.dim() == 3 else tensor
            used.add(key)
    return mapped, sorted(set(state_dict) - used)


def check_complete(model: torch.nn.Module, mapped: dict, unexpected: list[str]):
    """Every target parameter and buffer filled with the right shape, every source tensor used."""
    target = model.state_dict()
    optional = {k for k in target if k.endswith("num_batches_tracked")}  # not in older checkpoints; unused in eval
    missing = sorted(set(target) - set(mapped) - optional)
    unexpected = sorted(set(unexpected) | (set(mapped) - set(target)))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in set(target) & set(mapped)
        if mapped[k].shape != target[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if keys
        ]
        raise ConversionError("the checkpoint does not fit the model; nothing written.\n" + "\n".join(parts))


# --- writing the folder ---------------------------------------------------------------------------------


def convert(
    checkpoint_path,
    output_dir,
    arch="auto",
    overwrite=False,
    inert_objects=False,
    unsafe_unpickle=False,
    num_mel_bins=64,
    num_attention_heads=None,
    positions=None,
    block_strides=None,
    block_dilations=None,
    batch_norm_eps=None,
    vocab=None,
):
    """Converts and writes the folder; returns the model (eval mode) and a report dict.

    What can be checked without the weights (the options, the paths, the vocabulary, a writable place for
    the folder) is checked before the checkpoint is read, so a mistake costs no loading time. An option of
    the other architecture than the checkpoint's is refused, not ignored."""
    args = SimpleNamespace(
        arch=arch,
        inert_objects=inert_objects,
        unsafe_unpickle=unsafe_unpickle,
        num_mel_bins=num_mel_bins,
        num_attention_heads=num_attention_heads,
        positions=positions,
        block_strides=block_strides,
        block_dilations=block_dilations,
        batch_norm_eps=batch_norm_eps,
    )
    check_options(args)
    checkpoint_path, output_dir = Path(checkpoint_path), Path(os.path.abspath(output_dir))  # "." gets its name
    check_checkpoint_file(checkpoint_path)
    check_output_dir(output_dir, checkpoint_path, overwrite)
    vocabulary = read_vocab(vocab) if vocab is not None else None
    try:
        with staged_folder(
            output_dir, overwrite, check=lambda: check_output_dir(output_dir, checkpoint_path, overwrite)
        ) as staging:
            return _convert_into(staging, checkpoint_path, output_dir, args, vocab, vocabulary)
    except OutputFolderError as error:  # the staging folder could not be made: nothing was loaded
        raise ConversionError(
            f"{error.strerror} ({error.filename}). Choose a place where you may create folders."
        ) from None
    except OSError as error:
        raise ConversionError(
            f"writing {output_dir} failed: {error.strerror or error}; nothing written, an earlier folder is unchanged"
        ) from None


def _convert_into(staging: Path, checkpoint_path, output_dir, args, vocab, vocabulary):
    state_dict, meta = load_checkpoint(checkpoint_path, args.inert_objects, args.unsafe_unpickle)
    state_dict = strip_prefix(state_dict)
    arch = detect_architecture(state_dict, args.arch)
    _apply_architecture_options(args, arch)
    tokenizer = tokenizer_for_head(_shape(state_dict, "decoder.layers.0.weight")[0], vocab, vocabulary)
    args.blank_id = tokenizer.pad_token_id
    try:
        if arch == "ebranchformer":
            config, positions = ebranchformer_config(state_dict, args)
            model = EBranchformerForCTC(config)
            mapped, unexpected = map_ebranchformer(state_dict, config, positions)
        else:
            config = quartznet_config(state_dict, args)
            model = QuartzNetForCTC(config)
            mapped, unexpected = map_quartznet(state_dict, config)
    except ValueError as error:  # a config built from the shapes that the package rejects
        raise ConversionError(f"the checkpoint's shapes give an invalid configuration: {error}") from None
    check_complete(model, mapped, unexpected)
    model.load_state_dict(mapped, strict=False)  # strict except num_batches_tracked, checked above
    model.eval()

    processor = EBranchformerProcessor(tokenizer=tokenizer)
    report = {
        "source": str(checkpoint_path),
        "sha256": _sha256(checkpoint_path),
        "architecture": arch,
        "tensors": len(state_dict),
        "epoch": meta.get("epoch"),
        "global_step": meta.get("global_step"),
        "lightning": meta.get("pytorch-lightning_version"),
        "positions": positions if arch == "ebranchformer" else None,
        "counts": parameter_counts(model),
        "name": output_dir.name,
        "vocabulary": f"`{Path(vocab).name}`, {len(tokenizer)} symbols" if vocab else "the course's 34 symbols",
    }
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    write_model_card(staging, model_card(report), tags=[report["architecture"], "golos", "converted"])
    return model, report


def check_options(args):
    """Refuses option values that no checkpoint can use."""
    if args.inert_objects and args.unsafe_unpickle:
        raise ConversionError("--inert_objects and --unsafe_unpickle contradict each other: give one")
    for name, value, allowed in (
        ("arch", args.arch, ["auto", *ARCHITECTURE_KEYS]),
        ("positions", args.positions, ["auto", "batch-quirk", "per-frame"]),
    ):
        if value not in (None, *allowed):
            raise ConversionError(f"--{name} {value!r}: expected one of {allowed}")
    positive = [
        ("num_mel_bins", args.num_mel_bins),
        ("num_attention_heads", args.num_attention_heads),
        ("batch_norm_eps", args.batch_norm_eps),
        *(("block_strides", v) for v in args.block_strides or ()),
        *(("block_dilations", v) for v in args.block_dilations or ()),
    ]
    for name, value in positive:
        if value is not None and not value > 0:
            raise ConversionError(f"--{name} {value}: must be positive")
    for name in ("block_strides", "block_dilations"):
        if getattr(args, name) == []:
            raise ConversionError(f"--{name}: give one value per QuartzNet block")


# Options that only one architecture reads, with their course values; None means "not given".
ARCHITECTURE_OPTIONS = {
    "ebranchformer": {"num_attention_heads": 4, "positions": "auto"},
    "quartznet": {"block_strides": None, "block_dilations": None, "batch_norm_eps": 1e-5},
}


def _apply_architecture_options(args, arch: str):
    """Refuses options set for the other architecture (they would be ignored); fills this one's not given."""
    other = next(name for name in ARCHITECTURE_OPTIONS if name != arch)
    given = [name for name, course in ARCHITECTURE_OPTIONS[other].items() if getattr(args, name) not in (None, course)]
    if given:
        options = ", ".join("--" + name for name in given)
        raise ConversionError(
            f"{options} appl{'ies' if len(given) == 1 else 'y'} to {ARCHITECTURE_KEYS[other][1]} checkpoints, but this "
            f"one is {ARCHITECTURE_KEYS[arch][1]}: drop {'it' if len(given) == 1 else 'them'}"
        )
    for name, default in ARCHITECTURE_OPTIONS[arch].items():
        if getattr(args, name) is None:
            setattr(args, name, default)


# What a model folder of this package holds (save_pretrained of the model and processor, the copied code, the
# model card). --overwrite replaces only a folder holding nothing else: a mistyped output path must not delete
# a folder of other files.
MODEL_FOLDER_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "tokenizer.json",
    "README.md",
    *(path.name for path in Path(modeling_ebranchformer.__file__).parent.glob("*.py") if path.name != "__init__.py"),
}
MODEL_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def check_output_dir(output_dir: Path, checkpoint_path, overwrite: bool):
    """Refuses an output folder whose replacement would delete what the user did not ask to delete: one that
    holds the checkpoint or the current directory, a symbolic link, a file, an existing folder without
    --overwrite, or one with files a model folder does not hold. `output_dir` is absolute."""
    real = output_dir.resolve()
    inside = {
        Path(os.path.abspath(checkpoint_path)): f"the checkpoint {checkpoint_path}",
        Path.cwd(): "the current directory",
    }
    for path, what in [*inside.items(), *((path.resolve(), what) for path, what in inside.items())]:
        for folder in (output_dir, real):
            if path == folder or folder in path.parents:
                raise ConversionError(
                    f"{output_dir} {'is' if path == folder else 'contains'} {what}: the converted folder would replace "
                    "it. Choose another output folder."
                )
    if output_dir.is_symlink():
        raise ConversionError(
            f"{output_dir} is a symbolic link (to {os.readlink(output_dir)}): the converter would replace the link by "
            "a folder. Give the folder it points to, or remove the link."
        )
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ConversionError(f"{output_dir} is a file, not a folder: choose another output folder")
    if not overwrite:
        raise ConversionError(f"{output_dir} exists; pass --overwrite to replace it")
    foreign = sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in output_dir.iterdir()
        if entry.is_dir() or not (entry.name in MODEL_FOLDER_FILES or MODEL_SHARD.fullmatch(entry.name))
    )
    if foreign:
        listed = ", ".join(foreign[:8]) + (" ..." if len(foreign) > 8 else "")
        raise ConversionError(
            f"{output_dir} holds what a model folder does not ({listed}): --overwrite replaces only a folder of "
            "model files. Move those away or choose another output folder."
        )


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(report: dict) -> str:
    """The model card's description of a converted checkpoint (see `write_model_card`)."""
    counts = "\n".join(f"| {k} | {v:,} |" for k, v in report["counts"].items())
    positions = ""
    if report["positions"] == "batch-quirk":
        positions = """
The course code added row *b* of its positional table to every frame of batch item *b*, so its output
depended on an utterance's place in the batch. Row 0 (what an utterance gets at batch size 1) is folded
into the subsampling bias and positions are off (`position_embedding_type="none"`): this model gives every
utterance of any batch what the course model gave it at batch size 1.
"""
    return f"""{report["architecture"]} CTC model converted by `convert_checkpoint.py` from the course checkpoint
`{Path(report["source"]).name}` (sha256 `{report["sha256"][:16]}...`; epoch {report["epoch"]}, global step
{report["global_step"]}, Lightning {report["lightning"]}). {report["tensors"]} source tensors, all used.
Vocabulary: {report["vocabulary"]}.
{positions}
| parameters | count |
|---|---|
{counts}
"""


def check_signal(seconds=1.5, seed=0) -> np.ndarray:
    """A short deterministic test signal: a gliding tone with harmonics and a little noise."""
    t = np.arange(int(seconds * 16000)) / 16000
    f = 150 + 100 * t
    signal = sum(np.sin(2 * np.pi * k * np.cumsum(f) / 16000) / k for k in range(1, 6))
    return (0.3 * signal + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


# The saved folder, reloaded, must give the converted weights' log-probabilities within this.
RELOAD_TOLERANCE = 1e-5


def check_reload(model, output_dir, log=print) -> float:
    """Reloads the written folder as a reader would (`AutoModelForCTC`) and compares its log-probabilities with
    the converted model's on a 1.5 s test signal; returns the max abs difference, raises `ConversionError` above
    `RELOAD_TOLERANCE` (the folder is then written but not faithful: nothing must publish it)."""
    from transformers import AutoModelForCTC

    inputs = EBranchformerFeatureExtractor()(check_signal(), sampling_rate=16000, return_tensors="pt")
    reloaded = AutoModelForCTC.from_pretrained(output_dir).eval()
    with torch.no_grad():
        before, after = model(**inputs).logits.log_softmax(-1), reloaded(**inputs).logits.log_softmax(-1)
    difference = (before - after).abs().max().item()
    mismatch = not difference <= RELOAD_TOLERANCE  # NaN too
    log(
        f"check: the saved folder reloads and gives the converted weights' log-probabilities on a 1.5 s test "
        f"signal (max abs difference {difference:.1e}){'  MISMATCH' if mismatch else ''}"
    )
    if mismatch:
        raise ConversionError(
            f"{output_dir} reloads with other log-probabilities than the converted weights (max abs "
            f"difference {difference:.1e} > {RELOAD_TOLERANCE:g}): do not use or publish it; report "
            "the checkpoint and the versions of torch and transformers"
        )
    return difference
