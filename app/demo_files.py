"""The built-in demo: small adapter checkpoints made by the project's own recipes, and example images.

``python -m vadapt.app.demo_files --output data/demo`` (re)builds the shipped checkpoints (~3 min on a
2-core CPU); ``vadapt demo`` without ``--checkpoints`` uses ``data/demo`` when it holds them and otherwise builds
the missing ones into ``~/.cache/vadapt/demo`` on first start, printing progress:

* ``quickstart_cloud.safetensors``: exactly ``vadapt fit --config configs/quickstart.yaml`` (real ImageNet
  EfficientNet-Lite0, frozen, + LoRA; clear / cloud / cloud shadow on the shipped Sentinel-2 scene), 0.97 MB.
* ``sam_tiny_cloud.safetensors``: a promptable SAM with the tiny ``sam_test`` encoder (random init, 128 px),
  LoRA + trained mask decoder, a few hundred steps on "cloud" in the scene's RGB composite. The frozen random
  weights are not in an adapter file, so they are saved beside it as ``sam_tiny_cloud.weights.safetensors``
  (upstream SAM format) and the app loads them from there (:func:`vadapt.app.checkpoints.sidecar_weights`).
* ``change_tiny.safetensors``: PeftCD change detection (real EfficientNet-Lite0 + LoRA) trained briefly on
  synthetic changes (patches of the scene pasted elsewhere) in RGB.
* ``resadapter_tiny.safetensors``, ``i2v_tiny.safetensors``, ``mv_tiny.safetensors`` (the Generate tab): a
  ResAdapter, an I2V-Adapter and an image-to-multiview MV-Adapter with RANDOM weights on tiny random-init bases
  (``sd15_test`` / ``animatediff_test``), which are saved beside them as diffusers folders ``sd15_tiny_base/``
  and ``animatediff_tiny_base/`` (:func:`vadapt.app.generate.make_demo_checkpoints`, a few seconds). They show
  the plumbing of the tab, not image quality.

The tiny models are for trying the app, not for accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DIR = REPO / "data" / "demo"
CACHE_DIR = Path.home() / ".cache" / "vadapt" / "demo"
SCENE = REPO / "data" / "cloud_scene" / "sentinel2_l1c_384.npz"
QUICKSTART = "quickstart_cloud.safetensors"
SAM = "sam_tiny_cloud.safetensors"
CHANGE = "change_tiny.safetensors"
GENERATION = ("resadapter_tiny.safetensors", "i2v_tiny.safetensors", "mv_tiny.safetensors")  # see .generate
CHECKPOINTS = (QUICKSTART, SAM, CHANGE, *GENERATION)
CLOUD_CODE = 4  # the scene's reference code for cloud
SAM_SIZE = 128

Progress = Callable[[str], None]


def scene() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The shipped Sentinel-2 scene: reflectance ``(6, H, W)`` float32, reference codes ``(H, W)``, band names."""
    if not SCENE.is_file():
        raise FileNotFoundError(f"the demo scene {SCENE} is missing (it ships with the source tree)")
    with np.load(SCENE) as data:
        image = data["img"].astype(np.float32) * float(data["scale"])
        return image.transpose(2, 0, 1).copy(), data["msk"].copy(), [str(b) for b in data["bands"]]


def scene_rgb() -> np.ndarray:
    """The scene as an ``(H, W, 3)`` uint8 true-colour composite (what the RGB demo models see)."""
    from vadapt.visualize import rgb_composite

    image, _, bands = scene()
    return rgb_composite(image, bands)


