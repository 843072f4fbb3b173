"""Prompt tab click accuracy of the built-in tiny SAM demo (``sam_tiny_cloud.safetensors``): does one click on a
cloud select THAT cloud?

The clouds are the 8-connected components of the reference "cloud" mask of the example scene the app shows
(``example_rgb.png``, 384 x 384 px) with at least ``--min-size`` pixels. Each one gets one positive click at its
most interior pixel (largest distance to its edge) through the app's own path (the PNG read by
``app.images.load_image``, then ``app.prompts.prompt_mask``: resized to the encoder's input, the mask upsampled
back), and the mask is scored against that cloud: IoU mean, median and the share of clicks with IoU > 0.5. Two
more columns tell "this cloud" from "every cloud": the IoU with all clouds of the scene, and the share of the
*other* clouds' pixels that the mask takes (``leak``).

    python benchmarks/bench_prompt_demo.py [--checkpoint PATH ...] [--min-size 400] [--per-click]

Checkpoints default to the shipped one; give the one before a change (copied aside) and the one after to compare.
The frozen random encoder weights are read from the sidecar file beside each checkpoint, as the app does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Click:
    """One click's result: the component's size, the click (x, y), and the mask's scores."""

    size: int
    point: tuple[float, float]
    iou: float
    iou_all: float
    leak: float


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def click_each(checkpoint: Path, image: np.ndarray, clouds: np.ndarray, components: list[np.ndarray]
               ) -> list[Click]:
    """Load ``checkpoint`` as the app does and click once in the middle of each component of ``image``."""
    from vadapt.app import demo_files, prompts
    from vadapt.app.checkpoints import sidecar_weights
    from vadapt.loading import load_task

    weights = sidecar_weights(checkpoint)
    task = load_task(checkpoint, weights=str(weights) if weights else None).eval()
    results = []
    for component in components:
        state = prompts.PromptState(image_id="example")
        point = demo_files.interior_point(component)
        state.click(*point, prompts.MODES[0])
        mask = prompts.prompt_mask(task, image, state, "example").mask
        others = clouds & ~component
        results.append(Click(int(component.sum()), point, iou(mask, component), iou(mask, clouds),
                             float((mask & others).sum() / max(1, others.sum()))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", type=Path,
                        help="adapter checkpoint (repeatable; default: the shipped sam_tiny_cloud.safetensors)")
    parser.add_argument("--min-size", type=int, default=400, help="smallest cloud clicked, in pixels (default 400)")
    parser.add_argument("--per-click", action="store_true", help="also print every click")
    args = parser.parse_args()

    from vadapt.app import demo_files, images
    from vadapt.app.limits import Limits

    checkpoints = args.checkpoint or [demo_files.SHIPPED_DIR / demo_files.SAM]
    _, codes, _ = demo_files.scene()
    clouds = codes == demo_files.CLOUD_CODE
    components = demo_files.cloud_components(clouds, args.min_size)
    with tempfile.TemporaryDirectory() as tmp:
        picture = images.load_image(demo_files.write_examples(Path(tmp))["rgb"], Limits())
    image = images.model_input(picture, ["red", "green", "blue"])
    print(f"example scene {image.shape[2]}x{image.shape[1]} px, {len(components)} clouds of >= {args.min_size} px "
          f"(of {len(demo_files.cloud_components(clouds))}), one positive click at each one's most interior pixel\n")
    header = (f"| {'checkpoint':<44} | clicks | IoU mean | IoU median | IoU > 0.5 | IoU with all clouds | "
              "other clouds taken |")
    rows = []
    for checkpoint in checkpoints:
        start = time.perf_counter()
        clicks = click_each(checkpoint, image, clouds, components)
        seconds = time.perf_counter() - start
        scores = [c.iou for c in clicks]
        if args.per_click:
            print(f"{checkpoint} ({seconds:.1f} s)")
            for c in clicks:
                print(f"  cloud of {c.size:>5} px, click ({c.point[0]:.0f}, {c.point[1]:.0f}): IoU {c.iou:.3f}, "
                      f"with all clouds {c.iou_all:.3f}, other clouds taken {100 * c.leak:.1f} %")
        rows.append(f"| {str(checkpoint)[-44:]:<44} | {len(clicks):>6} | {statistics.mean(scores):>8.3f} | "
                    f"{statistics.median(scores):>10.3f} | {np.mean([s > 0.5 for s in scores]):>9.0%} | "
                    f"{statistics.mean(c.iou_all for c in clicks):>19.3f} | "
                    f"{100 * statistics.mean(c.leak for c in clicks):>16.1f} % |")
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
