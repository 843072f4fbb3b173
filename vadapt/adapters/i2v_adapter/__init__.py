"""I2V-Adapter: first-frame attention branch for image-to-video diffusion (Guo et al., SIGGRAPH 2024,
arXiv:2312.16693)."""

from vadapt.adapters.base import ADAPTERS, AdapterMethod

from .config import I2VAdapterConfig
from .layer import FrameState, I2VAttnProcessor, first_frame_attention, first_frame_branch
from .model import (
    adapter_parameters,
    i2v_state_dict,
    inject_i2v_adapter,
    load_i2v_adapter,
    save_i2v_adapter,
    set_num_frames,
    spatial_self_attentions,
)
from .sampling import (
    degrade_first_frame,
    first_frame_loss_mask,
    frame_similarity_prior,
    gaussian_blur,
    i2v_loss,
    keep_first_frame,
    noise_all_but_first,
    prior_alpha_bar,
    step_all_but_first,
)

ADAPTERS.register("i2v_adapter", AdapterMethod(I2VAdapterConfig, inject_i2v_adapter))

__all__ = [
    "FrameState", "I2VAdapterConfig", "I2VAttnProcessor", "adapter_parameters", "degrade_first_frame",
    "first_frame_attention", "first_frame_branch", "first_frame_loss_mask", "frame_similarity_prior",
    "gaussian_blur", "i2v_loss", "i2v_state_dict", "inject_i2v_adapter", "keep_first_frame", "load_i2v_adapter",
    "noise_all_but_first", "prior_alpha_bar", "save_i2v_adapter", "set_num_frames", "spatial_self_attentions",
    "step_all_but_first",
]