def change_pair(rgb: np.ndarray, rng: np.random.Generator, size: int, patches: int = 2
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic change pair from ``rgb`` ``(H, W, 3)``: a crop, the same crop with ``patches`` rectangles of
    other places pasted in, and the change mask (1 where pasted)."""
    h, w = rgb.shape[:2]
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    before = rgb[y : y + size, x : x + size].copy()
    after, mask = before.copy(), np.zeros((size, size), dtype=np.int64)
    for _ in range(patches):
        ph, pw = rng.integers(size // 8, size // 3, size=2)
        ty, tx = rng.integers(0, size - ph), rng.integers(0, size - pw)
        sy, sx = rng.integers(0, h - ph), rng.integers(0, w - pw)
        after[ty : ty + ph, tx : tx + pw] = rgb[sy : sy + ph, sx : sx + pw]
        mask[ty : ty + ph, tx : tx + pw] = 1
    return before, after, mask


def write_examples(folder: Path) -> dict[str, Path]:
    """Example inputs made from the shipped scene: a 6-band georeferenced GeoTIFF, an RGB PNG and a change pair."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    image, _, bands = scene()
    paths = {"s2": folder / "example_sentinel2.tif", "rgb": folder / "example_rgb.png",
             "before": folder / "example_before.png", "after": folder / "example_after.png"}
    if not paths["s2"].is_file():
        profile = {"driver": "GTiff", "height": image.shape[1], "width": image.shape[2], "count": len(bands),
                   "dtype": "float32", "crs": "EPSG:32633", "compress": "deflate",
                   "transform": from_origin(500000.0, 5000000.0, 20.0, 20.0)}  # illustrative georeference
        tmp = paths["s2"].with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(image)
            dst.descriptions = tuple(bands)
        tmp.replace(paths["s2"])
    rgb = scene_rgb()
    Image.fromarray(rgb).save(paths["rgb"])
    before, after, _ = change_pair(rgb, np.random.default_rng(7), 192, patches=3)
    Image.fromarray(before).save(paths["before"])
    Image.fromarray(after).save(paths["after"])
    return paths


def make_quickstart(folder: Path, progress: Progress = print) -> Path:
    """Run the README's quickstart (``vadapt fit --config configs/quickstart.yaml``) and keep its adapter."""
    config = REPO / "configs" / "quickstart.yaml"
    with tempfile.TemporaryDirectory(prefix="vadapt-demo-") as tmp:
        progress("training the quickstart adapter (vadapt fit --config configs/quickstart.yaml, ~1-3 min)")
        subprocess.run([sys.executable, "-m", "vadapt.cli", "fit", "--config", str(config),
                        "--trainer.default_root_dir", tmp, "--trainer.logger.init_args.save_dir", tmp,
                        "--trainer.enable_progress_bar", "false"], cwd=REPO, check=True)
        found = sorted(Path(tmp).rglob("adapter.safetensors"))
        if not found:
            raise RuntimeError("the quickstart run wrote no adapter.safetensors")
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(found[-1], folder / QUICKSTART))


def _fit(task, batches: Callable[[int], dict], steps: int, progress: Progress, name: str) -> None:
    """A plain AdamW loop over the task's own loss (``training_step``), no Lightning trainer needed."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*self.log.*")  # the task logs for Lightning; none here
    task.train()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=task.hparams["lr"])
    for step in range(steps):
        loss = task.training_step(batches(step), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            progress(f"{name}: step {step + 1}/{steps}, loss {loss.item():.3f}")
    task.eval()


def _rgb_stats(rgb: np.ndarray) -> tuple[list[float], list[float]]:
    # per-channel statistics in the order of the task's bands (red, green, blue), raw 0-255 units
    values = rgb.reshape(-1, 3).astype(np.float64)
    return [round(float(v), 2) for v in values.mean(0)], [round(float(v), 2) for v in values.std(0)]


def make_sam(folder: Path, steps: int = 300, progress: Progress = print) -> Path:
    """Train the tiny promptable SAM demo on the scene's clouds; writes the adapter and its frozen weights."""
    import torch
    from safetensors.torch import save_file

    from vadapt.adapters import LoraConfig
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import PromptableSegmentationTask
    from vadapt.tasks.promptable_config import DecoderConfig, PromptingConfig

    folder.mkdir(parents=True, exist_ok=True)
    rgb, (_, codes, _) = scene_rgb(), scene()
    mean, std = _rgb_stats(rgb)
    args = {"backbone": "sam_test", "img_size": SAM_SIZE, "mean": mean, "std": std, "lr": 1e-3,
            "prompting": PromptingConfig(num_positive=2, num_negative=1, box_probability=0.3)}
    torch.manual_seed(0)
    source = PromptableSegmentationTask(adapter=None, decoder=DecoderConfig(mask_decoder="frozen"), **args)
    weights = folder / SAM.replace(".safetensors", ".weights.safetensors")
    state = {f"image_encoder.{k}": v for k, v in source.backbone.model.state_dict().items()}
    state.update({f"prompt_encoder.{k}": v for k, v in source.prompt_encoder.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in source.mask_decoder.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    task = PromptableSegmentationTask(weights=str(weights), adapter=LoraConfig(r=4),
                                      decoder=DecoderConfig(mask_decoder="train"), **args)
    image = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))
    cloud = torch.from_numpy((codes == CLOUD_CODE).astype(np.int64))
    small = torch.nn.functional.interpolate(image[None], size=(SAM_SIZE, SAM_SIZE), mode="area")[0]
    small_mask = torch.nn.functional.interpolate(cloud[None, None].float(), size=(SAM_SIZE, SAM_SIZE),
                                                 mode="nearest")[0, 0].long()
    rng = np.random.default_rng(0)

    def batches(step: int) -> dict:
        images, masks = [small], [small_mask]  # the whole scene as the app shows it, plus random crops
        while len(images) < 4:
            y, x = rng.integers(0, image.shape[1] - SAM_SIZE + 1, size=2)
            crop = cloud[y : y + SAM_SIZE, x : x + SAM_SIZE]
            if 0.05 < crop.float().mean() < 0.95:  # prompts need both object and background
                images.append(image[:, y : y + SAM_SIZE, x : x + SAM_SIZE])
                masks.append(crop)
        return {"image": torch.stack(images), "mask": torch.stack(masks)}

    _fit(task, batches, steps, progress, "tiny promptable SAM")
    return save_adapter(task, folder / SAM)


