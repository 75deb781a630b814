"""Course-layout modules, written from ../shared/REFERENCE.md for tests only.

They reproduce the course's PyTorch Lightning models (attribute names, nn.MultiheadAttention, the
Conv1d decoder, the (5000, 1, 256) positional table added to a batch-first tensor) so that tests can save
Lightning-style checkpoints and compare the converted models with the modules that produced them.
They share no code with the package on purpose.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class CourseFeedForward(nn.Module):
    def __init__(self, d, hidden, dropout):
        super().__init__()
        self.linear1 = nn.Linear(d, hidden)
        self.linear2 = nn.Linear(hidden, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.linear2(self.dropout(F.silu(self.linear1(x))))


class CourseCSGU(nn.Module):
    def __init__(self, size, kernel, dropout):
        super().__init__()
        n = size // 2
        self.norm = nn.LayerNorm(n)
        self.conv = nn.Conv1d(n, n, kernel, 1, (kernel - 1) // 2, groups=n)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x_r, x_g = x.chunk(2, dim=-1)
        x_g = self.conv(self.norm(x_g).transpose(1, 2)).transpose(1, 2)
        return self.dropout(x_r * x_g)


class CourseCgMLP(nn.Module):
    def __init__(self, d, units, kernel, dropout, sequential_proj1):
        super().__init__()
        if sequential_proj1:  # one course variant: Sequential(Linear, GELU) -> keys "channel_proj1.0.*"
            self.channel_proj1 = nn.Sequential(nn.Linear(d, units), nn.GELU())
        else:
            self.channel_proj1 = nn.Linear(d, units)
        self.sequential_proj1 = sequential_proj1
        self.csgu = CourseCSGU(units, kernel, dropout)
        self.channel_proj2 = nn.Linear(units // 2, d)

    def forward(self, x):
        x = self.channel_proj1(x)
        if not self.sequential_proj1:
            x = F.gelu(x)
        return self.channel_proj2(self.csgu(x))


class CourseEBranchformerLayer(nn.Module):
    def __init__(self, d=256, heads=4, units=768, kernel=7, ffn=512, merge_kernel=31, dropout=0.1, seq=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cgmlp = CourseCgMLP(d, units, kernel, dropout, seq)
        self.feed_forward1 = CourseFeedForward(d, ffn, dropout)
        self.feed_forward2 = CourseFeedForward(d, ffn, dropout)
        self.norm_ffn1, self.norm_ffn2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.norm_mha, self.norm_mlp, self.norm_final = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.depthwise_conv_fusion = nn.Conv1d(2 * d, 2 * d, merge_kernel, 1, (merge_kernel - 1) // 2, groups=2 * d)
        self.merge_proj = nn.Linear(2 * d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        x = x + 0.5 * self.dropout(self.feed_forward1(self.norm_ffn1(x)))
        x1 = self.norm_mha(x)
        x1 = self.dropout(self.attn(x1, x1, x1, key_padding_mask=key_padding_mask, need_weights=False)[0])
        x2 = self.dropout(self.cgmlp(self.norm_mlp(x)))
        m = torch.cat([x1, x2], dim=-1)
        x = x + self.dropout(self.merge_proj(m + self.depthwise_conv_fusion(m.transpose(1, 2)).transpose(1, 2)))
        x = x + 0.5 * self.dropout(self.feed_forward2(self.norm_ffn2(x)))
        return self.norm_final(x)


class CoursePositionalEncoding(nn.Module):
    def __init__(self, d=256, max_len=5000, dropout=0.1):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, 1, d)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.pe = nn.Parameter(pe, requires_grad=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):  # x is (B, T, d): the quirk adds row b to every frame of item b
        return self.dropout(x + self.pe[: x.size(0)])


class CourseSubsampling(nn.Module):
    def __init__(self, n_mels=64, d=256, stride=4):
        super().__init__()
        self.stride = stride
        self.out = nn.Linear(n_mels * stride, d)

    def forward(self, x):  # (B, T, F)
        b, t, f = x.shape
        x = F.pad(x, (0, 0, 0, -t % self.stride))
        return self.out(x.reshape(b, -1, self.stride * f))


class CourseEBranchformerEncoder(nn.Module):
    def __init__(self, layers=8, seq=False, **kw):
        super().__init__()
        self.subsampling = CourseSubsampling()
        self.pos_embedding = CoursePositionalEncoding()
        self.layers = nn.ModuleList(CourseEBranchformerLayer(seq=seq, **kw) for _ in range(layers))

    def forward(self, features):  # (B, T, 64), batch size 1 in the comparisons
        x = self.pos_embedding(self.subsampling(features))
        for layer in self.layers:
            x = layer(x)
        return x


class CourseDecoder(nn.Module):
    def __init__(self, d=256, classes=34):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(d, classes, kernel_size=1))

    def forward(self, x):  # (B, T, d) -> (B, T, classes) log-probabilities
        return F.log_softmax(self.layers(x.transpose(1, 2)).transpose(1, 2), dim=-1)


class CourseCTCModel(nn.Module):
    """encoder.* + decoder.*, as the Lightning module's state_dict names them."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, features):
        return self.decoder(self.encoder(features))


