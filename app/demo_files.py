"""The built-in demo: small adapter checkpoints made by the project's own recipes, and example inputs.

``python -m vadapt.app.demo_files --output data/demo`` (re)builds the shipped checkpoints (~10 min on a
2-core CPU; ``--only NAME ...`` for some); ``vadapt demo`` (unless ``--no-builtin``) uses ``data/demo`` when it holds
them and otherwise builds the missing ones into ``~/.cache/vadapt/demo`` on first start, printing progress:

* ``quickstart_cloud.safetensors``: exactly ``vadapt fit --config configs/quickstart.yaml`` (real ImageNet
  EfficientNet-Lite0, frozen, + LoRA; clear / cloud / cloud shadow on the shipped Sentinel-2 scene), 0.97 MB.
* ``sam_tiny_cloud.safetensors``: a promptable SAM with the tiny ``sam_test`` encoder (random init, 128 px),
  LoRA + trained prompt encoder and mask decoder, trained so that a click on a cloud of the scene's RGB composite
  selects THAT cloud (its connected component), not every cloud (:func:`make_sam`, 1,600 steps, a few minutes).
  The frozen random weights are not in an adapter file, so they are saved beside it as
  ``sam_tiny_cloud.weights.safetensors`` (upstream SAM format) and the app loads them from there
  (:func:`vadapt.app.checkpoints.sidecar_weights`). ``benchmarks/bench_prompt_demo.py`` scores the clicks.
* ``change_tiny.safetensors``: PeftCD change detection (real EfficientNet-Lite0 + LoRA) trained briefly on
  synthetic changes (patches of the scene pasted elsewhere) in RGB.
* ``points_shapes.safetensors`` (the 3D tab): the tiny ``point_mae_test`` transformer and its head trained from
  scratch on ``vadapt make-shapes`` clouds of 10 classes (:func:`make_points`, 1,600 steps, ~1.5 min); the example
  clouds (:func:`write_point_examples`) are drawn by the same generator with another seed.
* ``depth_endoscopy.safetensors`` (the Depth tab): exactly ``vadapt fit --config configs/endodac_quickstart.yaml``
  (EndoDAC: real ImageNet EfficientNet-Lite0, frozen, + DV-LoRA and necks, self-supervised on synthetic endoscopy
  videos; :func:`make_depth`); the example frame (``example_endoscopy.png``) comes from a video it never saw.
* ``resadapter_tiny.safetensors``, ``i2v_tiny.safetensors``, ``mv_tiny.safetensors`` (the Generate tab): a
  ResAdapter, an I2V-Adapter and an image-to-multiview MV-Adapter with RANDOM weights on tiny random-init bases
  (``sd15_test`` / ``animatediff_test``), which are saved beside them as diffusers folders ``sd15_tiny_base/``
  and ``animatediff_tiny_base/`` (:func:`vadapt.app.generate.make_demo_checkpoints`, a few seconds). They show
  the plumbing of the tab, not image quality.

The tiny models are for trying the app on its examples, not for accuracy elsewhere.
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
POINTS = "points_shapes.safetensors"
DEPTH = "depth_endoscopy.safetensors"
GENERATION = ("resadapter_tiny.safetensors", "i2v_tiny.safetensors", "mv_tiny.safetensors")  # see .generate
CHECKPOINTS = (QUICKSTART, SAM, CHANGE, POINTS, DEPTH, *GENERATION)
ENDOSCOPY_EXAMPLE_SEED = 777  # a synthetic video none of the quickstart's training videos (seeds 0..7) is
CLOUD_CODE = 4  # the scene's reference code for cloud
SAM_SIZE = 128
POINT_CLASSES = 10  # the first 10 classes of `vadapt make-shapes`, as configs/points_quickstart.yaml
POINT_SEEDS = {"train": 0, "examples": 2024}  # make-shapes seeds: the example clouds are not training clouds
POINT_EXAMPLE_PREFIX = "points_"  # write_examples' keys of the 3D tab's example clouds: points_<class name>

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


def cloud_components(mask: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """The 8-connected components of a binary ``mask`` ``(H, W)`` with at least ``min_size`` pixels, as bool masks,
    largest first: the objects one click on the Prompt tab should select."""
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return [labels == i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_size]


def interior_point(component: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the pixel of ``component`` ``(H, W)`` farthest from its edge (and from the image border):
    where a person would click to pick it."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(np.asarray(component, dtype=bool), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return float(x), float(y)


def write_examples(folder: Path) -> dict[str, Path]:
    """Example inputs: from the shipped scene a 6-band georeferenced GeoTIFF (``s2``), an RGB PNG (``rgb``) and a
    change pair (``before``, ``after``); and the 3D tab's clouds (:func:`write_point_examples`, ``points_<class>``)."""
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
    paths["depth"] = write_endoscopy_example(folder)
    return {**paths, **write_point_examples(folder)}


