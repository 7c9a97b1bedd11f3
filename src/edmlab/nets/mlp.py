"""MLP denoiser for low-dimensional point data (e.g. 2-D Gaussian mixtures), conditioned like SongUNet.

emb = SiLU(L1(SiLU(L0(e(c_noise) + W_label·(√label_dim·y) + W_aug·a)))), e positional or Fourier.
h = L_in(x); ``depth`` residual blocks h ← h + L_b(dropout(SiLU(L_a(SiLU(LN(h))) + A·emb)));
F = L_out(SiLU(LN(h))) with L_out scaled by 1e-5 at init (output ≈ 0, as SongUNet's last conv).
"""

import torch
from torch.nn.functional import dropout, silu

from edmlab.nets.layers import GroupNorm, Linear, conditioning_inputs, noise_embedding, song_embedding

INIT = dict(init_mode="xavier_uniform")
INIT_ZERO = dict(init_mode="xavier_uniform", init_weight=1e-5)


class MLPBlock(torch.nn.Module):
    """Pre-norm residual block with the embedding added between its two linear layers."""

    def __init__(self, hidden: int, emb_channels: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.norm = GroupNorm(hidden, num_groups=1)
        self.fc0 = Linear(hidden, hidden, **INIT)
        self.affine = Linear(emb_channels, hidden, **INIT)
        self.fc1 = Linear(hidden, hidden, **INIT_ZERO)

    def forward(self, h, emb):
        y = silu(self.fc0(silu(self.norm(h))) + self.affine(emb).to(h.dtype))
        return h + self.fc1(dropout(y, p=self.dropout, training=self.training))


class MLP(torch.nn.Module):
    def __init__(
        self,
        dim: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        hidden: int = 128,
        depth: int = 4,
        noise_channels: int = 64,
        emb_channels: int | None = None,
        embedding_type: str = "positional",
        dropout: float = 0.0,
        label_dropout: float = 0.0,
    ):
        for key, value, low in (("dim", dim, 1), ("label_dim", label_dim, 0), ("augment_dim", augment_dim, 0),
                                ("hidden", hidden, 1), ("depth", depth, 0), ("noise_channels", noise_channels, 4)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"MLP: {key} must be an integer ≥ {low}, got {value!r}")
        if noise_channels % 2:
            raise ValueError(f"MLP: noise_channels must be even, got {noise_channels}")
        if not 0 <= dropout < 1:
            raise ValueError(f"MLP: dropout must lie in [0, 1), got {dropout!r}")
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"MLP: label_dropout must lie in [0, 1], got {label_dropout!r}")
        super().__init__()
        self.dim = dim
        self.label_dim = label_dim
        self.augment_dim = augment_dim
        self.label_dropout = label_dropout
        emb_channels = emb_channels or hidden

        self.map_noise = noise_embedding(embedding_type, noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **INIT) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **INIT) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **INIT)
        self.map_layer1 = Linear(emb_channels, emb_channels, **INIT)
        self.inp = Linear(dim, hidden, **INIT)
        self.blocks = torch.nn.ModuleList(MLPBlock(hidden, emb_channels, dropout) for _ in range(depth))
        self.out_norm = GroupNorm(hidden, num_groups=1)
        self.out = Linear(hidden, dim, **INIT_ZERO)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        """F(x; c_noise, y, a) → [N, dim] in the dtype of x."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP: x must have shape [N, {self.dim}], got {tuple(x.shape)}")
        noise_labels, class_labels, augment_labels = conditioning_inputs(
            self, x, noise_labels, class_labels, augment_labels)
        emb = song_embedding(self, noise_labels, class_labels, augment_labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(silu(self.out_norm(h)))
