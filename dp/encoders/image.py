"""Image encoder as diffusion_policy uses it: a ResNet-18-style CNN with GroupNorm in place
of BatchNorm, spatial softmax in place of global pooling, random-crop augmentation in
training and a centre crop at evaluation. Plain torch (no torchvision).

    enc = ImageEncoder(image_size=84, crop=76, dim=256, width=64)
    tokens = enc(images)            # [B, 3, H, W] uint8 or float in [0, 255] -> [B, D]

``width`` scales every stage (64 is ResNet-18; 16-32 trains on a CPU in minutes).

The trunk runs channels last (NHWC weights and activations): oneDNN's and cuDNN's fast
convolutions, above all under bf16 autocast (``dp-bench train_step`` measures both layouts).
``set_memory_format(torch.contiguous_format)`` switches back; outputs agree to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dp.errors import ConfigError


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _gn(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.skip(x))


class SpatialSoftmax(nn.Module):
    """Feature map [B, C, H, W] -> expected (x, y) of ``keypoints`` learned maps: [B, 2K]."""

    def __init__(self, channels: int, keypoints: int = 32):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        attn = torch.softmax(self.proj(feat).flatten(2), dim=-1)  # [B, K, HW]
        ys = torch.linspace(-1, 1, h, device=feat.device, dtype=attn.dtype)
        xs = torch.linspace(-1, 1, w, device=feat.device, dtype=attn.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)
        return (attn @ grid).flatten(1)  # [B, K * 2]


def crop(images: torch.Tensor, size: int, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop per image in training, centre crop otherwise. [B, C, H, W] -> [B, C, size, size]."""
    b, _, h, w = images.shape
    if size >= h and size >= w:
        return images
    if not train:
        top, left = (h - size) // 2, (w - size) // 2
        return images[:, :, top : top + size, left : left + size]
    tops = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    return torch.stack([img[:, t : t + size, l : l + size] for img, t, l in zip(images, tops, lefts)])


def random_shift(frames: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's random shift: pad by ``pad`` px (edge pixels repeated) and crop back at a random offset, one
    offset per sample shared by all its frames, so a clip moves as one. [B, T, C, H, W] -> the same shape
    and dtype."""
    if pad <= 0:
        return frames
    b, t, c, h, w = frames.shape
    padded = torch.nn.functional.pad(frames.reshape(b, t * c, h, w).float(), (pad,) * 4, mode="replicate")
    tops = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    out = torch.stack([img[:, y : y + h, x : x + w] for img, y, x in zip(padded, tops, lefts)])
    return out.reshape(b, t, c, h, w).to(frames.dtype)


class ImageEncoder(nn.Module):
    def __init__(self, image_size: int = 84, crop: int | None = 76, dim: int = 256, width: int = 64,
                 keypoints: int = 32, stages: int = 4):
        super().__init__()
        self.crop_size = crop or image_size
        if self.crop_size > image_size:
            raise ConfigError(f"crop {crop} must not exceed image_size {image_size}.")
        chans = [width * 2**i for i in range(stages)]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), _gn(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for i, c in enumerate(chans):
            layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(cin, keypoints)
        self.out = nn.Linear(2 * keypoints, dim)
        self.set_memory_format(torch.channels_last)

    def set_memory_format(self, memory_format: torch.memory_format) -> "ImageEncoder":
        """Lay the conv weights and the trunk's activations out as ``memory_format``."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.feature_map(images)))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk alone, before the spatial softmax: [B, 3, H, W] uint8 or float in [0, 255]
        -> [B, C, h, w] (see ``feature_shape``). Random crop in training, centre crop otherwise."""
        x = images.float() / 127.5 - 1.0  # uint8 range -> [-1, 1]
        x = crop(x, self.crop_size, self.training).contiguous(memory_format=self.memory_format)
        return self.layers(self.stem(x))

    def feature_shape(self) -> tuple[int, int]:
        """(C, h) of ``feature_map``'s output for this crop size (h = w: crops are square).
        Each stride-2 op (stem conv, max-pool, first block of every stage after the first)
        maps a side n to ceil(n / 2)."""
        channels = self.layers[-1].conv2.out_channels if len(self.layers) else self.stem[0].out_channels
        side = self.crop_size
        for _ in range(2 + max(0, len(self.layers) // 2 - 1)):
            side = (side + 1) // 2
        return channels, side
