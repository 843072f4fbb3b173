"""Frozen latent-diffusion base models from diffusers: Stable Diffusion 1.5 / 2.1 / XL and AnimateDiff.

Stable Diffusion (Rombach et al., 2022, arXiv:2112.10752; SDXL: Podell et al., 2023, arXiv:2307.01952) is a
``UNet2DConditionModel`` denoiser over the latents of an ``AutoencoderKL`` (8x down-sampling, 4 channels),
conditioned on CLIP text-encoder hidden states. AnimateDiff (Guo et al., 2023, arXiv:2307.04725) inserts the
temporal layers of a ``MotionAdapter`` into an SD1.5 UNet (``UNetMotionModel.from_unet2d``).

:class:`DiffusionBase` holds the components (all frozen). Adapters only touch ``backbone.unet``; samplers and
training loops use ``encode_prompt`` / ``encode_images`` / ``decode_latents`` and the schedulers.

Weights (``load_pretrained`` / the builder's ``pretrained=``) come from one of

* a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``; SDXL also ``text_encoder_2/`` and ``tokenizer_2/``), read with ``from_pretrained``
  (safetensors only); its files are checked first, and every missing one is named in one error;
* a single original-format ``.safetensors`` checkpoint (``from_single_file``). diffusers needs the model's
  diffusers configs and tokenizer for that, from the hub, its local cache, or ``config=`` a local diffusers
  folder of the same model (weights not needed there); offline without them the error says so;
* a hub id ``"owner/name"`` (not an existing local path) for users who are online.

Real architectures are described by ``UNET_CONFIGS``, ``VAE_CONFIGS`` and ``TEXT_ENCODER_CONFIGS`` (the
diffusers / transformers configs of the published checkpoints), so :func:`real_parameter_counts` builds them on
the meta device without weights. The ``*_test`` entries are tiny random configs of the same classes, with a
character-level CLIP tokenizer built in memory (works offline). Without weights a real architecture is randomly
initialised (``with torch.device("meta")`` for counting) and gets that placeholder tokenizer too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vadapt.bands import RGB, BandInit, check_bands
from vadapt.weights import WeightsNotFoundError, WeightsSource, search_dirs

from .base import register_backbone

# ---- real architectures (diffusers / transformers configs of the published checkpoints) ----------------------

_SD_UNET = dict(
    in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
)
#: ``unet/config.json`` of each base (SD1.5: 859,520,964 parameters; SDXL: 2,567,463,684)
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": dict(_SD_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(_SD_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True, upcast_attention=True),
    "sdxl": dict(
        sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
        act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}
_SD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32,
)
#: ``vae/config.json`` of each base (83,653,863 parameters each)
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": dict(_SD_VAE, sample_size=512, scaling_factor=0.18215),
    "sd21": dict(_SD_VAE, sample_size=768, scaling_factor=0.18215),
    "sdxl": dict(_SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
}
_CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower: 123,060,480 parameters
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
#: ``text_encoder/config.json`` (and ``text_encoder_2`` for SDXL) of each base, as ``CLIPTextConfig`` keywords
TEXT_ENCODER_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {"text_encoder": _CLIP_L},
    # OpenCLIP ViT-H/14 text tower with its last layer removed (SD2 uses the penultimate layer): 340,387,840
    "sd21": {"text_encoder": dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512)},
    "sdxl": {
        "text_encoder": _CLIP_L,
        # OpenCLIP ViT-bigG/14 text tower with projection (CLIPTextModelWithProjection): 694,659,840
        "text_encoder_2": dict(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
    },
}
#: ``scheduler/scheduler_config.json`` (the DDPM training schedule every SD base shares, bar prediction_type)
_SD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
)
SCHEDULER_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": dict(_SD_SCHEDULER),
    "sd21": dict(_SD_SCHEDULER, prediction_type="v_prediction"),  # the 768 px model is a v-prediction model
    "sdxl": dict(_SD_SCHEDULER),
}
#: guoyww/animatediff-motion-adapter-v1-5-2 ``config.json`` (MotionAdapter keywords)
MOTION_ADAPTER_CONFIG: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
HUB_IDS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
MOTION_ADAPTER_HUB_ID = "guoyww/animatediff-motion-adapter-v1-5-2"

# ---- tiny architectures (same classes, random init) ------------------------------------------------------------

_TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)
# 4 levels -> the real 8x latent down-sampling; 64 px images give 8x8 latents
_TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                 act_fn="silu", latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
_TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                  norm_num_groups=8)
_PIXEL_DEMO_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32, 64),
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                       cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15_test": {"base": "sd15", "unet": _TINY_UNET, "vae": _TINY_VAE, "text_encoder": _TINY_TEXT},
    "sdxl_test": {
        "base": "sdxl",
        "unet": dict(_TINY_UNET, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                     attention_head_dim=(4, 8), transformer_layers_per_block=(1, 2), use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=32 + 6 * 8),
        "vae": dict(_TINY_VAE, scaling_factor=0.13025),
        "text_encoder": _TINY_TEXT,
        "text_encoder_2": _TINY_TEXT,
    },
    "animatediff_test": {
        "base": "sd15", "unet": _TINY_UNET, "vae": _TINY_VAE, "text_encoder": _TINY_TEXT,
        "motion_adapter": dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                               motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=True),
    },
    # pixel-space base: no VAE, the UNet denoises 3-channel images directly (CPU demo)
    "pixel_test": {"base": "sd15", "unet": dict(_TINY_UNET, sample_size=32, in_channels=3, out_channels=3),
                   "vae": None, "text_encoder": _TINY_TEXT},
    # the offline ResAdapter demo's base (``vadapt pretrain-diffusion``): pixel space, 32 px, three levels
    # (32 / 16 / 8 px) with text cross-attention at the two lower ones and the mid block; 2 down- and 2
    # up-samplers for ResCLoRA. About 1.0M UNet parameters: "one coloured shape from its prompt" in CPU minutes
    "pixel_demo": {"base": "sd15", "unet": _PIXEL_DEMO_UNET, "vae": None, "text_encoder": _TINY_TEXT},
}
ARCHS = ("sd15", "sd21", "sdxl", "animatediff_sd15", *TINY_CONFIGS)


def _base_of(arch: str) -> str:
    if arch in TINY_CONFIGS:
        return TINY_CONFIGS[arch]["base"]
    return "sd15" if arch == "animatediff_sd15" else arch


def _is_xl(arch: str) -> bool:
    return _base_of(arch) == "sdxl"


def _is_motion(arch: str) -> bool:
    return arch.startswith("animatediff")


# ---- offline tokenizer -----------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table (the alphabet of CLIP's byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def offline_clip_tokenizer(max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` with a character-level vocabulary (514 ids, no merges), built in memory: no files,
    no network. Special tokens as CLIP's: ``<|startoftext|>`` = 512, ``<|endoftext|>`` = 513 (also padding)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


# ---- the base model --------------------------------------------------------------------------------------------


class DiffusionBase(nn.Module):
    """A frozen Stable Diffusion / AnimateDiff base: ``unet``, ``vae`` (None: pixel space), CLIP text encoder(s),
    tokenizer(s) and the training ``scheduler_config``.

    Shapes: images ``(B, 3, H, W)`` in [-1, 1]; latents ``(B, 4, H/8, W/8)`` (``vae_scale_factor`` = 8, or 1
    without a VAE, where latents are the images); AnimateDiff's UNet takes ``(B, C, F, h, w)`` (F frames).
    """

    family = "diffusion"
    block_layout = "unet"
    #: default LoRA targets: the UNet's attention projections (diffusers' LoRA training scripts adapt these)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    #: tasks normalise [0, 1] images with these: (x - 0.5) / 0.5 = 2x - 1, the [-1, 1] range the VAE expects
    rgb_mean = (0.5, 0.5, 0.5)
    rgb_std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        arch: str = "sd15_test",
        pretrained: str | None = None,
        motion_adapter: str | None = None,
        config: str | None = None,
        local_files_only: bool = False,
        torch_dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            arch: ``sd15``, ``sd21``, ``sdxl``, ``animatediff_sd15`` or a tiny ``*_test`` architecture.
            pretrained: a diffusers folder, a single ``.safetensors`` file or a hub id to load now (instead of
                random init); the same as ``load_pretrained`` afterwards but without building random weights first.
            motion_adapter: AnimateDiff only: a MotionAdapter folder (``config.json``,
                ``diffusion_pytorch_model.safetensors``) or hub id; default
                ``guoyww/animatediff-motion-adapter-v1-5-2``.
            config: single-file loading only: a local diffusers folder of the same model whose configs and
                tokenizer(s) ``from_single_file`` uses (default: the base's hub id, i.e. hub or HF cache).
            local_files_only: never reach the network (hub ids and single files then need the HF cache).
            torch_dtype: dtype of loaded weights (default float32).
        """
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"Unknown diffusion architecture {arch!r}; choose one of {list(ARCHS)}")
        self.arch = arch
        self.name = arch
        self.bands: tuple[str, ...] = RGB
        self.motion_adapter_source = motion_adapter
        self.single_file_config = config
        self.local_files_only = local_files_only
        self.torch_dtype = torch_dtype
        self.text_encoder_2: nn.Module | None = None
        self.tokenizer_2: Any = None
        if pretrained is not None:
            self.load_pretrained(pretrained)
        else:
            self._build_random()

    # ---- construction --------------------------------------------------------------------------------------
    def _build_random(self) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        arch, base = self.arch, _base_of(self.arch)
        tiny = TINY_CONFIGS.get(arch)
        tokenizer = offline_clip_tokenizer()
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        if tiny:
            text_cfgs = {k: dict(tiny[k], vocab_size=len(tokenizer))
                         for k in ("text_encoder", "text_encoder_2") if k in tiny}
            unet_cfg, vae_cfg = tiny["unet"], tiny["vae"]
        else:
            text_cfgs = TEXT_ENCODER_CONFIGS[base]
            unet_cfg, vae_cfg = UNET_CONFIGS[base], VAE_CONFIGS[base]
        unet = UNet2DConditionModel(**unet_cfg)
        self.vae = AutoencoderKL(**vae_cfg) if vae_cfg is not None else None
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfgs["text_encoder"], **ids))
        self.tokenizer = tokenizer
        if "text_encoder_2" in text_cfgs:
            self.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfgs["text_encoder_2"], **ids))
            self.tokenizer_2 = tokenizer
        self.scheduler_config = dict(SCHEDULER_CONFIGS[base])
        if _is_motion(arch):
            from diffusers import MotionAdapter

            adapter = MotionAdapter(**(tiny["motion_adapter"] if tiny else MOTION_ADAPTER_CONFIG))
            unet = _motion_unet(unet, adapter)
        self.unet = unet
        self.freeze()

    @property
    def model(self) -> nn.Module:
        """The module weight-level adapters (LoRA / DoRA through peft) attach into: the UNet, as ``model`` is the
        upstream module of an image backbone."""
        return self.unet

    # ---- loading -------------------------------------------------------------------------------------------
    def load_pretrained(self, path: str) -> None:
        """Replace the components by those of a diffusers folder, a single ``.safetensors`` file or a hub id."""
        source = str(path)
        local = Path(source).expanduser()
        if local.is_dir():
            self._load_folder(str(local), local=True)
        elif local.is_file():
            if local.suffix != ".safetensors":
                raise WeightsNotFoundError(
                    f"{local} is not a .safetensors file; diffusion base {self.name!r} loads a diffusers folder, a "
                    "single .safetensors checkpoint or a hub id")
            self._load_single_file(str(local))
        elif _looks_like_hub_id(source) and not source.startswith((".", "/", "~")):
            self._load_folder(source, local=False)
        else:
            raise WeightsNotFoundError(
                f"Weights for diffusion base {self.name!r} not found: {source} is neither a diffusers folder "
                f"({', '.join(expected_files(self.arch))}), a .safetensors file nor a hub id like "
                f"{HUB_IDS[_base_of(self.arch)]!r}")
        self.freeze()

    def _load_folder(self, folder: str, local: bool) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        if local:
            check_diffusers_folder(folder, self.arch)
        common: dict[str, Any] = dict(local_files_only=self.local_files_only)
        if self.torch_dtype is not None:
            common["torch_dtype"] = self.torch_dtype
        try:
            unet_class = UNet2DConditionModel
            if _is_motion(self.arch) and _unet_class_name(folder, local) == "UNetMotionModel":
                from diffusers import UNetMotionModel

                unet_class = UNetMotionModel
            unet = unet_class.from_pretrained(folder, subfolder="unet", use_safetensors=True, **common)
            vae = None
            if not local or (Path(folder) / "vae").is_dir():
                vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, **common)
            text_kwargs = dict(local_files_only=self.local_files_only, use_safetensors=True)
            if self.torch_dtype is not None:
                text_kwargs["dtype"] = self.torch_dtype
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **text_kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer",
                                                      local_files_only=self.local_files_only)
            text_encoder_2 = tokenizer_2 = None
            if _is_xl(self.arch):
                text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2",
                                                                             **text_kwargs)
                tokenizer_2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2",
                                                            local_files_only=self.local_files_only)
            scheduler_config = _read_scheduler_config(folder, local, self.local_files_only) or dict(
                SCHEDULER_CONFIGS[_base_of(self.arch)])
        except (OSError, ValueError) as exc:
            if local:
                raise
            raise WeightsNotFoundError(
                f"Could not load diffusion base {self.name!r} from the hub id {folder!r} (offline, or not in the "
                f"local Hugging Face cache?); pass a local diffusers folder with "
                f"{', '.join(expected_files(self.arch))} instead. Cause: {exc}") from exc
        if _is_motion(self.arch) and type(unet).__name__ != "UNetMotionModel":
            unet = _motion_unet(unet, self._motion_adapter())
        self._set_components(unet, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler_config)

    def _load_single_file(self, path: str) -> None:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        pipe_class = StableDiffusionXLPipeline if _is_xl(self.arch) else StableDiffusionPipeline
        config = self.single_file_config or HUB_IDS[_base_of(self.arch)]
        kwargs: dict[str, Any] = dict(config=config, local_files_only=self.local_files_only)
        if self.torch_dtype is not None:
            kwargs["torch_dtype"] = self.torch_dtype
        if pipe_class is StableDiffusionPipeline:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            if self.local_files_only and not Path(config).is_dir() and not _hub_file_cached(config, "model_index.json"):
                # diffusers would silently switch to downloading the configs: honour local_files_only here
                raise OSError(f"local_files_only: {config}/model_index.json is not in the Hugging Face cache")
            pipe = pipe_class.from_single_file(path, **kwargs)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"Loading the single file {path} as {self.name!r} needs the diffusers configs and tokenizer of "
                f"{config!r} ({', '.join(_config_files(self.arch))}), from the Hugging Face hub or its local cache, "
                "which could not be read (offline?); pass config=<a local diffusers folder of the same model>, "
                f"or load a full diffusers folder instead. Cause: {exc}") from exc
        unet = pipe.unet
        if _is_motion(self.arch):
            unet = _motion_unet(unet, self._motion_adapter())
        self._set_components(unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, getattr(pipe, "text_encoder_2", None),
                             getattr(pipe, "tokenizer_2", None), dict(pipe.scheduler.config))

    def _motion_adapter(self) -> nn.Module:
        from diffusers import MotionAdapter

        source = self.motion_adapter_source or MOTION_ADAPTER_HUB_ID
        local = Path(source).expanduser()
        files = ("config.json", "diffusion_pytorch_model.safetensors")
        if local.is_dir():
            missing = [f for f in files if not (local / f).is_file()]
            if missing:
                raise WeightsNotFoundError(f"MotionAdapter folder {local} lacks {', '.join(missing)}")
            return MotionAdapter.from_pretrained(str(local), use_safetensors=True)
        try:
            return MotionAdapter.from_pretrained(source, use_safetensors=True, local_files_only=self.local_files_only)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"Could not load the AnimateDiff MotionAdapter {source!r}: pass motion_adapter=<a folder with "
                f"{', '.join(files)}> (e.g. a download of {MOTION_ADAPTER_HUB_ID}). Cause: {exc}") from exc

    def _set_components(self, unet, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler_config):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.scheduler_config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the diffusers folder layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
        ``tokenizer/``, ``scheduler/``; SDXL ``text_encoder_2/``, ``tokenizer_2/``) that ``load_pretrained`` reads."""
        from diffusers import DDPMScheduler

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {"_class_name": "StableDiffusionXLPipeline" if _is_xl(self.arch)
                                 else "StableDiffusionPipeline", "_diffusers_version": _diffusers_version()}
        for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(self, key)
            if module is not None:
                module.save_pretrained(str(folder / key), safe_serialization=True)
                library = "transformers" if key.startswith("text") else "diffusers"
                index[key] = [library, type(module).__name__]
        for key in ("tokenizer", "tokenizer_2"):
            tokenizer = getattr(self, key)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(folder / key))
                index[key] = ["transformers", "CLIPTokenizer"]
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(str(folder / "scheduler"))
        index["scheduler"] = ["diffusers", "DDPMScheduler"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    # ---- the backbone interface ----------------------------------------------------------------------------
    def freeze(self) -> None:
        """Every parameter frozen (adapters unfreeze only their own)."""
        for p in self.parameters():
            p.requires_grad_(False)

    def set_bands(self, bands: Sequence[str], init: BandInit = "copy") -> None:
        """RGB only: a no-op for RGB, an error otherwise (the VAE / pixel UNet is an RGB model)."""
        if check_bands(bands) != RGB:
            raise ValueError(f"Diffusion base {self.name!r} takes RGB images only (bands {list(RGB)}), "
                             f"got {list(bands)}")

    @property
    def device(self) -> torch.device:
        """Device of the UNet's parameters (the other components are expected beside it)."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the UNet's parameters (float32 unless loaded with ``torch_dtype``)."""
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixel-to-latent down-sampling: 8 for the SD VAEs, 1 in pixel space."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels the UNet denoises (its ``in_channels``): 4 for the SD latents, 3 for the pixel-space bases."""
        return int(self.unet.config.in_channels)

    @property
    def prediction_type(self) -> str:
        """The UNet's target from the scheduler config: ``"epsilon"`` (noise) or ``"v_prediction"`` (SD2.1)."""
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The UNet's prediction (noise or v) for ``sample`` ``(B, C, h, w)`` (AnimateDiff ``(B, C, F, h, w)``).

        AnimateDiff's ``UNetMotionModel`` wants one text condition per frame, ``(B * F, 77, D)`` (frame-major
        within each video, as AnimateDiffPipeline's ``repeat_interleave``); ``(B, 77, D)`` is repeated here.
        """
        if sample.ndim == 5 and encoder_hidden_states.shape[0] == sample.shape[0]:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(sample.shape[2], dim=0)
        if added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = added_cond_kwargs
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample

    def _tokens(self, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def _embed(self, prompts: list[str], size: tuple[int, int] | None) -> dict[str, Any]:
        if not _is_xl(self.arch):
            # SD1.5 / SD2.1: the text encoder's last hidden state (after its final layer norm); SD2's encoder
            # config already stops at OpenCLIP-H's penultimate layer
            return {"encoder_hidden_states": self.text_encoder(self._tokens(self.tokenizer, prompts))[0]}
        # SDXL: penultimate hidden states of both encoders (no final norm), concatenated on channels; the pooled,
        # projected output of text_encoder_2 is the extra "text_embeds" condition
        out1 = self.text_encoder(self._tokens(self.tokenizer, prompts), output_hidden_states=True)
        out2 = self.text_encoder_2(self._tokens(self.tokenizer_2, prompts), output_hidden_states=True)
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        height, width = size or (self.unet.config.sample_size * self.vae_scale_factor,) * 2
        # (original_size, crops_coords_top_left, target_size) as in StableDiffusionXLPipeline._get_add_time_ids
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=hidden.dtype, device=hidden.device)
        return {"encoder_hidden_states": hidden,
                "added_cond_kwargs": {"text_embeds": out2.text_embeds, "time_ids": time_ids.repeat(len(prompts), 1)}}

    @torch.no_grad()
    def encode_prompt(
        self,
        prompts: list[str],
        negative: list[str] | None = None,
        size: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Text conditioning for the UNet.

        Returns ``{"encoder_hidden_states": (B, 77, D)}`` (D = 768 SD1.5, 1024 SD2.1, 2048 SDXL) and, for SDXL,
        ``"added_cond_kwargs": {"text_embeds": (B, 1280), "time_ids": (B, 6)}`` (``time_ids`` = original
        size, crop top-left (0, 0), target size, from ``size`` = (H, W) in pixels, default the UNet's native size).
        With ``negative`` (one per prompt, for classifier-free guidance) every tensor has ``2B`` rows: the
        negative prompts' first, then the prompts' (diffusers' order; ``chunk(2)`` splits them). As
        StableDiffusionXLPipeline (``force_zeros_for_empty_prompt``), SDXL's all-empty negatives are zeros.
        """
        prompts = list(prompts)
        cond = self._embed(prompts, size)
        if negative is None:
            return cond
        negative = list(negative)
        if len(negative) != len(prompts):
            raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
        if _is_xl(self.arch) and all(n == "" for n in negative):
            uncond = {"encoder_hidden_states": torch.zeros_like(cond["encoder_hidden_states"]),
                      "added_cond_kwargs": {"text_embeds": torch.zeros_like(cond["added_cond_kwargs"]["text_embeds"]),
                                            "time_ids": cond["added_cond_kwargs"]["time_ids"]}}
        else:
            uncond = self._embed(negative, size)
        out: dict[str, Any] = {"encoder_hidden_states": torch.cat([uncond["encoder_hidden_states"],
                                                                   cond["encoder_hidden_states"]])}
        if "added_cond_kwargs" in cond:
            out["added_cond_kwargs"] = {k: torch.cat([uncond["added_cond_kwargs"][k], v])
                                        for k, v in cond["added_cond_kwargs"].items()}
        return out

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> latents ``(B, 4, H/8, W/8)`` times ``vae.config.scaling_factor``
        (the mean of the VAE's posterior, or a sample of it); identity without a VAE."""
        if self.vae is None:
            return x
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        z = dist.sample() if sample else dist.mode()
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, 4, h, w)`` (scaled as ``encode_images`` returns them) -> images ``(B, 3, 8h, 8w)``
        in [-1, 1]; clamped identity without a VAE."""
        if self.vae is None:
            return z.clamp(-1, 1)
        images = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return images.clamp(-1, 1)

    def make_scheduler(self, kind: str = "ddim", config: dict[str, Any] | None = None) -> Any:
        """A sampling scheduler from ``scheduler_config`` (or ``config``, e.g. an adapter's shifted schedule):
        ``ddim``, ``euler`` or ``dpm`` (DPM-Solver++ multistep)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

        classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm": DPMSolverMultistepScheduler}
        if kind not in classes:
            raise ValueError(f"Unknown scheduler {kind!r}; choose one of {sorted(classes)}")
        return classes[kind].from_config(copy.deepcopy(self.scheduler_config if config is None else config))

    def noise_scheduler(self, config: dict[str, Any] | None = None) -> Any:
        """The DDPM training scheduler (``add_noise``, ``get_velocity``) of ``scheduler_config`` (or ``config``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(copy.deepcopy(self.scheduler_config if config is None else config))

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component and in total."""
        counts = {key: sum(p.numel() for p in module.parameters())
                  for key in ("unet", "vae", "text_encoder", "text_encoder_2")
                  if (module := getattr(self, key)) is not None}
        counts["total"] = sum(counts.values())
        return counts

    def describe(self) -> dict[str, Any]:
        """Metadata stored in adapter checkpoints and shown by ``vadapt list``."""
        return {
            "name": self.name,
            "family": self.family,
            "arch": self.arch,
            "bands": list(self.bands),
            "block_layout": self.block_layout,
            "unet_class": type(self.unet).__name__,
            "latent_channels": self.latent_channels,
            "vae_scale_factor": self.vae_scale_factor,
            "cross_attention_dim": self.unet.config.cross_attention_dim,
            "sample_size": self.unet.config.sample_size,
            "prediction_type": self.prediction_type,
            "parameter_counts": self.parameter_counts(),
        }


# ---- helpers ---------------------------------------------------------------------------------------------------


def _motion_unet(unet: nn.Module, adapter: nn.Module) -> nn.Module:
    from diffusers import UNetMotionModel

    motion = UNetMotionModel.from_unet2d(unet, adapter)
    dtype = next(unet.parameters()).dtype
    return motion if next(motion.parameters()).dtype == dtype else motion.to(dtype=dtype)


def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None


def _hub_file_cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _unet_class_name(folder: str, local: bool) -> str | None:
    if not local:
        return None
    config = Path(folder) / "unet" / "config.json"
    return json.loads(config.read_text()).get("_class_name") if config.is_file() else None


def _read_scheduler_config(folder: str, local: bool, local_files_only: bool) -> dict[str, Any] | None:
    if local:
        path = Path(folder) / "scheduler" / "scheduler_config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    from diffusers import DDPMScheduler

    try:
        return dict(DDPMScheduler.load_config(folder, subfolder="scheduler", local_files_only=local_files_only))
    except (OSError, ValueError):
        return None


def _components(arch: str) -> list[str]:
    text = ["text_encoder", "text_encoder_2"] if _is_xl(arch) else ["text_encoder"]
    vae = [] if TINY_CONFIGS.get(arch, {}).get("vae", "") is None else ["vae"]
    return ["unet", *vae, *text]


def _config_files(arch: str) -> list[str]:
    tokenizers = ["tokenizer", "tokenizer_2"] if _is_xl(arch) else ["tokenizer"]
    return (["model_index.json"] + [f"{c}/config.json" for c in _components(arch)]
            + [f"{t}/(vocab.json + merges.txt, or tokenizer.json)" for t in tokenizers]
            + ["scheduler/scheduler_config.json"])


def expected_files(arch: str) -> list[str]:
    """Files of a diffusers folder for ``arch`` (weights as safetensors; sharded ``*.index.json`` also accepted)."""
    files = []
    for component in _components(arch):
        weights = "model.safetensors" if component.startswith("text") else "diffusion_pytorch_model.safetensors"
        files += [f"{component}/config.json", f"{component}/{weights}"]
    for tokenizer in ["tokenizer", "tokenizer_2"] if _is_xl(arch) else ["tokenizer"]:
        files.append(f"{tokenizer}/(vocab.json + merges.txt, or tokenizer.json)")
    return files


def check_diffusers_folder(folder: str | Path, arch: str) -> None:
    """Raise one ``WeightsNotFoundError`` naming every missing file of a diffusers folder (cheap, before loading)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsNotFoundError(f"Diffusers folder {folder} for {arch!r} not found; expected a folder with "
                                   f"{', '.join(expected_files(arch))}")
    missing = []
    for component in _components(arch):
        sub = folder / component
        if not (sub / "config.json").is_file():
            missing.append(f"{component}/config.json")
        weights = "model.safetensors" if component.startswith("text") else "diffusion_pytorch_model.safetensors"
        if not ((sub / weights).is_file() or (sub / f"{weights}.index.json").is_file()):
            missing.append(f"{component}/{weights}")
    for tokenizer in ["tokenizer", "tokenizer_2"] if _is_xl(arch) else ["tokenizer"]:
        sub = folder / tokenizer
        if not ((sub / "tokenizer.json").is_file() or ((sub / "vocab.json").is_file()
                                                        and (sub / "merges.txt").is_file())):
            missing.append(f"{tokenizer}/(vocab.json + merges.txt, or tokenizer.json)")
    if missing:
        raise WeightsNotFoundError(
            f"Diffusers folder {folder} for {arch!r} is missing {', '.join(missing)} (a complete folder has "
            f"{', '.join(expected_files(arch))})")


def real_parameter_counts(arch: str) -> dict[str, int]:
    """Per-component parameter counts of a real architecture, from its configs on the meta device (no weights)."""
    with torch.device("meta"):
        base = DiffusionBase(arch)
    return base.parameter_counts()


def _locate_folder(hub_id: str) -> Any:
    """A local diffusers folder named after the hub repository (``stable-diffusion-v1-5``) in the weights dirs."""

    def locate() -> str | None:
        for folder in search_dirs():
            candidate = folder / hub_id.split("/")[-1]
            if (candidate / "unet" / "config.json").is_file():
                return str(candidate)
        return None

    return locate


# ---- registry --------------------------------------------------------------------------------------------------

_REAL = {
    "sd15": ("v1-5-pruned-emaonly.safetensors", "Stable Diffusion 1.5 (UNet 860M, VAE, CLIP ViT-L/14 text), 512 px"),
    "sd21": ("v2-1_768-ema-pruned.safetensors",
             "Stable Diffusion 2.1 (768 px, v-prediction; OpenCLIP ViT-H/14 text)"),
    "sdxl": ("sd_xl_base_1.0.safetensors", "Stable Diffusion XL base 1.0 (UNet 2.6B, CLIP ViT-L + bigG), 1024 px"),
}
for _name, (_file, _text) in _REAL.items():
    register_backbone(_name, family="diffusion", builder=DiffusionBase, arch=_name, description=_text,
                      weights=WeightsSource(_file, hub_id=HUB_IDS[_name], locate=_locate_folder(HUB_IDS[_name])))
register_backbone(
    "animatediff_sd15", family="diffusion", builder=DiffusionBase, arch="animatediff_sd15",
    weights=WeightsSource(_REAL["sd15"][0], hub_id=HUB_IDS["sd15"], locate=_locate_folder(HUB_IDS["sd15"])),
    description=f"AnimateDiff: SD1.5 UNet + MotionAdapter ({MOTION_ADAPTER_HUB_ID}) as a UNetMotionModel",
)
for _name, _text in {
    "sd15_test": "tiny SD1.5-architecture base (UNet, VAE, CLIP text) for tests",
    "sdxl_test": "tiny SDXL-architecture base (two text encoders, text_time conditioning) for tests",
    "animatediff_test": "tiny AnimateDiff base (UNetMotionModel from a tiny SD1.5 UNet) for tests",
    "pixel_test": "tiny pixel-space diffusion base (no VAE, 3-channel UNet) for the CPU demo",
}.items():
    register_backbone(_name, family="diffusion", builder=DiffusionBase, arch=_name, tiny=True, description=_text)
register_backbone(
    "pixel_demo", family="diffusion", builder=DiffusionBase, arch="pixel_demo",
    description="small pixel-space diffusion base (32 px, no VAE) of the offline ResAdapter demo; no published "
    "weights: pretrain it with `vadapt pretrain-diffusion`",
)
