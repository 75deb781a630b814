"""E-Branchformer encoder with a CTC head (Kim et al., 2022, arXiv:2210.00077).

One layer, pre-norm with macaron feed-forward modules:

    x = x + 1/2 FFN1(LN(x))
    g = MHA(LN(x))                         global branch: self-attention
    l = cgMLP(LN(x))                       local branch: convolutional gating MLP
    x = x + Merge(concat(g, l))            depthwise conv over time, then a projection
    x = LN(x + 1/2 FFN2(LN(x)))

It computes what ESPnet's `EBranchformerEncoderLayer` computes (absolute positions, plain self-attention),
with two differences. On purpose: padded frames are zeroed before every convolution over time, so an
utterance gives the same logits alone and in a padded batch. By configuration: ESPnet hard-codes LayerNorm
eps 1e-12, the course (and `layer_norm_eps` here) uses 1e-5. Against ESPnet 202511 with the same weights,
one layer's outputs differ by at most 9.5e-7 with `layer_norm_eps=1e-12` (float32 rounding) and 2.9e-5
with the default 1e-5, the difference of the LayerNorms (`python scripts/espnet_parity.py`).

Attention goes through Transformers' attention-function registry (`ALL_ATTENTION_FUNCTIONS`), so
`attn_implementation=` at load time and `model.set_attn_implementation(...)` at run time choose "sdpa" (the
default), "eager" (also used whatever the choice for `output_attentions`), "flex_attention", or a function
registered with `AttentionInterface.register`. The only mask is a key-padding mask. "sdpa", "eager" and
registered functions without a mask function of their own (`AttentionMaskInterface`) get it as booleans of
shape (B, 1, 1, T), True on real frames (SDPA's convention); other implementations get the mask Transformers
builds for them (a BlockMask for flex_attention). Flash-attention is not offered: it would need the batch
unpadded into variable-length sequences, more code than a dense masked kernel costs at Golos lengths (at most
418 encoder steps after the course filter).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
from transformers.utils import can_return_tuple
from transformers.utils.import_utils import is_tracing

from .configuration import EBranchformerConfig
from .ctc import CTCEncoderOutput, CTCGenerationMixin, CTCHead, Float32Linear, check_input_features, ctc_loss


class EBranchformerDropout(nn.Dropout):
    """`nn.Dropout`, with the mask drawn by `uniform_` on CPU: there `bernoulli_` is 2x slower and dropout
    (65 calls per step) took a sixth of a training step. Same distribution; other devices use F.dropout."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or hidden_states.device.type != "cpu":
            return F.dropout(hidden_states, self.p, self.training)
        keep = torch.empty_like(hidden_states).uniform_() >= self.p
        return hidden_states * keep * (1.0 / (1.0 - self.p))


