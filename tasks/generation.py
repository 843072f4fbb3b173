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
  optional ``reference`` ``(B, 3, H, W)``); one timestep per object; Min-SNR weighting, the SNR-shifted noise
  schedule (training and sampling) and the reference image's dropout as MV-Adapter.

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
from vadapt.contracts import TaskCapabilities

from .base import UNUSED, BaseTask

Kind = Literal["image", "video", "multiview"]


class DiffusionAdapterTask(BaseTask):
    """Train an adapter on a frozen diffusion base and sample with it (module docstring)."""

    CAPABILITIES = TaskCapabilities("text", "generated")

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
        train_unet: bool = False,
        lr: float = 1e-4,
        **kwargs: Any,
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
            train_unet: fine-tune the whole UNet too (the VAE and text encoders stay frozen): the full
                fine-tuning baseline, and how the offline demo base is pretrained.
            lr: :class:`BaseTask`'s (AdamW over the adapter only) with a default of 1e-4.
            kwargs: the other arguments every task shares (:class:`BaseTask`): ``weight_decay``, ``warmup_steps``
                (AdamW with linear warm-up and decay), ``grad_checkpointing`` (recompute the UNet's activations
                in backward: diffusers' own checkpointing). ``train_unet`` stands for ``freeze_backbone``; no
                ``poly_power``, ``mean``, ``std``, ``extra_band_init``.
        """
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        if kind not in ("image", "video", "multiview"):
            raise ValueError(f"kind must be 'image', 'video' or 'multiview', got {kind!r}")
        super().__init__(lr=lr, poly_power=UNUSED, mean=UNUSED, std=UNUSED, extra_band_init=UNUSED,
                         freeze_backbone=UNUSED, **kwargs)

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
        if self.hparams["train_unet"]:
            unet.requires_grad_(True)
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
        elif kind == "multiview":
            loss = self.multiview_loss(batch, stage)
        else:
            loss = self.video_loss(batch, stage)
        self.losses[f"{stage}_loss"].update(loss.detach())
        self.log(f"{stage}_loss", loss.detach(), prog_bar=True, batch_size=len(batch["prompt"]) if "prompt" in batch
                 else None)
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
    def scheduler_config(self) -> dict[str, Any]:
        """The base's noise schedule, SNR-shifted when the adapter asks for it (MV-Adapter's
        ``snr_shift_scale``), for training and sampling alike."""
        scale = getattr(self.adapter_config, "snr_shift_scale", None)
        if scale is None:
            return self.backbone.scheduler_config
        from vadapt.adapters.mv_adapter.schedule import shifted_scheduler_config

        return shifted_scheduler_config(self.backbone.scheduler_config, scale, self.adapter_config.snr_shift_mode)

    @property
    def noise_scheduler(self):
        if getattr(self, "_noise_scheduler", None) is None:
            self._noise_scheduler = self.backbone.noise_scheduler(self.scheduler_config)
        return self._noise_scheduler

    def sample_timesteps(self, size: int, stage: str, device: torch.device) -> tuple[torch.Tensor, Any]:
        """Uniform training timesteps; validation / test use a fixed generator so their loss is comparable."""
        generator = None if stage == "train" else torch.Generator().manual_seed(1234)
        steps = self.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, steps, (size,), generator=generator).to(device), generator

    def snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al., 2023, as MV-Adapter computes them) with the task's ``snr_gamma``,
        else the adapter config's (MV-Adapter: 5); uniform when neither sets one."""
        from vadapt.adapters.mv_adapter import min_snr_weights

        gamma = self.hparams["snr_gamma"]
        if gamma is None:
            gamma = getattr(self.adapter_config, "snr_gamma", None)
        if gamma is None:
            return torch.ones(timesteps.shape, device=timesteps.device)
        return min_snr_weights(timesteps, self.noise_scheduler, gamma, self.prediction_type)

    def weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``mean_i w(t_i) * mean(|pred_i - target_i|^2)`` over the first dimension."""
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (per_sample * self.snr_weights(timesteps)).mean()

    def image_loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        images = batch["image"]
        bsz = images.shape[0]
        latents = self.latents_of(images, batch.get("key"))
        timesteps, generator = self.sample_timesteps(bsz, stage, latents.device)
        noisy, target = self.noise_and_target(latents, timesteps, generator)
        pred = self.backbone.unet(noisy, timesteps, **self.text_condition(self.prompts_of(batch, bsz, stage))).sample
        return self.weighted_mse(pred, target, timesteps)

    def multiview_loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """MV-Adapter training: ``views`` ``(b, N, 3, H, W)``, one timestep per object shared by its views, the
        camera maps ``cameras`` ``(b, N, 6, H, W)`` through the condition encoder, the clean ``reference``
        ``(b, 3, H, W)`` through the frozen UNet at t = 0 (image-to-multiview), Min-SNR weights."""
        from vadapt.adapters import mv_adapter as mv

        views = batch["views"]
        b, n = views.shape[:2]
        mv.set_num_views(self.backbone, n)
        keys = [f"{k}/{v}" for k in batch["key"] for v in range(n)] if batch.get("key") is not None else None
        latents = self.latents_of(views.flatten(0, 1), keys)
        timesteps, generator = self.sample_timesteps(b, stage, latents.device)
        timesteps = timesteps.repeat_interleave(n)
        noisy, target = self.noise_and_target(latents, timesteps, generator)
        prompts = self.prompts_of(batch, b, stage)
        reference, dropped = batch.get("reference"), None
        if stage == "train" and reference is not None and getattr(self.adapter_config, "use_ref", False):
            joint = torch.rand(b) < self.adapter_config.joint_dropout  # official cond_drop: prompt and image
            dropped = (torch.rand(b) < self.adapter_config.image_dropout) | joint
            prompts = ["" if j else text for j, text in zip(joint.tolist(), prompts)]
        kwargs = {**self.text_condition(prompts, repeat=n), **self.camera_condition(batch.get("cameras"))}
        with self.reference_context(reference, prompts, dropped=dropped):
            pred = self.backbone.unet(noisy, timesteps, **kwargs).sample
        return self.weighted_mse(pred, target, timesteps)

    def is_i2v(self) -> bool:
        return getattr(self.adapter_config, "method", "") == "i2v_adapter"

    def video_latents(self, video: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """Clips ``(B, F, 3, H, W)`` in [0, 1] -> latents ``(B, c, F, h, w)`` (the motion UNet's layout)."""
        b, f = video.shape[:2]
        frame_keys = [f"{k}/{i}" for k in keys for i in range(f)] if keys is not None else None
        return self.latents_of(video.flatten(0, 1), frame_keys).unflatten(0, (b, f)).transpose(1, 2)

    def video_loss(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """Video training on clips ``(B, F, 3, H, W)``, one timestep per clip. With I2V-Adapter the first frame
        is never noised and is left out of the loss (Guo et al., 2024)."""
        from vadapt.adapters.i2v_adapter import i2v_loss, noise_all_but_first

        video = batch["video"]
        b, f = video.shape[:2]
        latents = self.video_latents(video, batch.get("key"))
        timesteps, generator = self.sample_timesteps(b, stage, latents.device)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        scheduler = self.noise_scheduler
        if self.is_i2v():
            noisy = noise_all_but_first(latents, noise, timesteps, scheduler)
        else:
            noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps) if self.prediction_type == "v_prediction" else noise
        cond = self.text_condition(self.prompts_of(batch, b, stage), repeat=f)
        pred = self.backbone.unet(noisy, timesteps, **cond).sample
        if self.is_i2v():
            return i2v_loss(pred, target)
        return F.mse_loss(pred.float(), target.float())

    def camera_condition(self, cameras: torch.Tensor | None, copies: int = 1) -> dict[str, Any]:
        """UNet residuals of the MV-Adapter condition encoder for camera maps ``(b, N, 6, H, W)`` (repeated
        ``copies`` times along the batch, e.g. 2 under classifier-free guidance: the official never drops it)."""
        if cameras is None or getattr(self.backbone, "mv_condition_encoder", None) is None:
            return {}
        from vadapt.adapters.mv_adapter import unet_kwargs_with_condition

        flat = cameras.flatten(0, 1)
        return unet_kwargs_with_condition(self.backbone, torch.cat([flat] * copies))

    def reference_context(self, reference: torch.Tensor | None, prompts: Sequence[str], uncond_copies: int = 0,
                          dropped: torch.Tensor | None = None):
        """The MV-Adapter reference pass (image-to-multiview) as a context manager; a no-op without a
        reference or a reference branch. ``uncond_copies`` zero-feature objects go first (guidance); the
        features of the objects where ``dropped`` ``(b,)`` is true are zeroed (training's image dropout)."""
        from contextlib import nullcontext

        config = self.adapter_config
        if reference is None or not getattr(config, "use_ref", False):
            return nullcontext()
        from vadapt.adapters import mv_adapter as mv

        latents = self.latents_of(reference)
        text = self.text_condition(prompts)
        feats = mv.compute_reference_features(self.backbone, latents, **text)
        if dropped is not None:
            keep = (~dropped).to(latents.device)
            feats = {k: v * keep.to(v.dtype).view(-1, *[1] * (v.dim() - 1)) for k, v in feats.items()}
        if uncond_copies:
            feats = {k: torch.cat([torch.zeros_like(v)] * uncond_copies + [v]) for k, v in feats.items()}
        return mv.use_reference(self.backbone, feats)

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
        num_views: int | None = None,
        cameras: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        num_frames: int | None = None,
        first_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample ``(B, 3, height, width)`` images in [0, 1] for ``prompts`` (``multiview``: ``(B, N, 3, H, W)``).

        Classifier-free guidance ``eps = eps_u + s (eps_c - eps_u)`` when ``guidance_scale > 1``; the scheduler is
        the base's (``sampler``: ``ddim``, ``euler``, ``dpm``); ``progress(step, total)`` is called after each
        denoising step (the CLI draws a progress bar with it). Multi-view: ``num_views`` (default the task's),
        ``cameras`` ``(B, N, 6, H, W)`` (default the official orthographic orbit of MV-Adapter) and, for an
        image-to-multiview adapter, ``reference`` ``(B, 3, H, W)`` in [0, 1]. Video: ``(B, F, 3, H, W)`` clips of
        ``num_frames``; with I2V-Adapter ``first_frame`` ``(B, 3, H, W)`` in [0, 1] is required, kept exactly as
        frame 0, and the other frames start from the Frame Similarity Prior.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.check_size(height, width)
        kind = self.hparams["kind"]
        per = 1  # images per prompt in the UNet batch: views or frames
        if kind == "multiview":
            per = num_views or self.hparams["num_views"]
            from vadapt.adapters import mv_adapter as mv

            mv.set_num_views(self.backbone, per)  # a count the adapter refuses fails here, before denoising
            if cameras is None:
                cameras = default_cameras(per, height, width).expand(len(prompts), -1, -1, -1, -1)
        elif kind == "video":
            per = num_frames or self.hparams["num_frames"]
            if self.is_i2v() and first_frame is None:
                raise ValueError("an I2V-Adapter generates from a first frame: give first_frame (B, 3, H, W)")
            if first_frame is not None and tuple(first_frame.shape[-2:]) != (height, width):
                raise ValueError(f"the first frame is {tuple(first_frame.shape[-2:])} but the clip is "
                                 f"{(height, width)}")
        steps = num_inference_steps or self.hparams["num_inference_steps"]
        scale = self.hparams["guidance_scale"] if guidance_scale is None else guidance_scale
        scheduler = self.backbone.make_scheduler(sampler or self.hparams["sampler"], self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        generator = torch.Generator().manual_seed(seed)
        f = self.backbone.vae_scale_factor
        channels = self.backbone.unet.config.in_channels
        step: Callable | None = None
        if kind == "video" and self.is_i2v():
            from vadapt.adapters import i2v_adapter as i2v

            first = self.latents_of(first_frame.to(self.device).expand(len(prompts), -1, -1, -1))
            config = self.adapter_config
            abar = i2v.prior_alpha_bar(scheduler, config.fsp_timestep)
            latents = i2v.frame_similarity_prior(first.cpu(), per, abar, generator, config.fsp_mask_ratio,
                                                 config.fsp_blur_kernel, config.fsp_blur_sigma).to(self.device)
            step = i2v.step_all_but_first  # frame 0 is carried over untouched
        else:
            shape = (len(prompts), channels, per, height // f, width // f) if kind == "video" else (
                len(prompts) * per, channels, height // f, width // f)
            latents = torch.randn(shape, generator=generator).to(self.device) * scheduler.init_noise_sigma
        guided = scale > 1
        cond = self.text_condition(([negative_prompt] * len(prompts) if guided else []) + prompts, repeat=per)
        residuals = self.camera_condition(cameras.to(self.device) if cameras is not None else None, 1 + guided)
        if reference is not None:
            reference = reference.to(self.device).expand(len(prompts), -1, -1, -1)
        with self.reference_context(reference, prompts, uncond_copies=int(guided)):
            latents = self.denoise(latents, scheduler, cond, scale, residuals, step, progress)
        if kind == "video":
            latents = latents.transpose(1, 2).flatten(0, 1)  # (B, c, F, h, w) -> (B * F, c, h, w)
        images = ((self.backbone.decode_latents(latents).float() + 1) / 2).clamp(0, 1)
        if kind == "image":
            return images
        images = images.unflatten(0, (len(prompts), per))
        if kind == "video" and self.is_i2v() and self.backbone.vae is None:
            images[:, 0] = first_frame.to(images)  # pixel space: frame 0 is the input (no [-1, 1] round trip)
        return images

    def denoise(
        self,
        latents: torch.Tensor,
        scheduler: Any,
        cond: dict[str, Any],
        guidance_scale: float,
        residuals: dict[str, list] | None = None,
        step: Callable | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The sampling loop over ``scheduler.timesteps`` with classifier-free guidance when ``guidance_scale > 1``
        (``cond`` then holds the unconditional half first). ``residuals``: condition-encoder residuals, given
        afresh each step (the UNet consumes the list); ``step(scheduler, pred, t, latents)`` replaces the
        scheduler's step (I2V keeps frame 0)."""
        copies = 2 if guidance_scale > 1 else 1
        total = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(torch.cat([latents] * copies), t)
            extra = {k: list(v) for k, v in (residuals or {}).items()}
            pred = self.backbone.unet(model_in, t, **cond, **extra).sample
            if copies == 2:
                uncond, text = pred.chunk(2)
                pred = uncond + guidance_scale * (text - uncond)
            latents = step(scheduler, pred, t, latents) if step else scheduler.step(pred, t, latents).prev_sample
            if progress is not None:
                progress(i + 1, total)
        return latents


def default_cameras(num_views: int, height: int, width: int) -> torch.Tensor:
    """MV-Adapter's camera maps ``(1, N, 6, H, W)``: the official six orthographic views for ``N = 6``, else
    ``N`` views evenly spaced in azimuth at elevation 0."""
    from vadapt.geometry.cameras import official_six_view_cameras, orbit_cameras, ortho_camera_maps

    if num_views == 6:
        c2w = official_six_view_cameras()
    else:
        c2w = orbit_cameras([0.0] * num_views, [360.0 * v / num_views - 90 for v in range(num_views)])
    return ortho_camera_maps(c2w, height, width).unsqueeze(0)
