"""Batch prediction of point clouds and meshes with a point classification or part segmentation checkpoint.

:func:`predict_points` runs a checkpoint over a folder (searched recursively), a glob or one file of point files
(``.ply``, ``.obj``, ``.off``, ``.npy``, ``.xyz``, ``.txt``, ``.pts``; read by :mod:`vadapt.data.points`:
``num_points`` points, unit-sphere normalised):

* classification writes one ``predictions.csv``: ``file, label, class_name, probability`` and one
  ``prob_<class>`` column per class;
* part segmentation writes one file per input, mirroring the input's relative path: ``<name>.ply`` (ASCII: x y z
  in the input's own coordinates, the part id and an RGB colour per part) or ``<name>.csv`` (the same columns).

Every file is written under a temporary name and renamed when complete, so a finished name always holds a
complete file. Bad inputs (unreadable, NaN coordinates, empty, ...) are skipped and listed with their
one-sentence reason in ``failed.csv``; a rerun skips the inputs already done (rows of the CSV, or existing
per-file outputs) and retries the failed ones.

Part segmentation models with a category input (``num_categories > 0``) need each object's category: give
``category``, or each cloud takes the category whose parts get the most predicted probability mass (with no
``category_parts`` in the checkpoint every category ties and category 0 is used).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vadapt.data.io import DataError
from vadapt.data.points import KNOWN_SUFFIXES, PARTS_SUFFIX, choose_points, load_cloud, normalize_points
from vadapt.visualize import PALETTE

from .files import list_inputs, temporary

CSV_NAME = "predictions.csv"
FAILED_NAME = "failed.csv"
PART_FORMATS = ("ply", "csv")
Kind = Literal["classification", "parts"]


@dataclass
class PointReport:
    """What a run did; ``failed`` rows are ``(input, reason)``; ``outputs`` are the files written."""

    kind: str
    output: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def summary(self) -> str:
        """One line for the terminal."""
        text = (f"{self.kind}: done {len(self.done)}, skipped {len(self.skipped)} (already complete), failed "
                f"{len(self.failed)} in {self.seconds:.1f} s -> {self.output}")
        if self.ignored:
            text += f"; ignored {len(self.ignored)} files without a point-file suffix"
        return text


@dataclass
class Cloud:
    """One input read for the model: ``points`` ``(N, 3)`` normalised, ``original`` the same points in the file's
    coordinates, ``keep`` the rows of ``points`` to write (duplicates of a resampled small cloud dropped)."""

    points: np.ndarray
    original: np.ndarray
    keep: np.ndarray


def task_kind(task: Any) -> Kind:
    """``classification`` (a label per cloud) or ``parts`` (a label per point), from what the loaded task declares
    it can do; ``ValueError`` for any other task."""
    caps = task.capabilities
    if caps.input == "point_cloud" and caps.output == "class_label":
        return "classification"
    if caps.input == "point_cloud" and caps.output == "point_labels":
        return "parts"
    raise ValueError(f"the checkpoint holds a {type(task).__name__} ({caps.input} -> {caps.output}); predict-points "
                     "runs checkpoints that label point clouds or their points (point classification, part "
                     "segmentation)")


def class_names(task: Any) -> list[str]:
    """The classifier's class names (``class 0``, ... when the checkpoint names none)."""
    names = task.hparams.get("class_names")
    return list(names) if names else [f"class {i}" for i in range(int(task.hparams["num_classes"]))]


def read_cloud(path: str | os.PathLike, num_points: int, seed: int = 0) -> Cloud:
    """``num_points`` points of a point or mesh file (farthest-point samples of a larger cloud, all points and
    repeats of a smaller one), normalised into the unit sphere; bad files raise ``DataError`` (one sentence)."""
    if num_points < 1:
        raise ValueError(f"num_points must be at least 1, got {num_points}")
    rng = np.random.default_rng(seed)
    try:
        xyz, _ = load_cloud(path, num_points, rng)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} could not be read ({type(exc).__name__}: {exc})") from None
    normal = normalize_points(xyz, path)
    idx = choose_points(normal, num_points, rng, "fps")
    keep = np.sort(np.unique(idx, return_index=True)[1])
    return Cloud(normal[idx], xyz[idx], keep)


@torch.no_grad()
def classify(task: Any, points: np.ndarray) -> np.ndarray:
    """Class probabilities ``(B, num_classes)`` of clouds ``(B, N, 3)`` (normalised)."""
    x = torch.as_tensor(points, dtype=torch.float32, device=task.device)
    return torch.softmax(task(x).float(), dim=1).cpu().numpy()


