"""MV-Adapter: multi-view consistent generation on a frozen diffusers UNet (Huang et al., 2024, arXiv:2412.03632)."""

from vadapt.adapters.base import ADAPTERS, AdapterMethod
from vadapt.geometry.cameras import (
    official_six_view_cameras,
    orbit_cameras,
    ortho_camera_maps,
    position_normal_maps,
    ray_maps,
    to_unit_range,
)

from .config import MVAdapterConfig
from .layer import MVAdapterState, MVAttnProcessor, row_mv_attention
from .model import (
    build_condition_encoder,
    compute_reference_features,
    inject_mv_adapter,
    load_mv_adapter,
    load_mv_adapter_state_dict,
    min_snr_loss,
    min_snr_weights,
    mv_adapter_config,
    mv_adapter_disabled,
    mv_adapter_state_dict,
    record_reference,
    remove_mv_adapter,
    save_mv_adapter,
    set_mv_scales,
    set_num_views,
    unet_kwargs_with_condition,
    use_reference,
)
from .schedule import betas_from_snr, shifted_scheduler_config, shifted_snr_betas

ADAPTERS.register("mv_adapter", AdapterMethod(MVAdapterConfig, inject_mv_adapter))

__all__ = [
    "betas_from_snr", "shifted_scheduler_config", "shifted_snr_betas",
    "MVAdapterConfig", "MVAdapterState", "MVAttnProcessor", "build_condition_encoder", "compute_reference_features",
    "inject_mv_adapter", "load_mv_adapter", "load_mv_adapter_state_dict", "min_snr_loss", "min_snr_weights",
    "mv_adapter_config", "mv_adapter_disabled", "mv_adapter_state_dict", "official_six_view_cameras",
    "orbit_cameras", "ortho_camera_maps", "position_normal_maps", "ray_maps", "record_reference",
    "remove_mv_adapter", "row_mv_attention", "save_mv_adapter", "set_mv_scales", "set_num_views",
    "to_unit_range", "unet_kwargs_with_condition", "use_reference",
]
