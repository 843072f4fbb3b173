"""Adapter training and sampling on a frozen diffusion base (Stable Diffusion / AnimateDiff through diffusers).

``DiffusionAdapterTask`` is the generation counterpart of the segmentation tasks: the backbone is a frozen
:class:`~vadapt.backbones.diffusion.DiffusionBase` (UNet, VAE, text encoder(s), scheduler config), the adapter
(ResAdapter, I2V-Adapter, MV-Adapter, or LoRA) is injected into its UNet, and only the adapter trains.

Training (one step, latents ``z0`` of the batch, ``t ~ U{0, T-1}``, ``eps ~ N(0, I)``)::

    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps                       (the base's DDPM schedule)
    target = eps  (prediction_type "epsilon")  or  sqrt(abar_t) eps - sqrt(1 - abar_t) z0  ("v_prediction")
    loss = mean_b w_b * mean(|unet(z_t, t, text) - target|^2)         (w_b = 1, or Min-SNR weights)

Three kinds of data:

* ``image``: ``image`` ``(B, 3, H, W)`` in [0, 1] (any size per batch: ResAdapter trains on mixed-resolution
  buckets, so each batch may have its own size).
* ``video``: ``video`` ``(B, F, 3, H, W)``; one timestep per clip; with I2V-Adapter the first frame stays clean
  (never noised) and is left out of the loss.
* ``multiview``: ``views`` ``(B, N, 3, H, W)`` with ``cameras`` ``(B, N, 6, H, W)`` condition maps (and an
  optional ``reference`` ``(B, 3, H, W)``); one timestep per object; Min-SNR weighting as MV-Adapter.

Prompts come from the batch's ``prompt`` (a list of strings) or the task's ``prompt``; with probability
``condition_dropout`` a training prompt is replaced by the empty one, so classifier-free guidance works at
sampling (Ho & Salimans, 2022). The VAE and the text encoder(s) run without gradients; ``cache_latents`` keeps
each training image's latents after the first epoch (keyed by the batch's ``key``).

Sampling (:meth:`DiffusionAdapterTask.generate`) uses the base's scheduler (``ddim``, ``euler`` or ``dpm``)
with classifier-free guidance, and validates the size against the VAE factor before any denoising starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from vadapt.adapters import AdapterConfig

from .base import BaseTask

Kind = Literal["image", "video", "multiview"]


class DiffusionAdapterTask(BaseTask):
    """Train an adapter on a frozen diffusion base and sample with it (module docstring)."""

    def __init__(
        self,
        backbone: str = "sd15_test",
        weights: str | None = None,
        adapter: AdapterConfig | None = None,
        kind: Kind = "image",
        prompt: str = "",
        condition_dropout: float = 0.1,
        snr_gamma: float | None = None,
        cache_latents: bool = False,
        sampler: Literal["ddim", "euler", "dpm"] = "ddim",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        num_frames: int = 16,
        num_views: int = 6,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        grad_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            backbone: a diffusion base of the registry (``sd15``, ``sd21``, ``sdxl``, ``animatediff_sd15``, tiny
                ``*_test``); ``vadapt list backbones``.
            weights: a diffusers folder, a single ``.safetensors`` file, a hub id, ``pretrained`` or ``None``
                (random init: tests and the CPU demo).
            adapter: the adapter config (``ResAdapterConfig``, ``I2VAdapterConfig``, ``MVAdapterConfig``, ...).
            kind: the data the task trains on: ``image``, ``video`` or ``multiview`` (module docstring).
            prompt: the prompt of batches without one.
            condition_dropout: probability of training on the empty prompt (classifier-free guidance).
            snr_gamma: Min-SNR-gamma loss weighting (Hang et al., 2023; MV-Adapter uses 5); ``None``: uniform.
            cache_latents: keep the VAE latents of training images keyed by the batch's ``key``.
            sampler: the scheduler :meth:`generate` uses by default.
            num_inference_steps, guidance_scale: :meth:`generate` defaults.
            num_frames: frames per clip (``video``), num_views: views per object (``multiview``).
            lr, weight_decay, warmup_steps: AdamW with linear warm-up and decay, over the adapter only.
            grad_checkpointing: recompute the UNet's activations in backward (diffusers' own checkpointing).
        """
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        if kind not in ("image", "video", "multiview"):
            raise ValueError(f"kind must be 'image', 'video' or 'multiview', got {kind!r}")
        super().__init__()

    # ---- models ------------------------------------------------------------------------------------------
    def backbone_weights(self) -> str | None:
        """``pretrained`` goes through the registry's lookup; a folder, file or hub id is handed to the base's
        builder directly (``pretrained=``), so the model is built once, from the weights."""
        weights = self.hparams["weights"]
        return weights if weights == "pretrained" else None

    def backbone_options(self) -> dict[str, Any]:
        weights = self.hparams["weights"]
        return {} if weights in (None, "pretrained") else {"pretrained": weights}

    def configure_backbone(self) -> None:
        super().configure_backbone()
        unet = self.backbone.unet
        if self.hparams["grad_checkpointing"] and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        self._latent_cache: dict[str, torch.Tensor] = {}

    def configure_head(self) -> None:
        """No head: the UNet's adapter is the whole trainable part."""

    def configure_metrics(self) -> None:
        self.losses = torch.nn.ModuleDict({f"{s}_loss": MeanMetric() for s in ("train", "val", "test")})

    @property
    def prediction_type(self) -> str:
        return self.backbone.scheduler_config.get("prediction_type", "epsilon")

    # ---- conditioning ------------------------------------------------------------------------------------
    def prompts_of(self, batch: dict[str, Any], size: int, stage: str) -> list[str]:
        """The batch's prompts (or the task's), with condition dropout while training."""
        prompts = batch.get("prompt")
        if prompts is None:
            prompts = [self.hparams["prompt"]] * size
        elif isinstance(prompts, str):
            prompts = [prompts] * size
        prompts = list(prompts)
        if len(prompts) != size:
            raise ValueError(f"the batch has {size} samples but {len(prompts)} prompts")
        p = self.hparams["condition_dropout"]
        if stage == "train" and p > 0:
            drop = torch.rand(size).lt(p).tolist()
            prompts = ["" if d else text for d, text in zip(drop, prompts)]
        return prompts

    def text_condition(self, prompts: Sequence[str], repeat: int = 1) -> dict[str, Any]:
        """UNet keyword arguments of the prompts (``encoder_hidden_states`` ``(B * repeat, L, D)`` and, for
        SDXL, ``added_cond_kwargs``), each prompt repeated for its ``repeat`` frames or views."""
        with torch.no_grad():
            cond = self.backbone.encode_prompt(list(prompts))
        out: dict[str, Any] = {"encoder_hidden_states": cond["encoder_hidden_states"].repeat_interleave(repeat, 0)}
        if cond.get("added_cond_kwargs"):
            out["added_cond_kwargs"] = {
                k: v.repeat_interleave(repeat, 0) for k, v in cond["added_cond_kwargs"].items()
            }
        return out

    def latents_of(self, pixels: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """VAE latents (scaled) of images ``(M, 3, H, W)`` in [0, 1] -> ``(M, c, H/f, W/f)``, cached by key."""
        if keys is not None and self.hparams["cache_latents"] and all(k in self._latent_cache for k in keys):
            return torch.stack([self._latent_cache[k] for k in keys]).to(pixels.device)
        with torch.no_grad():
            latents = self.backbone.encode_images(self.normalise(pixels))  # [0, 1] -> [-1, 1]
        if keys is not None and self.hparams["cache_latents"]:
            self._latent_cache.update({k: z.detach().cpu() for k, z in zip(keys, latents)})
        return latents

    # ---- training ----------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        kind = self.hparams["kind"]
        if kind == "image":
            loss = self.image_loss(batch, stage)
        else:
            raise NotImplementedError(f"kind {kind!r} lands with its adapter")
        self.losses[f"{stage}_loss"].update(loss.detach())
        self.log(f"{stage}_loss", loss.detach(), prog_bar=True, batch_size=len(batch.get("image", [])) or None)
        return loss

    def noise_and_target(
        self, latents: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_t`` and the regression target (``eps`` or ``v``) of ``latents`` at ``timesteps`` ``(M,)``."""
        scheduler = self.noise_scheduler
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "v_prediction":
            return noisy, scheduler.get_velocity(latents, noise, timesteps)
        if self.prediction_type != "epsilon":
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        return noisy, noise

    @property
    def noise_scheduler(self):
        if getattr(self, "_noise_scheduler", None) is None:
            self._noise_scheduler = self.backbone.noise_scheduler()
        return self._noise_scheduler

    def sample_timesteps(self, size: int, stage: str, device: torch.device) -> tuple[torch.Tensor, Any]:
        """Uniform training timesteps; validation / test use a fixed generator so their loss is comparable."""
        generator = None if stage == "train" else torch.Generator().manual_seed(1234)
        steps = self.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, steps, (size,), generator=generator).to(device), generator

    def snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al., 2023): ``min(snr, g) / snr`` for eps, ``/ (snr + 1)`` for v."""
        gamma = self.hparams["snr_gamma"]
        if gamma is None:
            return torch.ones_like(timesteps, dtype=torch.float32)
        abar = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        snr = abar / (1 - abar)
        base = snr + 1 if self.prediction_type == "v_prediction" else snr
        return torch.clamp(snr, max=gamma) / base

    def image_loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        images = batch["image"]
        bsz = images.shape[0]
        latents = self.latents_of(images, batch.get("key"))
        timesteps, generator = self.sample_timesteps(bsz, stage, latents.device)
        noisy, target = self.noise_and_target(latents, timesteps, generator)
        pred = self.backbone.unet(noisy, timesteps, **self.text_condition(self.prompts_of(batch, bsz, stage))).sample
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (per_sample * self.snr_weights(timesteps)).mean()

    def _log_scores(self, stage: str) -> None:
        metric = self.losses[f"{stage}_loss"]
        if metric.update_count:
            self.log(f"{stage}_loss_epoch", metric.compute())
        metric.reset()

    # ---- sampling ----------------------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        """One sentence before any denoising when the size does not fit the VAE factor."""
        factor = self.backbone.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % factor:
                raise ValueError(
                    f"{name} {value} is not a positive multiple of the VAE factor {factor}; use e.g. "
                    f"{max(factor, round(value / factor) * factor)}"
                )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str] | str,
        height: int,
        width: int,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        sampler: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Sample images ``(B, 3, height, width)`` in [0, 1] for ``prompts``.

        Classifier-free guidance ``eps = eps_u + s (eps_c - eps_u)`` when ``guidance_scale > 1``; the scheduler is
        the base's (``sampler``: ``ddim``, ``euler``, ``dpm``); ``progress(step, total)`` is called after each
        denoising step (the CLI draws a progress bar with it).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.check_size(height, width)
        steps = num_inference_steps or self.hparams["num_inference_steps"]
        scale = self.hparams["guidance_scale"] if guidance_scale is None else guidance_scale
        scheduler = self.backbone.make_scheduler(sampler or self.hparams["sampler"])
        scheduler.set_timesteps(steps, device=self.device)
        unet = self.backbone.unet
        f = self.backbone.vae_scale_factor
        channels = unet.config.in_channels
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn(len(prompts), channels, height // f, width // f, generator=generator)
        latents = latents.to(self.device) * scheduler.init_noise_sigma
        guided = scale > 1
        cond = self.text_condition(([negative_prompt] * len(prompts) if guided else []) + prompts)
        for i, t in enumerate(scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            pred = unet(model_in, t, **cond).sample
            if guided:
                uncond, text = pred.chunk(2)
                pred = uncond + scale * (text - uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
            if progress is not None:
                progress(i + 1, steps)
        images = self.backbone.decode_latents(latents)
        return ((images.float() + 1) / 2).clamp(0, 1)