def lightning_checkpoint(model: nn.Module, epoch=4, global_step=9794) -> dict:
    """A dict shaped like a PyTorch Lightning checkpoint of `model`."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer_states": [],
        "lr_schedulers": [],
        "loops": {},
        "callbacks": {},
    }


# --- QuartzNet (REFERENCE.md, "The pretrained QuartzNet 5x5 checkpoint"), Jasper/NeMo style ---------------

COURSE_QUARTZNET_BLOCKS = [  # (filters, repeat, kernel, stride, dilation, residual, separable)
    (256, 1, 33, 4, 1, False, True),
    (256, 5, 33, 1, 1, True, True),
    (256, 5, 39, 1, 1, True, True),
    (512, 5, 51, 1, 1, True, True),
    (512, 5, 63, 1, 1, True, True),
    (512, 5, 75, 1, 1, True, True),
    (512, 1, 87, 1, 2, False, True),
    (1024, 1, 1, 1, 1, False, False),
]


class CourseQuartzNetBlock(nn.Module):
    """`conv` holds the sub-blocks' modules, flat (dw, pw, bn, relu, dropout, dw, ...) or nested (one
    Sequential per sub-block); `res` is Sequential(Sequential(conv1x1, bn)) as in NeMo's JasperBlock."""

    def __init__(self, cin, filters, repeat, kernel, stride, dilation, residual, separable, bias, nested):
        super().__init__()
        subs = []
        for i in range(repeat):
            c = cin if i == 0 else filters
            s = stride if i == 0 else 1
            pad = dilation * (kernel - 1) // 2
            if separable:
                mods = [
                    nn.Conv1d(c, c, kernel, s, pad, dilation, groups=c, bias=bias),
                    nn.Conv1d(c, filters, 1, bias=bias),
                ]
            else:
                mods = [nn.Conv1d(c, filters, kernel, s, pad, dilation, bias=bias)]
            mods.append(nn.BatchNorm1d(filters))
            if i < repeat - 1:
                mods += [nn.ReLU(), nn.Dropout(0.0)]
            subs.append(mods)
        if nested:
            self.conv = nn.Sequential(*[nn.Sequential(*m) for m in subs])
        else:
            self.conv = nn.Sequential(*[m for sub in subs for m in sub])
        if residual:
            self.res = nn.Sequential(
                nn.Sequential(nn.Conv1d(cin, filters, 1, stride, bias=bias), nn.BatchNorm1d(filters))
            )
        else:
            self.res = None
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(0.0))

    def forward(self, x):
        y = self.conv(x)
        if self.res is not None:
            y = y + self.res(x)
        return self.out(y)


class CourseQuartzNetEncoder(nn.Module):
    def __init__(self, blocks=COURSE_QUARTZNET_BLOCKS, n_mels=64, bias=False, nested=False):
        super().__init__()
        layers, cin = [], n_mels
        for filters, *rest in blocks:
            layers.append(CourseQuartzNetBlock(cin, filters, *rest, bias=bias, nested=nested))
            cin = filters
        self.layers = nn.Sequential(*layers)

    def forward(self, features):  # (B, T, F) -> (B, T', C)
        return self.layers(features.transpose(1, 2)).transpose(1, 2)


def randomize_batch_norms(model: nn.Module, seed=0):
    """Trained-looking running statistics and affine weights (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
            module.num_batches_tracked.fill_(9794)
    return model


def realistic_weights(model: nn.Module, seed=0):
    """Weights of the scale a trained model has, so that a leak of padding shows in the outputs.

    Fresh initialisations (std 0.02, ESPnet's CSGU conv ~N(0, 1e-6)) shrink the signal layer after layer:
    logits come out ~1e-3 and a broken mask moves them by ~1e-5, under any sensible tolerance. Here
    matrices and convolution kernels get std 1/sqrt(fan_in) (activations stay ~1), biases std 0.1, norm
    scales 1 + 0.1 noise; batch norms also get trained-looking running statistics.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return randomize_batch_norms(model, seed)