class EBranchformerStackingSubsampling(nn.Module):
    """Stacks `stride` consecutive frames into one vector and projects it: (B, T, F) -> (B, ceil(T/stride), H)."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        self.stride = config.subsampling_stride
        # In float32 under autocast, so that the residual stream starts, and stays, in float32: the layers add their
        # branches' bf16 outputs to it, and the layer norms keep their input's dtype on a CPU. From a bf16 start
        # the whole stream would be bf16, rounded at every addition. Kept float32, bf16's difference from float32
        # is about 30 % smaller on the main job's model, for 3-5 % of bf16 inference's speed (docs/precision.md).
        self.projection = Float32Linear(config.subsampling_stride * config.num_mel_bins, config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, frames, bins = features.shape
        features = F.pad(features, (0, 0, 0, -frames % self.stride))
        return self.projection(features.reshape(batch, -1, self.stride * bins))


class EBranchformerSinusoidalPositions(nn.Module):
    """Adds the sin/cos table of "Attention is all you need" (sin on even, cos on odd channels), then dropout."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        self.dropout = EBranchformerDropout(config.dropout)
        # Derived from the config, so not saved with the weights (persistent=False).
        self.register_buffer("table", self.make_table(config), persistent=False)

    @staticmethod
    def make_table(config: EBranchformerConfig) -> torch.Tensor:
        position = torch.arange(config.max_position_embeddings, dtype=torch.float32)[:, None]
        inv_freq = torch.exp(torch.arange(0, config.hidden_size, 2).float() * (-math.log(10000.0) / config.hidden_size))
        table = torch.zeros(config.max_position_embeddings, config.hidden_size)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq)
        return table

    def forward(self, hidden_states: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """`offset` (B,): the steps of each stream before this chunk; None: the input starts at step 0."""
        steps = hidden_states.shape[1]
        if offset is None:
            if steps > self.table.shape[0]:
                raise ValueError(
                    f"Input of {steps} encoder steps is longer than max_position_embeddings "
                    f"({self.table.shape[0]}); split the audio (e.g. pipeline(..., chunk_length_s=30))"
                )
            return self.dropout(hidden_states + self.table[:steps].to(hidden_states.dtype))
        rows = offset[:, None] + torch.arange(steps, device=offset.device)
        if not is_tracing(rows) and int(rows.max()) >= self.table.shape[0]:
            raise ValueError(
                f"A stream of {int(rows.max()) + 1} encoder steps is longer than max_position_embeddings "
                f"({self.table.shape[0]}): start a new cache (ebranchformer_ru's streaming does at an endpoint), "
                "or train the streaming model with position_embedding_type='none'"
            )
        return self.dropout(hidden_states + self.table[rows].to(hidden_states.dtype))


class EBranchformerFeedForward(nn.Module):
    """FFN: Linear -> Swish -> dropout -> Linear (used twice per layer, macaron style, with weight 1/2)."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        self.linear1 = nn.Linear(config.hidden_size, config.ffn_intermediate_size)
        self.linear2 = nn.Linear(config.ffn_intermediate_size, config.hidden_size)
        self.dropout = EBranchformerDropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.silu(self.linear1(hidden_states))))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """softmax(Q K^T * scaling) V over (B, heads, T, head_dim), as Transformers' attention functions take it.
    `attention_mask`: booleans, True on keys to attend (SDPA's convention), or an additive float mask (0 or a
    large negative, Transformers' eager masks); broadcast to (B, heads, T, T); None when nothing is padded.
    Returns the context as (B, T, heads, head_dim) and the attention probabilities."""
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = F.dropout(scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype), dropout, module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


class EBranchformerSelfAttention(nn.Module):
    """Global branch: multi-head self-attention with a key padding mask, through Transformers' attention
    functions (`config._attn_implementation`: SDPA by default)."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # read by Transformers' sdpa_attention_forward
        # One fused projection for queries, keys and values: one matmul instead of three.
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, attention_mask, output_attentions=False, cache=None):
        """`attention_mask`: made by `EBranchformerModel.layer_attention_mask` for this implementation (for
        `output_attentions`, for eager); None when nothing is padded and attention is not in chunks. `cache`: a
        stream's `EBranchformerLayerCache`, whose keys and values of earlier chunks the chunk attends to."""
        batch, steps, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, steps, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        if cache is not None:
            key, value = cache.attend(key, value)
        dropout = self.config.attention_dropout if self.training else 0.0
        # Only eager attention computes the probabilities that output_attentions returns.
        attention_interface = (
            eager_attention_forward
            if output_attentions
            else ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        )
        context, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask=attention_mask,
            dropout=dropout,
            scaling=self.scaling,
        )
        return self.out_proj(context.reshape(batch, steps, -1)), weights if output_attentions else None


def masked_depthwise_conv(
    conv: nn.Conv1d, hidden_states: torch.Tensor, frame_mask: torch.Tensor | None, context="full", past=None, chunk=None
):
    """Depthwise convolution over time of (B, T, C). Padded frames are zeroed first so they cannot leak
    into real ones: a padded batch then gives each utterance the result it gets alone. `context`
    (`EBranchformerConfig.convolution_context`): "full", the window centred on the frame; "causal", the window ends
    at the frame, its `kernel - 1` frames of left context being zeros at the start or, for a stream, `past` (the
    input frames before this chunk); "chunk", centred but blind past the end of the frame's attention chunk of
    `chunk` frames (None: full context), or, for a stream, the input is one chunk and `past` the half kernel
    before it."""
    if frame_mask is not None:  # in the input's dtype: under autocast a float32 mask would make bf16 inputs float32
        hidden_states = hidden_states * frame_mask.to(hidden_states.dtype)
    half = conv.padding[0]
    if context == "chunk" and past is None and chunk is not None:
        return chunk_depthwise_conv(conv, hidden_states, chunk)
    if past is None and context == "causal":
        past = hidden_states.new_zeros(hidden_states.shape[0], 2 * half, hidden_states.shape[2])
    if past is not None:  # a stream's chunk (or a causal window): its left context given, and a chunk ends in zeros
        parts = [past, hidden_states]
        if context == "chunk":
            parts.append(hidden_states.new_zeros(hidden_states.shape[0], half, hidden_states.shape[2]))
        hidden_states, half = torch.cat(parts, dim=1), 0
    return depthwise_conv2d(conv, hidden_states, half).squeeze(2).transpose(1, 2)