def write_endoscopy_example(folder: Path) -> Path:
    """A frame of a synthetic endoscopy video the depth demo never trained on (``example_endoscopy.png``)."""
    from PIL import Image

    from vadapt.data.endoscopy import render_sequence

    path = folder / "example_endoscopy.png"
    folder.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        frame = render_sequence(num_frames=1, size=(256, 320), seed=ENDOSCOPY_EXAMPLE_SEED).frames[0]
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(path)
    return path


def write_point_examples(folder: Path) -> dict[str, Path]:
    """One example cloud per class of the 3D demo, ``example_<class>.ply`` (2048 points, a whole object): drawn by
    ``vadapt make-shapes`` with its own seed, so none is a training cloud. Keys ``points_<class>``."""
    from vadapt.data.shapes import make_shapes

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vadapt-shapes-") as tmp:
        done = make_shapes(tmp, classes=POINT_CLASSES, per_class=2, seed=POINT_SEEDS["examples"], parts=False,
                           partial_fraction=0.0, format="ply")
        paths = {f"{POINT_EXAMPLE_PREFIX}{name}": folder / f"example_{name}.ply" for name in done["classes"]}
        for key, path in paths.items():
            shutil.copyfile(Path(tmp) / key.removeprefix(POINT_EXAMPLE_PREFIX) / "train" / "0000.ply", path)
    return paths


def _fit_config(config: str, name: str, folder: Path, progress: Progress, minutes: str, *overrides: str) -> Path:
    """Run ``vadapt fit --config configs/CONFIG`` in a temporary folder and keep its adapter as ``folder / name``."""
    with tempfile.TemporaryDirectory(prefix="vadapt-demo-") as tmp:
        progress(f"training the {name} demo (vadapt fit --config configs/{config}, {minutes})")
        subprocess.run([sys.executable, "-m", "vadapt.cli", "fit", "--config", str(REPO / "configs" / config),
                        "--trainer.default_root_dir", tmp, "--trainer.enable_progress_bar", "false",
                        *[arg.replace("{tmp}", tmp) for arg in overrides]], cwd=REPO, check=True)
        found = sorted(Path(tmp).rglob("adapter.safetensors"))
        if not found:
            raise RuntimeError(f"the {config} run wrote no adapter.safetensors")
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(found[-1], folder / name))


def make_quickstart(folder: Path, progress: Progress = print) -> Path:
    """Run the README's quickstart (``vadapt fit --config configs/quickstart.yaml``) and keep its adapter."""
    return _fit_config("quickstart.yaml", QUICKSTART, folder, progress, "~1-3 min")


def make_depth(folder: Path, progress: Progress = print) -> Path:
    """Run the depth quickstart (``vadapt fit --config configs/endodac_quickstart.yaml``, its synthetic videos
    written into a temporary folder) and keep its adapter."""
    return _fit_config("endodac_quickstart.yaml", DEPTH, folder, progress, "~15 min",
                       "--data.init_args.root", "{tmp}/endoscopy")


