"""Finding adapter checkpoints under the configured folders and keeping the loaded models."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import AppError

KINDS = ("segment", "prompt", "change", "points", "generate", "depth")


@dataclass(frozen=True)
class CheckpointInfo:
    """One adapter checkpoint the app offers, from its manifest (no model is built to list it)."""

    path: Path
    label: str
    task: str
    backbone: str
    trainable: int
    kinds: frozenset[str]
    bands: tuple[str, ...]
    class_names: tuple[str, ...] = field(default=())
    num_classes: int = 2
    #: the folder the checkpoint was found under (``--checkpoints``): visitors see paths relative to it only
    root: Path | None = None

    def public(self, path: Path | None = None) -> str:
        """``path`` (default: the checkpoint) as visitors may see it: relative to the checkpoint folder the app
        was started with, never the server's absolute path."""
        path = Path(path or self.path)
        try:
            return str(path.relative_to(self.root)) if self.root is not None else path.name
        except ValueError:
            return path.name


def kinds_of(manifest: dict[str, Any]) -> frozenset[str]:
    """Which tabs a checkpoint belongs to, from what its task declares it can do
    (:class:`~vadapt.contracts.TaskCapabilities`): image pairs -> ``change``; point clouds with a label per cloud or
    per point -> ``points`` (the 3D tab); generation -> ``generate``; images to depth maps -> ``depth``; images with
    prompts -> ``prompt``, and per-pixel classes without (required) prompts on tiles -> ``segment``. Empty: nothing
    the app runs."""
    from vadapt.loading import capabilities_of

    caps = capabilities_of(manifest)
    if caps.output == "generated":
        return frozenset({"generate"})
    if caps.input == "point_cloud":
        return frozenset({"points"} if caps.output in ("class_label", "point_labels") else set())
    if caps.input == "image_pair" and caps.output == "class_map":
        return frozenset({"change"})
    if caps.input == "image" and caps.output == "depth_map":
        return frozenset({"depth"})
    kinds = set()
    if caps.input == "image" and caps.prompts != "none":
        kinds.add("prompt")
    if caps.input == "image" and caps.output == "class_map" and caps.tiles and caps.prompts != "required":
        kinds.add("segment")
    return frozenset(kinds)


def describe(path: Path, root: Path, manifest: dict[str, Any]) -> CheckpointInfo:
    task = manifest["task"].rsplit(".", 1)[-1]
    backbone = manifest["backbone"].get("name") or manifest["init_args"].get("backbone", "?")
    trainable = int(manifest.get("parameters", {}).get("trainable", 0))
    try:
        shown = path.relative_to(root)
    except ValueError:
        shown = Path(path.name)
    kinds = kinds_of(manifest)
    if not kinds:
        raise ValueError(f"{path}: its task ({task}) offers nothing the app runs (e.g. pretraining)")
    names = tuple(manifest.get("class_names") or ())
    num_classes = int(manifest["init_args"].get("num_classes") or (len(names) if names else 2))
    if "prompt" in kinds:
        names, num_classes = ("background", "object"), 2
    elif "depth" in kinds:  # one value per pixel, no classes
        names, num_classes = (), 0
    elif not names:
        names = tuple(f"class {i}" for i in range(num_classes))
    label = f"{shown} | {task} | {backbone} | {trainable:,} trainable"
    return CheckpointInfo(path, label, task, backbone, trainable, kinds, tuple(manifest["bands"]), names,
                          num_classes, root)


def find_checkpoints(folders: list[Path]) -> tuple[list[CheckpointInfo], list[str]]:
    """Every vadapt adapter checkpoint (``*.safetensors`` with a manifest) under ``folders``, and one line per
    file skipped (other safetensors files, e.g. backbone weights, are skipped silently)."""
    from vadapt.checkpoint import AdapterCheckpointError, read_manifest

    found, skipped = [], []
    for root in folders:
        root = Path(root)
        if not root.is_dir():
            skipped.append(f"{root}: not a folder")
            continue
        for path in sorted(root.rglob("*.safetensors")):
            try:
                found.append(describe(path.resolve(), root.resolve(), read_manifest(path)))
            except AdapterCheckpointError as exc:
                if "without a vadapt manifest" not in str(exc):
                    skipped.append(str(exc))
            except (OSError, KeyError, ValueError) as exc:
                skipped.append(f"{path}: {exc}")
    return found, skipped


def sidecar_weights(path: Path) -> Path | None:
    """``NAME.weights.safetensors`` beside ``NAME.safetensors``: the frozen backbone weights of a checkpoint
    whose backbone has no upstream file (the demo's random-init tiny SAM). Else a *relative* ``weights`` path of
    the manifest that exists beside the checkpoint (the demo's tiny diffusion bases, saved as diffusers folders
    next to their adapters), so such a folder of checkpoints can move as a whole."""
    candidate = path.with_name(path.name.removesuffix(".safetensors") + ".weights.safetensors")
    if candidate.is_file():
        return candidate
    from vadapt.checkpoint import read_manifest

    try:
        weights = read_manifest(path)["init_args"].get("weights")
    except (OSError, KeyError, ValueError):
        return None
    if not isinstance(weights, str) or weights in ("", "pretrained") or Path(weights).is_absolute():
        return None
    beside = path.parent / weights
    return beside if beside.exists() and beside.resolve().is_relative_to(path.parent.resolve()) else None


class ModelCache:
    """Loaded models by checkpoint, least recently used dropped first; thread-safe (Gradio runs events in
    threads). ``task`` is the model as loaded (promptable SAM keeps its embedding cache in it); ``predictor`` is
    a :class:`vadapt.inference.engine.Predictor` (LoRA merged, batch norms folded) for segmentation and change
    detection; ``depth`` is ``vadapt infer``'s :class:`vadapt.inference.depth.DepthModel` (merged and folded the
    same way)."""

    def __init__(self, maxsize: int = 3) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[Path, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: tuple[Path, str], make: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = make()
            self._items[key] = value
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return value

    @staticmethod
    def _load(info: CheckpointInfo) -> Any:
        from vadapt.loading import load_task

        weights = sidecar_weights(info.path)
        try:
            return load_task(info.path, weights=str(weights) if weights else None).eval()
        except Exception as exc:  # noqa: BLE001 - the page shows one sentence, the log keeps the rest
            raise AppError(f"cannot load {info.path.name}: {str(exc).splitlines()[0][:300]}") from exc

    def task(self, info: CheckpointInfo) -> Any:
        return self._get((info.path, "task"), lambda: self._load(info))

    def predictor(self, info: CheckpointInfo) -> Any:
        from vadapt.inference.engine import Predictor

        return self._get((info.path, "predictor"), lambda: Predictor(self._load(info), "cpu"))

    def depth(self, info: CheckpointInfo) -> Any:
        from .depth import depth_model

        return self._get((info.path, "depth"), lambda: depth_model(self._load(info)))