def depthwise_conv2d(conv: nn.Conv1d, hidden_states: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """`conv` over time of (B, T, C), as a 2-D convolution over (B, C, 1, T), whose output (B, C, 1, T') it gives:
    on CPU oneDNN's depthwise conv2d kernel is 3x (training) to 50x (inference) faster than its conv1d path, and
    the results are identical."""
    inputs = hidden_states.transpose(1, 2).unsqueeze(2)
    if torch.compiler.is_compiling():
        # Inductor's `freezing` packs this convolution for oneDNN, and with dynamic shapes that pass fails on a
        # channels-last input (PyTorch 2.13). It compiles a contiguous one, which eager oneDNN runs 9x slower.
        inputs = inputs.contiguous()
    return F.conv2d(inputs, conv.weight.unsqueeze(2), conv.bias, padding=(0, padding), groups=conv.groups)


def chunk_depthwise_conv(conv: nn.Conv1d, hidden_states: torch.Tensor, chunk: int) -> torch.Tensor:
    """The dynamic chunk convolution over (B, T, C): every chunk of `chunk` frames convolved with the half kernel
    of frames before it and zeros after it, as a stream computes it chunk by chunk. The chunks become a batch of
    windows `chunk + kernel - 1` long, gathered by index (which the ONNX exporter follows for any length, where it
    cannot follow `unfold`): a copy (chunk + kernel - 1) / chunk times the input, kept for the backward pass, so the
    smallest chunks of dynamic chunk training cost the most memory (31x at chunk 1 with the merge kernel of 31)."""
    batch, steps, channels = hidden_states.shape
    half, count = conv.padding[0], (steps + chunk - 1) // chunk
    padded = F.pad(hidden_states, (0, 0, half, count * chunk - steps))  # (B, half + count * chunk, C)
    starts = torch.arange(count, device=hidden_states.device) * chunk
    index = starts[:, None] + torch.arange(chunk + half, device=hidden_states.device)  # the half kernel, the chunk
    windows = F.pad(padded[:, index], (0, 0, 0, half))  # (B, count, chunk + 2 * half, C): zeros after the chunk
    output = depthwise_conv2d(conv, windows.reshape(-1, chunk + 2 * half, channels))  # (B * count, C, 1, chunk)
    return output.reshape(batch, -1, channels, chunk).transpose(2, 3).reshape(batch, -1, channels)[:, :steps]


class EBranchformerCSGUConv(nn.Conv1d):
    """The CSGU's depthwise convolution over time. A class of its own because it has an initialisation of
    its own (see `_init_weights`), and Transformers initialises the modules that own parameters."""


class EBranchformerCSGU(nn.Module):
    """Convolutional spatial gating unit: value half * depthwise_conv(LayerNorm(gate half))."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        channels = config.cgmlp_intermediate_size // 2
        kernel = config.cgmlp_conv_kernel_size
        self.norm = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.conv = EBranchformerCSGUConv(channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels)
        self.context = config.convolution_context
        self.dropout = EBranchformerDropout(config.dropout)

    def forward(self, hidden_states, frame_mask, cache=None, chunk=None):
        value, gate = hidden_states.chunk(2, dim=-1)
        gate = self.norm(gate)
        past = cache.convolve("gate", gate) if cache is not None else None
        gate = masked_depthwise_conv(self.conv, gate, frame_mask, self.context, past, chunk)
        return self.dropout(value * gate)


class EBranchformerCgMLP(nn.Module):
    """Local branch, the convolutional gating MLP: Linear -> GELU -> CSGU -> Linear."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        self.channel_proj1 = nn.Linear(config.hidden_size, config.cgmlp_intermediate_size)
        self.csgu = EBranchformerCSGU(config)
        self.channel_proj2 = nn.Linear(config.cgmlp_intermediate_size // 2, config.hidden_size)

    def forward(self, hidden_states, frame_mask, cache=None, chunk=None):
        return self.channel_proj2(self.csgu(F.gelu(self.channel_proj1(hidden_states)), frame_mask, cache, chunk))


class EBranchformerMerge(nn.Module):
    """Merges the two branches: concat -> (identity + depthwise conv over time) -> projection back to the width."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        channels = 2 * config.hidden_size
        kernel = config.merge_conv_kernel_size
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels)
        self.context = config.convolution_context
        self.proj = nn.Linear(channels, config.hidden_size)

    def forward(self, global_branch, local_branch, frame_mask, cache=None, chunk=None):
        merged = torch.cat([global_branch, local_branch], dim=-1)
        past = cache.convolve("merge", merged) if cache is not None else None
        convolved = masked_depthwise_conv(self.depthwise_conv, merged, frame_mask, self.context, past, chunk)
        return self.proj(merged + convolved)


class EBranchformerLayer(GradientCheckpointingLayer):
    def __init__(self, config: EBranchformerConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.norm_ffn1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.ffn1 = EBranchformerFeedForward(config)
        self.norm_mha = nn.LayerNorm(config.hidden_size, eps=eps)
        self.self_attn = EBranchformerSelfAttention(config)
        self.norm_mlp = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cgmlp = EBranchformerCgMLP(config)
        self.merge = EBranchformerMerge(config)
        self.norm_ffn2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.ffn2 = EBranchformerFeedForward(config)
        self.norm_final = nn.LayerNorm(config.hidden_size, eps=eps)
        self.dropout = EBranchformerDropout(config.dropout)

    def forward(
        self, hidden_states, frame_mask=None, attention_mask=None, output_attentions=False, cache=None, chunk=None
    ):
        """`cache`: a stream's `EBranchformerLayerCache` when the input is the next chunk of a stream; `chunk`: the
        attention chunk (in steps) of a forward over whole recordings, for chunk convolutions."""
        hidden_states = hidden_states + 0.5 * self.dropout(self.ffn1(self.norm_ffn1(hidden_states)))

        global_branch, attention = self.self_attn(
            self.norm_mha(hidden_states), attention_mask, output_attentions, cache
        )
        local_branch = self.cgmlp(self.norm_mlp(hidden_states), frame_mask, cache, chunk)
        merged = self.merge(self.dropout(global_branch), self.dropout(local_branch), frame_mask, cache, chunk)
        hidden_states = hidden_states + self.dropout(merged)

        hidden_states = hidden_states + 0.5 * self.dropout(self.ffn2(self.norm_ffn2(hidden_states)))
        return self.norm_final(hidden_states), attention


def chunk_attention_mask(steps: int, chunk_size: int, left_chunks: int, device) -> torch.Tensor:
    """(T, T) booleans, True where query frame i may attend to key frame j: j's chunk is i's own or one of the
    `left_chunks` before it (all of them for -1). What `stream_step` sees, chunk by chunk, from its cache."""
    chunk = torch.arange(steps, device=device) // chunk_size
    behind = chunk[:, None] - chunk[None, :]
    return (behind >= 0) & (behind <= left_chunks) if left_chunks >= 0 else behind >= 0


class EBranchformerLayerCache:
    """One layer's state in a stream: the keys and values of the earlier chunks its attention may still see,
    and the last inputs of each convolution (`kernel - 1` of a causal one, half that of a chunk one). Modules read
    it and write its next value as new tensors, never into the ones it held: a forked cache shares them
    (`EBranchformerStreamingCache.fork`)."""

    def __init__(self, keys, values, gate, merge, max_keys: int | None, room=None):
        self.keys, self.values, self.gate, self.merge, self.max_keys = keys, values, gate, merge, max_keys
        self.room = room  # None, or (keys, values) buffers that hold `keys` and `values` followed by free slots

    def attend(self, key, value):
        """The keys and values of the cache and the chunk, for the chunk's attention; keeps the last `max_keys`, in
        the cache's dtype (under autocast the chunk's may differ: attention casts them all alike). Where `stack`
        left the chunk's slots free after the cached keys, they are filled in place: concatenating copied every
        cached key again, which at 128 streams cost more than the attention itself."""
        key, value = key.to(self.keys.dtype), value.to(self.values.dtype)
        if self.room is not None and self.room[0].shape[2] == self.keys.shape[2] + key.shape[2]:
            for buffer, new in zip(self.room, (key, value)):
                buffer[:, :, self.keys.shape[2] :].copy_(new)
            key, value = self.room
        else:
            key, value = torch.cat([self.keys, key], 2), torch.cat([self.values, value], 2)
        self.keys, self.values, self.room = latest(key, self.max_keys, 2), latest(value, self.max_keys, 2), None
        return key, value

    def convolve(self, name: str, inputs):
        """The convolution `name`'s inputs before this chunk; keeps as many of the latest as it held, in its dtype
        (under CUDA autocast the gate's norm gives float32; the convolution casts its input to bf16 all the same)."""
        past = getattr(self, name)
        setattr(self, name, latest(torch.cat([past, inputs.to(past.dtype)], dim=1), past.shape[1], 1))
        return past


def cached_keys(chunk_size: int, left_chunks: int) -> int | None:
    """How many earlier frames' keys a stream keeps: `left_chunks` chunks' worth (None: all, for -1)."""
    return None if left_chunks < 0 else left_chunks * chunk_size


def latest(tensor: torch.Tensor, count: int | None, dim: int) -> torch.Tensor:
    """The last `count` entries of `tensor` along `dim` (all for None). Sliced from the end by a constant, so that
    a traced graph (the ONNX chunk step) keeps them whatever the chunk's length."""
    if count is None:
        return tensor
    return tensor.narrow(dim, 0, 0) if count == 0 else tensor[(slice(None),) * dim + (slice(-count, None),)]


class EBranchformerStreamingCache:
    """What a chunk-by-chunk recogniser keeps between chunks of B streams: every layer's `EBranchformerLayerCache`,
    `key_mask` (B, keys), False on cache slots a stream has not filled yet, and `offset` (B,), the encoder steps
    each stream has had. Made by `EBranchformerModel.new_cache`; `stack` and `split` batch streams; `tensors` and
    `from_tensors` are its form as the inputs and outputs of the ONNX chunk step."""

    def __init__(self, layers, key_mask, offset, chunk_size: int, left_chunks: int):
        self.layers, self.key_mask, self.offset = layers, key_mask, offset
        self.chunk_size, self.left_chunks = chunk_size, left_chunks

    @property
    def max_keys(self) -> int | None:
        return cached_keys(self.chunk_size, self.left_chunks)

    def keys_mask(self, steps: int) -> torch.Tensor:
        """(B, cached keys + steps): which keys a chunk of `steps` frames attends to (all of its own)."""
        return torch.cat([self.key_mask, self.key_mask.new_ones(self.key_mask.shape[0], steps)], dim=1)

    def advance(self, mask: torch.Tensor, steps: int):
        """After a chunk of `steps` frames whose keys were `mask` (`keys_mask`): its keys are real in every stream."""
        self.key_mask, self.offset = latest(mask, self.max_keys, 1), self.offset + steps

    @classmethod
    def stack(cls, caches: list["EBranchformerStreamingCache"]) -> "EBranchformerStreamingCache":
        """One cache for a batch of streams (of one chunk size and left context); shorter key caches are padded
        in front with masked slots."""
        first = caches[0]
        slots = max(cache.key_mask.shape[1] for cache in caches)

        def pad(tensor, dim):  # left-pad the key axis `dim` to `slots`
            missing = slots - tensor.shape[dim]
            return (
                tensor
                if missing == 0
                else torch.cat([tensor.new_zeros(*tensor.shape[:dim], missing, *tensor.shape[dim + 1 :]), tensor], dim)
            )

        def with_room(tensors):  # stacked into a buffer with a chunk's free key slots after them (see `attend`)
            buffer = tensors[0].new_empty(
                len(tensors), tensors[0].shape[1], slots + first.chunk_size, tensors[0].shape[3]
            )
            return torch.cat(tensors, out=buffer[:, :, :slots]), buffer

        layers = []
        for i in range(len(first.layers)):
            rows = [cache.layers[i] for cache in caches]
            (keys, keys_room), (values, values_room) = (
                with_room([pad(getattr(row, name), 2) for row in rows]) for name in ("keys", "values")
            )
            gate, merge = torch.cat([row.gate for row in rows]), torch.cat([row.merge for row in rows])
            layers.append(EBranchformerLayerCache(keys, values, gate, merge, first.max_keys, (keys_room, values_room)))
        key_mask = torch.cat([pad(cache.key_mask, 1) for cache in caches])
        offset = torch.cat([cache.offset for cache in caches])
        return cls(layers, key_mask, offset, first.chunk_size, first.left_chunks)

    def tensors(self) -> dict:
        """The cache as stacked tensors: keys and values (layers, B, heads, keys, head_dim), the convolutions' inputs
        gate_inputs (layers, B, frames, channels; kernel - 1 frames, or half that for chunk convolutions) and
        merge_inputs, key_mask (B, keys), offset (B,)."""
        return {
            "keys": torch.stack([layer.keys for layer in self.layers]),
            "values": torch.stack([layer.values for layer in self.layers]),
            "gate_inputs": torch.stack([layer.gate for layer in self.layers]),
            "merge_inputs": torch.stack([layer.merge for layer in self.layers]),
            "key_mask": self.key_mask,
            "offset": self.offset,
        }

    @classmethod
    def from_tensors(cls, tensors: dict, chunk_size: int, left_chunks: int) -> "EBranchformerStreamingCache":
        max_keys = cached_keys(chunk_size, left_chunks)
        layers = [
            EBranchformerLayerCache(*parts, max_keys)
            for parts in zip(
                tensors["keys"].unbind(0),
                tensors["values"].unbind(0),
                tensors["gate_inputs"].unbind(0),
                tensors["merge_inputs"].unbind(0),
            )
        ]
        return cls(layers, tensors["key_mask"], tensors["offset"], chunk_size, left_chunks)

    def split(self) -> list["EBranchformerStreamingCache"]:
        """One cache per stream, the inverse of `stack`."""
        caches = []
        for b in range(self.offset.shape[0]):
            row = slice(b, b + 1)
            layers = [
                EBranchformerLayerCache(
                    layer.keys[row], layer.values[row], layer.gate[row], layer.merge[row], layer.max_keys
                )
                for layer in self.layers
            ]
            caches.append(type(self)(layers, self.key_mask[row], self.offset[row], self.chunk_size, self.left_chunks))
        return caches

    def fork(self) -> "EBranchformerStreamingCache":
        """A copy that a step may move on while this one stays as it was (a look ahead at a chunk not yet complete).
        A step gives each layer's cache new tensors and writes none of those it held (`EBranchformerLayerCache`
        writes in place only the free slots of a buffer that `stack` made for the step), so new holders suffice."""
        layers = [
            EBranchformerLayerCache(layer.keys, layer.values, layer.gate, layer.merge, layer.max_keys)
            for layer in self.layers
        ]
        return type(self)(layers, self.key_mask, self.offset, self.chunk_size, self.left_chunks)


class EBranchformerPreTrainedModel(PreTrainedModel):
    config_class = EBranchformerConfig
    base_model_prefix = "ebranchformer"
    main_input_name = "input_features"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EBranchformerLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False  # see the module's docstring
    _supports_attention_backend = True  # functions registered with AttentionInterface
    _can_compile_fullgraph = True  # torch.compile(fullgraph=True): no data-dependent branch while compiling

    def _init_weights(self, module):
        super()._init_weights(module)  # normal(0, initializer_range) weights, zero biases, unit LayerNorms
        if isinstance(module, EBranchformerCSGUConv):
            # As ESPnet: the gate starts as ~1 (tiny conv weights, unit bias), so a fresh cgMLP passes
            # its value half through and training starts from a plain MLP.
            init.normal_(module.weight, std=1e-6)
            init.ones_(module.bias)
        elif isinstance(module, EBranchformerSinusoidalPositions):
            init.copy_(module.table, module.make_table(self.config))

    def get_output_lengths(self, feature_lengths: torch.LongTensor) -> torch.LongTensor:
        """Encoder steps (= CTC frames) for inputs of `feature_lengths` frames: ceil(frames / stride)."""
        stride = self.config.subsampling_stride
        return torch.div(feature_lengths + stride - 1, stride, rounding_mode="floor")


class EBranchformerModel(EBranchformerPreTrainedModel):
    """The encoder: stacking subsampling, positions, E-Branchformer layers."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__(config)
        self.subsampling = EBranchformerStackingSubsampling(config)
        if config.position_embedding_type == "sinusoidal":
            self.positions = EBranchformerSinusoidalPositions(config)
        else:
            self.positions = EBranchformerDropout(config.dropout)
        self.layers = nn.ModuleList(EBranchformerLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.post_init()

    def _spec_augment(self, features: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """SpecAugment on log-mel features: time and frequency bands are set to the utterance's mean value
        (a neutral level for a log spectrum, unlike 0 = log 1)."""
        if not (self.config.apply_spec_augment and self.training):
            return features
        batch, frames, bins = features.shape
        valid = attention_mask[..., None] if attention_mask is not None else torch.ones_like(features[..., :1])
        mean = (features * valid).sum(dim=(1, 2), keepdim=True) / (valid.sum(dim=(1, 2), keepdim=True) * bins)
        if self.config.mask_time_prob > 0:
            time_mask = _compute_mask_indices(
                (batch, frames),
                self.config.mask_time_prob,
                self.config.mask_time_length,
                attention_mask=attention_mask,
                min_masks=self.config.mask_time_min_masks,
            )
            time_mask = torch.as_tensor(time_mask, device=features.device)[..., None]
            features = torch.where(time_mask, mean, features)
        if self.config.mask_feature_prob > 0:
            bin_mask = _compute_mask_indices(
                (batch, bins),
                self.config.mask_feature_prob,
                self.config.mask_feature_length,
                min_masks=self.config.mask_feature_min_masks,
            )
            bin_mask = torch.as_tensor(bin_mask, device=features.device)[:, None, :]
            features = torch.where(bin_mask, mean, features)
        return features

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> CTCEncoderOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`):
            Log-mel features from `EBranchformerFeatureExtractor`.
        attention_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*):
            1 for real frames, 0 for padding. Without it every frame counts as real.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        check_input_features(input_features, self.config.num_mel_bins)

        batch, frames, _ = input_features.shape
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
            # Padding frames are zeros, whatever value the caller padded with: the course pads with zeros.
            input_features = input_features * attention_mask[..., None].to(input_features.dtype)
            output_lengths = self.get_output_lengths(attention_mask.sum(-1))
        else:
            output_lengths = self.get_output_lengths(torch.full((batch,), frames, device=input_features.device))
        input_features = self._spec_augment(input_features, attention_mask)

        hidden_states = self.positions(self.subsampling(input_features))
        steps = hidden_states.shape[1]
        frame_mask = valid = None
        # Skipping the masks when nothing is padded saves work on CPU (where asking is free), but the answer is a
        # value on the host: a synchronisation on a GPU, where masking regardless is the cheaper choice, and a
        # data-dependent branch that torch.export, torch.compile and the ONNX tracer cannot follow, so traced and
        # compiled graphs always mask (a mask of ones changes nothing).
        padded = attention_mask is not None and (
            hidden_states.device.type != "cpu" or is_tracing(hidden_states) or bool((output_lengths < steps).any())
        )
        if padded:
            valid = torch.arange(steps, device=hidden_states.device) < output_lengths[:, None]  # (B, T)
            frame_mask = valid[..., None].to(hidden_states.dtype)  # (B, T, 1) multiplies hidden states
        chunk = self.attention_chunk(steps)
        attention_mask = self.layer_attention_mask(hidden_states, valid, output_attentions, chunk)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attention = layer(hidden_states, frame_mask, attention_mask, output_attentions, chunk=chunk)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attention,)

        return CTCEncoderOutput(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            output_lengths=output_lengths,
        )

    def attention_chunk(self, steps: int) -> int | None:
        """The attention chunk of this forward, in encoder steps (None: full context). `dynamic_chunk_training`
        draws one per training batch as WeNet's U2 does: a number in [1, steps]; above steps / 2 (half of the
        time) full context, otherwise a chunk of 1 to `dynamic_chunk_max_size` steps."""
        config = self.config
        if not (self.training and config.dynamic_chunk_training):
            return config.streaming_chunk_size
        draw = int(torch.randint(1, steps + 1, ()))
        return None if draw > steps // 2 else draw % config.dynamic_chunk_max_size + 1

    def layer_attention_mask(self, hidden_states, valid, output_attentions=False, chunk_size=None):
        """The attention mask for the implementation that will run: `valid` (B, T), True on real frames, and
        under `chunk_size` the chunks each frame may see (`chunk_attention_mask`), as booleans (B or 1, 1, 1 or
        T, T) for eager, SDPA and registered functions without a mask function of their own; otherwise what
        Transformers makes for the implementation (a BlockMask for flex_attention). None when nothing is padded
        (`valid` None) and attention is not in chunks."""
        implementation = "eager" if output_attentions else self.config._attn_implementation
        if valid is None and chunk_size is None:
            return None
        left = self.config.streaming_left_chunks
        if implementation in ("eager", "sdpa") or implementation not in ALL_MASK_ATTENTION_FUNCTIONS:
            mask = valid[:, None, None, :] if valid is not None else None
            if chunk_size is None:
                return mask
            chunks = chunk_attention_mask(hidden_states.shape[1], chunk_size, left, hidden_states.device)
            return chunks[None, None] if mask is None else mask & chunks
        if valid is None:
            valid = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)

        def in_chunks(batch, head, query, key):
            behind = query // chunk_size - key // chunk_size
            return (behind >= 0) & (behind <= left) if left >= 0 else behind >= 0

        return create_bidirectional_mask(
            self.config,
            hidden_states,
            valid,
            and_mask_function=in_chunks if chunk_size is not None else None,
            allow_is_bidirectional_skip=False,
        )

    def new_cache(self, batch_size=1, chunk_size=None, left_chunks=None, dtype=None) -> EBranchformerStreamingCache:
        """An empty cache for `batch_size` streams recognised in chunks of `chunk_size` encoder steps (default:
        the config's `streaming_chunk_size`) with `left_chunks` earlier chunks of attention (default the
        config's). The convolutions' left context starts as the zeros the full forward pads with. `dtype`: that
        of the keys, values and convolution inputs it keeps (default the parameters'); under bf16 autocast they
        are computed in bfloat16, and a float32 cache would only hold them twice as large, to be cast back."""
        config = self.config
        if config.convolution_context == "full":
            raise ValueError(
                "This model's convolutions look ahead (causal_convolutions and chunk_convolutions False): it cannot "
                "recognise chunk by chunk; decode whole recordings, or train a streaming model (docs/streaming.md)"
            )
        chunk_size = chunk_size or config.streaming_chunk_size
        if chunk_size is None:
            raise ValueError("Give chunk_size: the config sets no streaming_chunk_size")
        left_chunks = config.streaming_left_chunks if left_chunks is None else left_chunks
        parameter = next(self.parameters())
        heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads

        def zeros(*shape):
            return torch.zeros(batch_size, *shape, dtype=dtype or parameter.dtype, device=parameter.device)

        # A bounded cache has its full size from the start, its slots masked until filled: every chunk step has the
        # same shapes, so streams at any point batch together and the step traces into one graph.
        max_keys = cached_keys(chunk_size, left_chunks)
        look_back = 2 if config.causal_convolutions else 1  # frames of left context: kernel - 1, or half of that
        layers = [
            EBranchformerLayerCache(
                zeros(heads, max_keys or 0, head_dim),
                zeros(heads, max_keys or 0, head_dim),
                zeros(look_back * (config.cgmlp_conv_kernel_size // 2), config.cgmlp_intermediate_size // 2),
                zeros(look_back * (config.merge_conv_kernel_size // 2), 2 * config.hidden_size),
                max_keys,
            )
            for _ in range(config.num_hidden_layers)
        ]
        key_mask = torch.zeros(batch_size, max_keys or 0, dtype=torch.bool, device=parameter.device)
        offset = torch.zeros(batch_size, dtype=torch.long, device=parameter.device)
        return EBranchformerStreamingCache(layers, key_mask, offset, chunk_size, left_chunks)

    def stream_step(self, input_features: torch.Tensor, cache: EBranchformerStreamingCache) -> torch.Tensor:
        """The encoder's output for the next chunk of B streams: `input_features` (B, frames, mel bins), frames a
        multiple of `subsampling_stride` (`chunk_size` steps' worth, fewer at a stream's end). Equal to the
        full forward with `streaming_chunk_size` = the cache's chunk size over the whole stream, for the frames
        of this chunk; `cache` (from `new_cache`) moves on to the next chunk."""
        check_input_features(input_features, self.config.num_mel_bins)
        hidden_states = self.subsampling(input_features)
        if isinstance(self.positions, EBranchformerSinusoidalPositions):
            hidden_states = self.positions(hidden_states, cache.offset)
        else:
            hidden_states = self.positions(hidden_states)
        steps = hidden_states.shape[1]
        mask = cache.keys_mask(steps)
        attention_mask = mask[:, None, None, :]  # every frame of the chunk sees the cache and the whole chunk
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden_states, _ = layer(hidden_states, None, attention_mask, False, layer_cache)
        cache.advance(mask, steps)
        return hidden_states


class EBranchformerForCTC(CTCGenerationMixin, EBranchformerPreTrainedModel):
    """The encoder and a linear CTC head over the characters and the blank."""

    def __init__(self, config: EBranchformerConfig):
        super().__init__(config)
        self.ebranchformer = EBranchformerModel(config)
        self.lm_head = CTCHead(config.hidden_size, config.vocab_size)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> CausalLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch, target_length)`, *optional*):
            Character ids of the transcripts, padded with -100. Ids must lie in `[0, vocab_size)` and
            differ from the blank (`config.pad_token_id`).
        """
        outputs = self.ebranchformer(
            input_features,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = ctc_loss(logits, outputs.output_lengths, labels, self.config) if labels is not None else None

        return CausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def new_cache(self, batch_size=1, chunk_size=None, left_chunks=None, dtype=None) -> EBranchformerStreamingCache:
        """See `EBranchformerModel.new_cache`."""
        return self.ebranchformer.new_cache(batch_size, chunk_size, left_chunks, dtype)

    def stream_step(self, input_features: torch.Tensor, cache: EBranchformerStreamingCache) -> torch.Tensor:
        """The CTC logits (B, steps, vocab) of the next chunk of B streams (`EBranchformerModel.stream_step`)."""
        return self.lm_head(self.ebranchformer.stream_step(input_features, cache))