def make_change(folder: Path, steps: int = 200, progress: Progress = print) -> Path:
    """Train the tiny change-detection demo (EfficientNet-Lite0 + LoRA) on synthetic pasted-patch changes."""
    import torch

    from vadapt.adapters import LoraConfig
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import ChangeDetectionTask

    folder.mkdir(parents=True, exist_ok=True)
    rgb = scene_rgb()
    mean, std = _rgb_stats(rgb)
    torch.manual_seed(0)
    task = ChangeDetectionTask(backbone="efficientnet_lite0", weights="pretrained", adapter=LoraConfig(r=4),
                               decoder_channels=32, mean=mean, std=std, lr=3e-3)
    rng = np.random.default_rng(0)

    def batches(step: int) -> dict:
        pairs = [change_pair(rgb, rng, 96) for _ in range(8)]
        to = lambda arrays: torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32))  # noqa: E731
        return {"image_a": to([p[0] for p in pairs]), "image_b": to([p[1] for p in pairs]),
                "mask": torch.from_numpy(np.stack([p[2] for p in pairs]))}

    _fit(task, batches, steps, progress, "tiny change detection")
    return save_adapter(task, folder / CHANGE)


def missing(folder: Path) -> list[str]:
    """The demo checkpoints (and SAM's weights file) that ``folder`` lacks."""
    names = [*CHECKPOINTS, SAM.replace(".safetensors", ".weights.safetensors")]
    return [n for n in names if not (folder / n).is_file()]


def ensure_defaults(progress: Progress = print) -> Path:
    """The folder of the built-in demo checkpoints: ``data/demo`` when complete, else the user cache, where the
    missing ones are trained now (a few minutes on a CPU, once)."""
    todo = missing(SHIPPED_DIR)
    if todo and set(todo) <= set(GENERATION) and os.access(SHIPPED_DIR, os.W_OK):
        # the generation demo (random tiny bases, a few MB, ~20 s) is built beside the shipped ones, not committed
        progress(f"first start: building the Generate tab's demo checkpoints in {SHIPPED_DIR} (once, ~20 s)")
        build(SHIPPED_DIR, todo, progress)
        todo = missing(SHIPPED_DIR)
    if not todo:
        return SHIPPED_DIR
    todo = missing(CACHE_DIR)
    if todo:
        progress(f"first start: building the demo checkpoints in {CACHE_DIR} (once; a few minutes on a CPU)")
        build(CACHE_DIR, todo, progress)
    return CACHE_DIR


def build(folder: Path, names: list[str] | None = None, progress: Progress = print) -> None:
    """Build the named demo checkpoints (default all) into ``folder``."""
    names = list(CHECKPOINTS) if names is None else names
    if QUICKSTART in names:
        make_quickstart(folder, progress)
    if SAM in names or SAM.replace(".safetensors", ".weights.safetensors") in names:
        make_sam(folder, progress=progress)
    if CHANGE in names:
        make_change(folder, progress=progress)
    if any(name in names for name in GENERATION):  # all three at once: they share the tiny bases
        from .generate import make_demo_checkpoints

        make_demo_checkpoints(folder, progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the demo checkpoints of `vadapt demo`.")
    parser.add_argument("--output", default=str(SHIPPED_DIR), help=f"folder (default {SHIPPED_DIR})")
    parser.add_argument("--only", nargs="+", choices=CHECKPOINTS, help="build only these")
    args = parser.parse_args(argv)
    build(Path(args.output), args.only)
    for path in sorted(Path(args.output).glob("*.safetensors")):
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