def _fit(task, batches: Callable[[int], dict], steps: int, progress: Progress, name: str,
         decay: bool = False) -> None:
    """A plain AdamW loop over the task's own loss (``training_step``), no Lightning trainer needed; with
    ``decay`` the learning rate warms up linearly over the first 5 % of the steps and then falls linearly to 0
    (the tasks' own schedule with ``poly_power`` 1)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*self.log.*")  # the task logs for Lightning; none here
    task.train()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=task.hparams["lr"])
    warmup = max(1, steps // 20)
    factor = (lambda step: min((step + 1) / warmup, (steps - step) / (steps - warmup + 1))) if decay else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor or (lambda step: 1.0))
    for step in range(steps):
        loss = task.training_step(batches(step), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == steps - 1:
            progress(f"{name}: step {step + 1}/{steps}, loss {loss.item():.3f}")
    task.eval()


def _rgb_stats(rgb: np.ndarray) -> tuple[list[float], list[float]]:
    # per-channel statistics in the order of the task's bands (red, green, blue), raw 0-255 units
    values = rgb.reshape(-1, 3).astype(np.float64)
    return [round(float(v), 2) for v in values.mean(0)], [round(float(v), 2) for v in values.std(0)]


def _area_resize(array: np.ndarray, size: int) -> np.ndarray:
    """``(C, H, W)`` float32 -> ``(C, size, size)``, area-averaged (as the app's prompt path shrinks an image)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")[0].numpy()


def _scene_scales(image: np.ndarray, cloud: np.ndarray, size: int) -> list[np.ndarray]:
    """The scene ``(3, H, W)`` with its cloud mask ``(H, W)`` as a 4th channel, shrunk to ``size`` (as the app
    shows it to a ``size`` px encoder), at 1/2 and at full scale: ``(4, h, w)`` float32 each."""
    both = np.concatenate([image, cloud[None].astype(np.float32)])
    return [_area_resize(both, size), _area_resize(both, image.shape[1] // 2), both]


def _cloud_view(scales: list[np.ndarray], rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` px view of the scene (:func:`_scene_scales`): 3 times in 4 the whole scene as the app
    shows it, else a crop at 1/2 or full scale; in a random one of the 8 flips / quarter turns. Returns the view
    ``(3, size, size)`` and its cloud mask (bool: area share > 1/2)."""
    both = scales[rng.choice(len(scales), p=[0.75, 0.125, 0.125])]
    y, x = rng.integers(0, both.shape[1] - size + 1), rng.integers(0, both.shape[2] - size + 1)
    both = np.rot90(both[:, y : y + size, x : x + size], k=int(rng.integers(4)), axes=(1, 2))
    both = both[:, :, ::-1] if rng.random() < 0.5 else both
    return np.ascontiguousarray(both[:3]), both[3] > 0.5


def make_sam(folder: Path, steps: int = 1600, progress: Progress = print) -> Path:
    """Train the tiny promptable SAM demo to select the clicked cloud; writes the adapter and its frozen weights.

    Every training sample is a view of the scene (:func:`_cloud_view`) whose target is ONE cloud (a connected
    component of the cloud mask of at least 32 px, :func:`cloud_components`; the other clouds are background),
    prompted by the task's sampler inside it: one positive point, on odd steps with one negative point anywhere
    outside it (often on another cloud), sometimes a box instead. The task draws one prompt policy per task
    (``PromptingConfig``), so the two are alternated by step here, as micro-sam alternates point and box prompts by
    iteration. 16 views a step, 1,600 steps with a warm-up and linear decay: ~5 min on 2 cores.
    """
    import torch
    from safetensors.torch import save_file

    from vadapt.adapters import LoraConfig
    from vadapt.checkpoint import save_adapter
    from vadapt.data.prompts import PromptSampler
    from vadapt.tasks import PromptableSegmentationTask
    from vadapt.tasks.promptable_config import DecoderConfig, PromptingConfig

    folder.mkdir(parents=True, exist_ok=True)
    rgb, (_, codes, _) = scene_rgb(), scene()
    mean, std = _rgb_stats(rgb)
    args = {"backbone": "sam_test", "img_size": SAM_SIZE, "mean": mean, "std": std, "lr": 3e-3,
            "prompting": PromptingConfig(num_positive=1, num_negative=1, box_probability=0.2)}
    torch.manual_seed(0)
    source = PromptableSegmentationTask(adapter=None, decoder=DecoderConfig(mask_decoder="frozen"), **args)
    weights = folder / SAM.replace(".safetensors", ".weights.safetensors")
    state = {f"image_encoder.{k}": v for k, v in source.backbone.model.state_dict().items()}
    state.update({f"prompt_encoder.{k}": v for k, v in source.prompt_encoder.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in source.mask_decoder.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    task = PromptableSegmentationTask(weights=str(weights), adapter=LoraConfig(r=4),
                                      decoder=DecoderConfig(prompt_encoder="train", mask_decoder="train"), **args)
    samplers = [PromptSampler(num_positive=1, num_negative=0, box_probability=0.2), task.sampler]
    scales = _scene_scales(rgb.transpose(2, 0, 1).astype(np.float32), codes == CLOUD_CODE, SAM_SIZE)
    rng = np.random.default_rng(0)

    def batches(step: int) -> dict:
        task.sampler = samplers[step % 2]
        images, masks = [], []
        while len(images) < 16:
            view, view_cloud = _cloud_view(scales, rng, SAM_SIZE)
            components = cloud_components(view_cloud, min_size=32)  # clouds big enough to click on
            if components:
                images.append(view)
                masks.append(components[rng.integers(len(components))])
        return {"image": torch.from_numpy(np.stack(images)), "mask": torch.from_numpy(np.stack(masks)).long()}

    _fit(task, batches, steps, progress, "tiny promptable SAM", decay=True)
    return save_adapter(task, folder / SAM)


def shape_clouds(folder: Path, seed: int, per_class: int, points: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``vadapt make-shapes`` clouds of the 3D demo's classes, written to ``folder`` with ``seed`` and read back
    unit-sphere normalised (as the app reads a cloud): ``(N, points, 3)`` float32, labels ``(N,)``, class names."""
    from vadapt.data.points import normalize_points
    from vadapt.data.shapes import make_shapes

    done = make_shapes(folder, classes=POINT_CLASSES, per_class=per_class, points=points, seed=seed, parts=False)
    clouds, labels = [], []
    for label, name in enumerate(done["classes"]):
        for path in sorted((Path(folder) / name).rglob("*.npy")):
            clouds.append(normalize_points(np.load(path), path))
            labels.append(label)
    return np.stack(clouds), np.array(labels), list(done["classes"])


def _turn_about_up(points, generator):
    """Clouds ``(B, N, 3)`` (torch) each turned by a random angle about the up axis ``y`` (make-shapes' up)."""
    import torch

    angle = 2 * np.pi * torch.rand(len(points), generator=generator)
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    turn = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=1).view(-1, 3, 3)
    return points @ turn


def make_points(folder: Path, steps: int = 1600, progress: Progress = print) -> Path:
    """Train the 3D tab's demo: the tiny ``point_mae_test`` transformer (32-d, 2 blocks, here 64 groups of 8
    points) with its classification head, all of it trained from scratch (``freeze_backbone: false``, so the
    checkpoint holds every weight and needs no backbone file) on 1,000 ``vadapt make-shapes`` clouds of 1024 points
    (the tab's default count) of the 10 quickstart classes, turned about the up axis, scaled and shifted at random
    (batches of 32, 1,600 steps with a warm-up and linear decay: ~1.5 min on 2 cores; the same file every time).

    Other point counts change the size of the 8-point patches, which the tokenizer's batch norms do not follow:
    the examples are all right at 1024 points, most at 512 and 2048, few at 256 or 4096 and more (training on
    mixed counts did worse: its batch-norm statistics fit none of them)."""
    import torch

    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import PointClassificationTask
    from vadapt.tasks.point_classification import scale_and_translate

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vadapt-shapes-") as tmp:
        clouds, labels, names = shape_clouds(Path(tmp), POINT_SEEDS["train"], per_class=100)
    points, targets = torch.from_numpy(clouds), torch.from_numpy(labels)
    torch.manual_seed(0)
    task = PointClassificationTask(backbone="point_mae_test", weights=None, num_group=64, num_classes=len(names),
                                   class_names=names, adapter=None, freeze_backbone=False, head_hidden=64,
                                   head_dropout=0.3, lr=3e-3)
    generator = torch.Generator().manual_seed(0)

    def batches(step: int) -> dict:
        pick = torch.randperm(len(points), generator=generator)[:32]
        return {"points": scale_and_translate(_turn_about_up(points[pick], generator), (0.8, 1.25), 0.1),
                "label": targets[pick]}

    _fit(task, batches, steps, progress, "tiny point classifier", decay=True)
    return save_adapter(task, folder / POINTS)


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
    if POINTS in names:
        make_points(folder, progress=progress)
    if DEPTH in names:
        make_depth(folder, progress=progress)
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
