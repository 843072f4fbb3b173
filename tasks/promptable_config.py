"""The grouped settings of :class:`~tasks.promptable.PromptableSegmentationTask`: where prompts come from, what of
SAM's prompt encoder and mask decoder trains, and the loss.

Each group is one init arg of the task and one nested YAML section, validated when it is built::

    model:
      class_path: vadapt.tasks.PromptableSegmentationTask
      init_args:
        prompting: {mode: automatic, auto_points: 2}
        decoder: {prompt_encoder: train, mask_decoder: train}
        loss: {focal_weight: 0.2, dice_weight: 0.8}

Before the grouping these were flat init args of the task (``prompting: automatic``, ``auto_points: 2``, ...,
with the same names and defaults); :func:`group_flat_init_args` turns such init args (stored in the checkpoints
of earlier versions) into the grouped form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from vadapt.data.prompts import PromptSampler

PROMPTING = ("sampled", "automatic", "learned")
PROMPT_ENCODER = ("frozen", "train")
MASK_DECODER = ("frozen", "norms", "train", "lora")


def _check_count(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class PromptingConfig:
    """Where prompts come from (see :mod:`tasks.promptable`).

    Attributes:
        mode: ``"sampled"`` (drawn from the ground-truth masks in training, given by the user at inference),
            ``"automatic"`` (MapSAM's prompt-free mode) or ``"learned"`` (SALT's prompt-free mode).
        num_positive: sampled prompting's positive points per point-prompted sample (``PromptSampler``).
        num_negative: sampled prompting's negative points per point-prompted sample.
        box_probability: sampled prompting's chance that a sample is prompted with a box instead of points.
        box_jitter: sampled prompting's box noise, a fraction of the box side (SAM's 0.1).
        auto_points: automatic prompting's positive and negative points, each (MapSAM 2).
        coarse_blocks: automatic prompting's SAM ViT blocks read by the extra coarse heads (default MapSAM's: every
            4th block but the last); not used by SAM 2.
        masked_attention: automatic prompting's masked token-to-image attention (MapSAM: on).
        learned_tokens: learned prompting's number of prompt tokens (SALT 1).
    """

    mode: Literal["sampled", "automatic", "learned"] = "sampled"
    num_positive: int = 1
    num_negative: int = 0
    box_probability: float = 0.5
    box_jitter: float = 0.1
    auto_points: int = 2
    coarse_blocks: list[int] | None = None
    masked_attention: bool = True
    learned_tokens: int = 1

    def __post_init__(self) -> None:
        if self.mode not in PROMPTING:
            raise ValueError(f"PromptingConfig.mode must be one of {PROMPTING}, got {self.mode!r}")
        _check_count("PromptingConfig", "auto_points", self.auto_points)
        _check_count("PromptingConfig", "learned_tokens", self.learned_tokens)
        try:  # the sampler's own checks of num_positive, num_negative, box_probability, box_jitter
            self.sampler()
        except ValueError as exc:
            raise ValueError(f"PromptingConfig: {exc}") from None

    def sampler(self) -> PromptSampler:
        """The training prompts of ``mode="sampled"``."""
        return PromptSampler(num_positive=self.num_positive, num_negative=self.num_negative,
                             box_probability=self.box_probability, box_jitter=self.box_jitter)


@dataclass(frozen=True)
class DecoderConfig:
    """What of SAM's prompt encoder and mask decoder trains, and what the decoder outputs.

    Attributes:
        prompt_encoder: ``"frozen"`` or ``"train"``.
        mask_decoder: ``"frozen"``, ``"norms"`` (only its LayerNorms train, as SALT's "norm" rule), ``"train"``
            (all of it, as MapSAM / SAMed) or ``"lora"`` (LoRA of rank ``decoder_lora_r`` on the q/v projections
            of its two-way transformer).
        decoder_lora_r: the rank of ``mask_decoder="lora"``.
        multimask_output: decode SAM's three masks; training back-propagates the best one per sample (SAM).
    """

    prompt_encoder: Literal["frozen", "train"] = "frozen"
    mask_decoder: Literal["frozen", "norms", "train", "lora"] = "train"
    decoder_lora_r: int = 4
    multimask_output: bool = False

    def __post_init__(self) -> None:
        if self.prompt_encoder not in PROMPT_ENCODER:
            raise ValueError(f"DecoderConfig.prompt_encoder must be 'frozen' or 'train', got {self.prompt_encoder!r}")
        if self.mask_decoder not in MASK_DECODER:
            raise ValueError("DecoderConfig.mask_decoder must be 'frozen', 'norms', 'train' or 'lora', got "
                             f"{self.mask_decoder!r}")
        _check_count("DecoderConfig", "decoder_lora_r", self.decoder_lora_r)


@dataclass(frozen=True)
class LossConfig:
    """The loss: ``focal_weight * focal + dice_weight * dice`` on sigmoid logits, ignore pixels left out.

    Attributes:
        focal_weight: weight of the focal loss (MapSAM 0.2; SAM's paper used focal:dice = 20:1).
        dice_weight: weight of the dice loss (MapSAM 0.8).
        coarse_weight: automatic prompting's weight of the same loss on the coarse mask (MapSAM 1).
    """

    focal_weight: float = 0.2
    dice_weight: float = 0.8
    coarse_weight: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value >= 0:
                raise ValueError(f"LossConfig.{field.name} must be >= 0, got {value!r}")


#: the task's init arg of each group, and its class
GROUPS: dict[str, type] = {"prompting": PromptingConfig, "decoder": DecoderConfig, "loss": LossConfig}
#: the flat init args of earlier versions (fixed: a field added later is no flat init arg), by the group that
#: holds them now; ``prompting`` itself, a string then, is ``prompting.mode``
FLAT_ARGS: dict[str, tuple[str, ...]] = {
    "prompting": ("num_positive", "num_negative", "box_probability", "box_jitter", "auto_points", "coarse_blocks",
                  "masked_attention", "learned_tokens"),
    "decoder": ("prompt_encoder", "mask_decoder", "decoder_lora_r", "multimask_output"),
    "loss": ("focal_weight", "dice_weight", "coarse_weight"),
}

Config = TypeVar("Config", PromptingConfig, DecoderConfig, LossConfig)


def as_config(cls: type[Config], value: Any) -> Config:
    """A ``cls`` from itself, ``None`` (the defaults), a dict of its fields, or ``{"class_path", "init_args"}`` (how
    hyperparameters and checkpoint manifests store it; the class path is compared, never imported). For
    ``PromptingConfig`` a string is the ``mode`` (the flat ``prompting`` init arg of earlier versions)."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, str) and cls is PromptingConfig:
        return cls(mode=value)
    if isinstance(value, Mapping):
        return cls(**_fields_of(cls, value))
    raise ValueError(f"expected a {cls.__name__} or a dict of its fields, got {value!r}")


def prompting_mode(init_args: Mapping[str, Any]) -> str:
    """The prompting mode of a task's init args (hyperparameters, a checkpoint manifest's), in any form
    :func:`as_config` takes, without building the config; ``"sampled"`` if unset."""
    value = init_args.get("prompting")
    if isinstance(value, PromptingConfig):
        return value.mode
    if isinstance(value, Mapping):
        return _fields_of(PromptingConfig, value).get("mode", "sampled")
    return "sampled" if value is None else value


def group_flat_init_args(init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` with the flat settings of earlier versions (``prompting: automatic``, ``auto_points``,
    ``mask_decoder``, ``focal_weight``, ...) moved into their groups; grouped init args come back as they are.

    A group given as well keeps its other fields; a flat setting that contradicts a field the group sets is an
    error."""
    args = dict(init_args)
    if isinstance(args.get("prompting"), str):
        args["prompting"] = {"mode": args["prompting"]}
    for group, names in FLAT_ARGS.items():
        flat = {name: args.pop(name) for name in names if name in args}
        if flat:
            args[group] = _with_fields(GROUPS[group], group, args.get(group), flat)
    return args


def _fields_of(cls: type, value: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a dict form: itself, or the ``init_args`` of ``{"class_path", "init_args"}``."""
    if "class_path" not in value:
        return dict(value)
    path = str(value["class_path"])
    if path.rpartition(".")[2] != cls.__name__:
        raise ValueError(f"class_path {path!r} is not a {cls.__name__}")
    return dict(value.get("init_args") or {})


def _with_fields(cls: type, group: str, value: Any, flat: dict[str, Any]) -> Any:
    """The group ``value`` (any form :func:`as_config` takes) with the flat settings added, in the same form."""
    if value is None:
        return flat
    if isinstance(value, cls):
        default = cls()
        given = {f.name: getattr(value, f.name) for f in dataclasses.fields(cls)
                 if getattr(value, f.name) != getattr(default, f.name)}
    elif isinstance(value, Mapping):
        given = _fields_of(cls, value)
    else:
        raise ValueError(f"{group} must be a {cls.__name__} or a dict of its fields, got {value!r}")
    clash = sorted(name for name in flat if name in given and given[name] != flat[name])
    if clash:
        raise ValueError(f"{', '.join(clash)} given both flat ({', '.join(f'{n}={flat[n]!r}' for n in clash)}) and in "
                         f"{group} ({', '.join(f'{n}={given[n]!r}' for n in clash)}): set them in {group} only")
    if isinstance(value, cls):
        return dataclasses.replace(value, **flat)
    if "class_path" in value:
        return {**value, "init_args": {**given, **flat}}
    return {**given, **flat}
