"""Frame quality against the truth: PSNR and SSIM per frame, pixels in [0, 1].

SSIM is Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
computed per channel over the valid window positions and averaged: skimage's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, truth: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """[..., C, H, W] in [0, 1] -> PSNR in dB per frame [...]."""
    mse = (pred.float() - truth.float()).pow(2).flatten(-3).mean(-1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(eps))


def _gaussian_window(size: int, sigma: float, device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, size, size]


def ssim(pred: torch.Tensor, truth: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[..., C, H, W] in [0, 1] -> SSIM per frame [...]."""
    lead = pred.shape[:-3]
    c, h, w = pred.shape[-3:]
    x = pred.float().reshape(-1, 1, h, w)
    y = truth.float().reshape(-1, 1, h, w)
    kernel = _gaussian_window(window, sigma, x.device)
    blur = lambda t: F.conv2d(t, kernel)  # noqa: E731  (valid positions only)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).reshape(*lead, c).mean(-1)
