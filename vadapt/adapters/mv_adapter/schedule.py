"""MV-Adapter's shifted noise schedule (Huang et al., 2024, arXiv:2412.03632, Sec. 4.3 "training").

Generating several views at once is "higher resolution" in effect: more pixels carry the same object, so noise
at a given SNR hides less of it. Following the SNR-shift of simple diffusion (Hoogeboom et al., 2023), the
official training and inference (``ShiftSNRScheduler.from_scheduler(..., shift_mode="interpolated",
shift_scale=8)`` in ``huanngzh/MV-Adapter``) divide the base's SNR by a scale, interpolating in log space from
no shift at ``t = 0`` to the full shift at the last timestep, and rebuild the betas from the shifted SNR. The
shifted betas go into the scheduler config as ``trained_betas``, which every diffusers scheduler accepts, so
training (DDPM ``add_noise``, Min-SNR weights) and sampling (DDIM / Euler / DPM) use the same schedule.
"""

from __future__ import annotations

from typing import Any

import torch

SHIFT_MODES = ("interpolated", "uniform")


def betas_from_snr(snr: torch.Tensor) -> torch.Tensor:
    """Betas ``(T,)`` of a DDPM schedule whose cumulative product of alphas has the SNR ``snr`` ``(T,)``:
    ``alpha_bar = snr / (1 + snr)``, ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` (``alpha_bar_{-1} = 1``)."""
    alpha_bar = snr / (1.0 + snr)
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1.0 - alpha_bar / previous


def shifted_snr_betas(alphas_cumprod: torch.Tensor, scale: float, mode: str = "interpolated") -> torch.Tensor:
    """Betas ``(T,)`` of the base schedule (``alphas_cumprod`` ``(T,)``) with its SNR divided by ``scale``.

    ``"interpolated"`` (official MV-Adapter): ``log SNR'(t) = (1 - t / (T - 1)) log SNR(t) + t / (T - 1)
    log(SNR(t) / scale)``; ``"uniform"``: ``SNR'(t) = SNR(t) / scale`` at every ``t`` (the official "default").
    """
    if mode not in SHIFT_MODES:
        raise ValueError(f"unknown SNR shift mode {mode!r}; choose one of {SHIFT_MODES}")
    if not scale > 0:
        raise ValueError(f"the SNR shift scale must be > 0, got {scale}")
    alpha_bar = alphas_cumprod.double()
    snr = alpha_bar / (1.0 - alpha_bar)
    if mode == "uniform":
        shifted = snr / scale
    else:
        weight = torch.arange(len(snr), dtype=torch.float64) / (len(snr) - 1)
        shifted = torch.exp(snr.log() - weight * torch.log(torch.tensor(float(scale), dtype=torch.float64)))
    return betas_from_snr(shifted)


def shifted_scheduler_config(config: dict[str, Any], scale: float | None, mode: str = "interpolated") -> dict[str, Any]:
    """A copy of the diffusers scheduler ``config`` whose ``trained_betas`` are the SNR-shifted betas of its own
    schedule (``scale`` ``None`` or 1: the config unchanged)."""
    config = dict(config)
    if scale is None or scale == 1:
        return config
    from diffusers import DDPMScheduler

    base = DDPMScheduler.from_config({**config, "trained_betas": config.get("trained_betas")})
    config["trained_betas"] = shifted_snr_betas(base.alphas_cumprod, scale, mode).float().tolist()
    return config