@torch.no_grad()
def segment_parts(task: Any, points: np.ndarray, category: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """Part ids ``(B, N)``, part probabilities ``(B, num_parts, N)`` and the category used ``(B,)`` (-1: the
    model takes none) of clouds ``(B, N, 3)``; ``category=None`` picks each cloud's most likely category."""
    x = torch.as_tensor(points, dtype=torch.float32, device=task.device)
    k = int(task.hparams["num_categories"])
    if k == 0:
        probs = torch.softmax(task(x).float(), dim=1)
        return probs.argmax(1).cpu().numpy(), probs.cpu().numpy(), np.full(len(x), -1)
    if category is not None:
        if not 0 <= category < k:
            raise ValueError(f"category must be in 0..{k - 1} (the model has {k} categories), got {category}")
        chosen = torch.full((len(x),), int(category), dtype=torch.long, device=x.device)
        probs = torch.softmax(task(x, chosen).float(), dim=1)
    else:  # one backbone pass, the head once per category; keep the category whose parts take the most mass
        features, centres = task.block_features(x)
        mask = task.category_mask.to(x.device)
        best_score = torch.full((len(x),), -1.0, device=x.device)
        chosen = torch.zeros(len(x), dtype=torch.long, device=x.device)
        probs = None
        for c in range(k):
            cat = torch.full((len(x),), c, dtype=torch.long, device=x.device)
            p = torch.softmax(task.head(features, centres, x, cat).float(), dim=1)  # (B, P, N)
            allowed = mask[min(c, len(mask) - 1)]
            allowed = allowed if bool(allowed.any()) else torch.ones_like(allowed)
            score = p[:, allowed].sum(1).mean(1)  # (B,)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            chosen = torch.where(better, cat, chosen)
            probs = p if probs is None else torch.where(better.view(-1, 1, 1), p, probs)
    parts = task.predict_parts(probs, chosen)
    return parts.cpu().numpy(), probs.cpu().numpy(), chosen.cpu().numpy()


def part_colours(parts: np.ndarray) -> np.ndarray:
    """``(N,)`` part ids -> ``(N, 3)`` uint8 colours (``vadapt.visualize.PALETTE``)."""
    return PALETTE[np.mod(np.asarray(parts, dtype=np.int64), len(PALETTE))]


def parts_table(xyz: np.ndarray, parts: np.ndarray) -> str:
    """CSV text ``x,y,z,part,red,green,blue``."""
    rgb = part_colours(parts)
    lines = ["x,y,z,part,red,green,blue"]
    lines += [f"{p[0]:.6g},{p[1]:.6g},{p[2]:.6g},{int(q)},{c[0]},{c[1]},{c[2]}" for p, q, c in zip(xyz, parts, rgb)]
    return "\n".join(lines) + "\n"


def parts_ply(xyz: np.ndarray, parts: np.ndarray, comment: str = "") -> str:
    """ASCII PLY text of a cloud: ``x y z`` (float), ``part`` (int), ``red green blue`` (uchar) per vertex."""
    rgb = part_colours(parts)
    header = ["ply", "format ascii 1.0", *([f"comment {comment}"] if comment else []),
              f"element vertex {len(xyz)}", "property float x", "property float y", "property float z",
              "property int part", "property uchar red", "property uchar green", "property uchar blue",
              "end_header"]
    rows = [f"{p[0]:.6g} {p[1]:.6g} {p[2]:.6g} {int(q)} {c[0]} {c[1]} {c[2]}" for p, q, c in zip(xyz, parts, rgb)]
    return "\n".join(header + rows) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text (quoting names with commas) of a header and rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def point_inputs(source: str | os.PathLike) -> tuple[Path, list[Path], list[Path]]:
    """``(root, point files, ignored)`` of a folder, glob or file; part-label files ``*_parts.npy`` and files
    without a point suffix are ignored."""
    root, found, other = list_inputs(source)
    files = sorted({*found, *other})
    points = [p for p in files if p.suffix.lower() in KNOWN_SUFFIXES and not p.name.endswith(PARTS_SUFFIX)]
    return root, points, [p for p in files if p not in set(points)]


def _read_done(path: Path, header: list[str]) -> dict[str, list[str]]:
    """Rows of an earlier ``predictions.csv`` by file name; a CSV made by another model is an error."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != header:
        raise ValueError(f"{path} exists with other columns (another checkpoint?): remove it or pass another output")
    return {row[0]: row for row in rows[1:] if row}


def predict_points(
    checkpoint: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    num_points: int = 1024,
    weights: str | None = None,
    batch_size: int = 8,
    format: Literal["ply", "csv"] = "ply",
    category: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    seed: int = 0,
) -> PointReport:
    """Predict every point file of ``input`` with a point classification or part segmentation checkpoint.

    Args:
        checkpoint: adapter ``.safetensors`` (or Lightning ``.ckpt``) of a point task.
        input: folder (searched recursively), glob (``'clouds/**/*.ply'``) or one file.
        output: output folder (``predictions.csv`` or one file per input, and ``failed.csv``).
        num_points: points fed to the model per cloud (farthest-point sampled; meshes are sampled on their
            surface).
        weights: backbone weights to use instead of the path stored in the checkpoint.
        batch_size: clouds per forward pass.
        format: part segmentation output, ``ply`` or ``csv``.
        category: part segmentation with a category input: the object category of every input (``None``: each
            cloud's most likely category).
        device: ``cpu``, ``cuda``, ...
        overwrite: redo inputs already done.
        seed: of the point sampling (the same seed gives the same outputs).
    """
    from vadapt.loading import load_task

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if format not in PART_FORMATS:
        raise ValueError(f"format must be one of {PART_FORMATS}, got {format!r}")
    start = time.perf_counter()
    out = Path(output)
    root, files, ignored = point_inputs(input)
    inside = out.resolve()
    files = [p for p in files if not p.resolve().is_relative_to(inside)]  # our own outputs are no inputs
    task = load_task(checkpoint, weights=weights).eval().to(device)
    kind = task_kind(task)
    report = PointReport(kind, out, ignored=[str(p) for p in ignored])
    out.mkdir(parents=True, exist_ok=True)
    names = {p: str(p.relative_to(root)) for p in files}

    if kind == "classification":
        classes = class_names(task)
        header = ["file", "label", "class_name", "probability", *[f"prob_{c}" for c in classes]]
        csv_path = out / CSV_NAME
        rows = {} if overwrite else _read_done(csv_path, header)
        todo = [p for p in files if names[p] not in rows]
        report.skipped = [names[p] for p in files if names[p] in rows]
        last_flush = time.perf_counter()

        def flush() -> None:
            write_atomic(csv_path, csv_text(header, [rows[k] for k in sorted(rows)]))

        for batch in _batches(todo, num_points, batch_size, seed, names, report):
            probs = classify(task, np.stack([c.points for _, c in batch]))
            for (path, _), p in zip(batch, probs):
                label = int(p.argmax())
                rows[names[path]] = [names[path], str(label), classes[label], f"{p[label]:.6f}",
                                     *[f"{v:.6f}" for v in p]]
                report.done.append(names[path])
            if time.perf_counter() - last_flush > 10:  # a killed run keeps what it did
                flush()
                last_flush = time.perf_counter()
        if rows or not csv_path.exists():
            flush()
        report.outputs.append(csv_path)
    else:
        targets: dict[Path, Path] = {}
        taken: dict[Path, str] = {}
        for p in files:
            target = out / Path(names[p]).with_suffix(f".{format}")
            if target in taken:
                report.failed.append((names[p], f"its output {target} is also the output of {taken[target]}"))
                continue
            taken[target] = names[p]
            targets[p] = target
        todo = [p for p in targets if overwrite or not targets[p].is_file()]
        report.skipped = [names[p] for p in targets if p not in set(todo)]
        for batch in _batches(todo, num_points, batch_size, seed, names, report):
            parts, _, cats = segment_parts(task, np.stack([c.points for _, c in batch]), category)
            for (path, cloud), labels, cat in zip(batch, parts, cats):
                xyz, labels = cloud.original[cloud.keep], labels[cloud.keep]
                if format == "ply":
                    comment = f"vadapt part segmentation of {names[path]}, category {int(cat)}"
                    text = parts_ply(xyz, labels, comment)
                else:
                    text = parts_table(xyz, labels)
                write_atomic(targets[path], text)
                report.done.append(names[path])
                report.outputs.append(targets[path])
    failed_path = out / FAILED_NAME
    if report.failed:
        write_atomic(failed_path, csv_text(["file", "reason"], report.failed))
    else:
        failed_path.unlink(missing_ok=True)  # an earlier run's failures were retried and succeeded
    report.seconds = time.perf_counter() - start
    return report


def _batches(files: list[Path], num_points: int, batch_size: int, seed: int, names: dict[Path, str],
             report: PointReport):
    """Batches of ``(path, Cloud)`` of readable files; unreadable ones go to ``report.failed``."""
    batch: list[tuple[Path, Cloud]] = []
    for path in files:
        try:
            batch.append((path, read_cloud(path, num_points, seed)))
        except (DataError, FileNotFoundError, ValueError) as exc:
            report.failed.append((names[path], str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = ["Cloud", "PointReport", "class_names", "classify", "part_colours", "parts_ply",
           "parts_table", "predict_points", "read_cloud", "segment_parts", "task_kind"]
