"""I2V-Adapter configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vadapt.adapters.base import AdapterConfig


@dataclass
class I2VAdapterConfig(AdapterConfig):
    """I2V-Adapter (Guo et al., "I2V-Adapter: A General Image-to-Video Adapter for Diffusion Models",
    SIGGRAPH 2024, arXiv:2312.16693; official code KwaiVGI/I2V-Adapter, inference only).

    Every spatial self-attention (``attn1`` of each transformer block in the down, mid and up blocks, never the
    AnimateDiff motion modules) gets a parallel first-frame branch: a new query projection ``to_q_ff`` (copied
    from ``to_q``) attends to the frozen ``to_k`` / ``to_v`` of frame 0 of the same video, and a new output
    projection ``to_out_ff`` (zero-initialised, with bias) is added to ``to_out[0]``. 24,793,280 new parameters
    on SD1.5. The first-frame latent is never noised and is left out of the loss; the Frame Similarity Prior
    (FSP) initialises the other frames at sampling.

    Defaults follow the official code (``MixedCausalAttention2D`` and ``I2VIPAdapterPipeline.downgrade_input``),
    where the FSP numbers are hard-coded.

    Attributes:
        num_frames: frames per video ``F`` used until the first forward of a ``UNetMotionModel`` tells the real
            number (its ``sample`` is ``(B, C, F, h, w)``); a 2-D UNet fed ``(B F, C, h, w)`` keeps this value
            unless :func:`set_num_frames` changes it. Official sampling: 16.
        fsp_mask_ratio: probability that an FSP latent element is replaced by its blurred value (official
            ``mask = rand >= 0.5``: 0.5).
        fsp_blur_kernel: side of the FSP Gaussian blur kernel, odd (official 9).
        fsp_blur_sigma: standard deviation of the FSP blur in latent pixels (official 18).
        fsp_timestep: diffusion timestep whose ``alpha_bar`` weights the FSP prior; ``None`` = the first sampling
            timestep (official: the loop starts at ``scheduler.timesteps[0]``, 960 for DDIM 25 steps).
        target_modules: attention modules to adapt (peft suffix / regex rule); ``None`` = every ``attn1``.
            Modules under ``motion_modules`` are always left out.
    """

    num_frames: int = 16
    fsp_mask_ratio: float = 0.5
    fsp_blur_kernel: int = 9
    fsp_blur_sigma: float = 18.0
    fsp_timestep: int | None = None

    method = "i2v_adapter"

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"I2VAdapterConfig.num_frames must be an integer >= 1, got {self.num_frames!r}")
        if not 0.0 <= self.fsp_mask_ratio <= 1.0:
            raise ValueError(f"I2VAdapterConfig.fsp_mask_ratio must lie in [0, 1], got {self.fsp_mask_ratio!r}")
        k = self.fsp_blur_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"I2VAdapterConfig.fsp_blur_kernel must be an odd integer >= 1, got {k!r}")
        if not self.fsp_blur_sigma > 0.0:
            raise ValueError(f"I2VAdapterConfig.fsp_blur_sigma must be > 0, got {self.fsp_blur_sigma!r}")
        t = self.fsp_timestep
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ValueError(f"I2VAdapterConfig.fsp_timestep must be None or an integer >= 0, got {t!r}")
