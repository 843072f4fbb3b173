"""I2V-Adapter first-frame conditioning for training and sampling (Guo et al., SIGGRAPH 2024, arXiv:2312.16693).

Pure tensor functions for the video task and its sampler. Latents are ``(B, C, F, h, w)`` (diffusers
``UNetMotionModel`` layout), frame 0 is the encoded conditioning image ``z0`` ``(B, C, h, w)``.

- Training: frame 0 is never noised (:func:`noise_all_but_first`) and left out of the loss (:func:`i2v_loss`).
  The official repository has no training code; this follows its sampler and the paper.
- Sampling (official ``I2VIPAdapterPipeline``): the Frame Similarity Prior (:func:`frame_similarity_prior`) gives
  the initial latents; every step feeds all frames with frame 0 clean and only frames 1.. are updated
  (:func:`step_all_but_first`, or :func:`keep_first_frame` after a full-latent step).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, kernel_size: int = 9, sigma: float = 18.0) -> torch.Tensor:
    """torchvision's ``GaussianBlur(kernel_size, sigma)`` on ``x`` ``(..., H, W)``: normalised separable Gaussian
    taps on ``linspace(-(k-1)/2, (k-1)/2, k)``, reflect padding, per channel. Needs ``H, W > k // 2``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd and >= 1, got {kernel_size}")
    pad = kernel_size // 2
    h, w = x.shape[-2:]
    if pad and (h <= pad or w <= pad):
        raise ValueError(f"gaussian_blur: reflect padding of {pad} needs latents larger than {pad}x{pad}, got {h}x{w}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=dtype)
    taps = torch.exp(-0.5 * (taps / sigma).pow(2))
    taps = taps / taps.sum()
    kernel = torch.mm(taps[:, None], taps[None, :])  # (k, k), as torchvision
    flat = x.reshape(-1, 1, h, w).to(dtype)
    if pad:
        flat = F.pad(flat, [pad, pad, pad, pad], mode="reflect")
    out = F.conv2d(flat, kernel[None, None])
    return out.reshape(x.shape).to(x.dtype)


def degrade_first_frame(
    first_latent: torch.Tensor,
    num_frames: int,
    generator: torch.Generator | None = None,
    mask_ratio: float = 0.5,
    kernel: int = 9,
    sigma: float = 18.0,
) -> torch.Tensor:
    """The FSP degradation ``D(z0)`` repeated over frames (official ``downgrade_input``).

    ``first_latent`` ``(B, C, h, w)`` -> ``(B, C, F, h, w)``: ``D = M * Z + (1 - M) * blur(Z)`` with ``Z`` the
    first latent repeated ``F`` times and ``M`` an i.i.d. Bernoulli mask per element that keeps ``Z`` with
    probability ``1 - mask_ratio`` (official: ``rand >= 0.5``); frame 0 is ``z0`` itself. The mask is drawn
    first, over the full ``(B, C, F, h, w)`` shape, from ``generator`` (on its device).
    """
    if first_latent.ndim != 4:
        raise ValueError(f"first_latent must be (B, C, h, w), got {tuple(first_latent.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    b, c, h, w = first_latent.shape
    z = first_latent.unsqueeze(2).expand(b, c, num_frames, h, w)
    rand_device = generator.device if generator is not None else first_latent.device
    keep = torch.rand((b, c, num_frames, h, w), generator=generator, device=rand_device).to(first_latent.device)
    keep = (keep >= mask_ratio).to(first_latent.dtype)
    blurred = gaussian_blur(first_latent, kernel, sigma).unsqueeze(2)  # every frame of Z is z0: blur once
    out = z * keep + blurred * (1 - keep)
    out[:, :, 0] = first_latent
    return out


def frame_similarity_prior(
    first_latent: torch.Tensor,
    num_frames: int,
    alphas_cumprod_t: float | torch.Tensor,
    generator: torch.Generator | None = None,
    mask_ratio: float = 0.5,
    kernel: int = 9,
    sigma: float = 18.0,
) -> torch.Tensor:
    """Initial sampling latents from the Frame Similarity Prior (official ``repeat_latents`` + ``gaussian_blur``).

    ``z^i = sqrt(abar_tau) * D(z0)^i + sqrt(1 - abar_tau) * eps^i`` for frames ``i >= 1`` (``eps`` i.i.d.
    standard normal, drawn after the mask from ``generator``), ``z^0 = z0`` exactly (never noised).

    Args:
        first_latent: ``z0`` ``(B, C, h, w)``, the VAE latent of the image (already scaled).
        num_frames: ``F``.
        alphas_cumprod_t: ``abar`` at the first sampling timestep ``tau``: a float, a 0-d tensor or ``(B,)``
            (see :func:`prior_alpha_bar`).
        generator, mask_ratio, kernel, sigma: see :func:`degrade_first_frame` (official 0.5, 9, 18).

    Returns:
        ``(B, C, F, h, w)`` in ``first_latent``'s dtype. The sampler then runs every timestep from ``tau``.
    """
    degraded = degrade_first_frame(first_latent, num_frames, generator, mask_ratio, kernel, sigma)
    rand_device = generator.device if generator is not None else first_latent.device
    noise = torch.randn(degraded.shape, generator=generator, device=rand_device, dtype=degraded.dtype)
    noise = noise.to(degraded.device)
    abar = torch.as_tensor(alphas_cumprod_t, dtype=torch.float32, device=degraded.device)
    if abar.ndim == 1:
        abar = abar.view(-1, 1, 1, 1, 1)
    out = (abar.sqrt() * degraded + (1 - abar).sqrt() * noise).to(degraded.dtype)
    out[:, :, 0] = first_latent
    return out


def prior_alpha_bar(scheduler: Any, timestep: int | None = None) -> float:
    """``alphas_cumprod`` at ``timestep`` (``None``: the scheduler's first timestep after ``set_timesteps``, the
    official FSP level; 960 -> 0.002507 for the official DDIM linear 25-step schedule)."""
    if timestep is None:
        timestep = int(scheduler.timesteps[0])
    return float(scheduler.alphas_cumprod[int(timestep)])


def noise_all_but_first(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler: Any
) -> torch.Tensor:
    """Training input: ``scheduler.add_noise`` on frames 1.., frame 0 kept clean.

    ``latents``, ``noise``: ``(B, C, F, h, w)``; ``timesteps``: ``(B,)`` (one per video) -> ``(B, C, F, h, w)``.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, h, w), got {tuple(latents.shape)}")
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return torch.cat([latents[:, :, :1], noisy[:, :, 1:]], dim=2)


def first_frame_loss_mask(num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(1, 1, F, 1, 1)`` weights: 0 for frame 0, 1 for the others."""
    mask = torch.ones(1, 1, num_frames, 1, 1, device=device)
    mask[:, :, 0] = 0
    return mask


def i2v_loss(pred: torch.Tensor, target: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
    """Mean squared error over frames 1.. only (frame 0 is the clean condition).

    ``pred``, ``target``: ``(B, C, F, h, w)``, or ``(B·F, C, h, w)`` video-major with ``num_frames`` given.
    Returns a scalar. Needs ``F >= 2``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim == 4:
        if num_frames is None:
            raise ValueError("i2v_loss on (B*F, C, h, w) needs num_frames")
        if pred.shape[0] % num_frames:
            raise ValueError(f"{pred.shape[0]} rows is not a multiple of num_frames={num_frames}")
        b = pred.shape[0] // num_frames
        pred = pred.view(b, num_frames, *pred.shape[1:]).transpose(1, 2)
        target = target.view(b, num_frames, *target.shape[1:]).transpose(1, 2)
    elif pred.ndim != 5:
        raise ValueError(f"i2v_loss expects (B, C, F, h, w) or (B*F, C, h, w), got {tuple(pred.shape)}")
    elif num_frames is not None and pred.shape[2] != num_frames:
        raise ValueError(f"pred has {pred.shape[2]} frames, num_frames={num_frames}")
    if pred.shape[2] < 2:
        raise ValueError("i2v_loss needs at least 2 frames: frame 0 is the condition and is not scored")
    return F.mse_loss(pred[:, :, 1:].float(), target[:, :, 1:].float())


def keep_first_frame(latents: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``latents`` ``(B, C, F, h, w)`` with frame 0 replaced by ``first`` ``(B, C, h, w)`` or ``(B, C, 1, h, w)``
    (out of place)."""
    if first.ndim == 4:
        first = first.unsqueeze(2)
    return torch.cat([first.to(latents.dtype), latents[:, :, 1:]], dim=2)


def step_all_but_first(
    scheduler: Any, model_output: torch.Tensor, timestep: Any, latents: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """One sampler step on frames 1.. (official: ``latents[:, :, 1:] = step(pred[:, :, 1:], t, latents[:, :, 1:])``);
    frame 0 is carried over unchanged. ``(B, C, F, h, w)`` in and out; ``kwargs`` go to ``scheduler.step``."""
    prev = scheduler.step(model_output[:, :, 1:], timestep, latents[:, :, 1:], **kwargs).prev_sample
    return torch.cat([latents[:, :, :1], prev.to(latents.dtype)], dim=2)


__all__ = [
    "degrade_first_frame", "first_frame_loss_mask", "frame_similarity_prior", "gaussian_blur", "i2v_loss",
    "keep_first_frame", "noise_all_but_first", "prior_alpha_bar", "step_all_but_first",
]

