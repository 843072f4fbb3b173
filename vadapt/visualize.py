"""Pictures, drawn with Pillow alone: RGB composites of multi-band images, class colours, prediction panels (with
column titles and a class legend) and curves of the metrics a Lightning ``CSVLogger`` wrote (``metrics.csv``)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# A qualitative palette (first colours of matplotlib's tab10/tab20); class i gets PALETTE[i % len].
PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120]],
    dtype=np.uint8,
)


def rgb_composite(image: np.ndarray, bands: Sequence[str], rgb: Sequence[str] = ("red", "green", "blue")) -> np.ndarray:
    """``(C, H, W)`` raw values -> ``(H, W, 3)`` uint8, 2-98 percentile stretch per channel.

    Uses the bands named ``rgb`` when present, else the first three bands (or one band as grey).
    """
    bands = list(bands)
    if all(b in bands for b in rgb):
        channels = [bands.index(b) for b in rgb]
    else:
        channels = list(range(min(3, image.shape[0])))
    picked = image[channels].astype(np.float64)
    if picked.shape[0] == 1:
        picked = np.repeat(picked, 3, axis=0)
    out = np.empty(picked.shape[1:] + (3,), dtype=np.uint8)
    for i, channel in enumerate(picked):
        finite = channel[np.isfinite(channel)]
        lo, hi = np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(channel, nan=lo) - lo) / max(hi - lo, 1e-12)
        out[..., i] = np.clip(scaled * 255.0, 0, 255).astype(np.uint8)
    return out


def colorize(mask: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours; ``ignore_index`` pixels are black."""
    out = PALETTE[np.mod(mask, len(PALETTE))]
    if ignore_index is not None:
        out[mask == ignore_index] = 0
    return out


def overlay(rgb: np.ndarray, mask: np.ndarray, opacity: float = 0.5, ignore_index: int | None = None,
            background: int | None = 0) -> np.ndarray:
    """Blend class colours over ``rgb``; ``background`` and ``ignore_index`` pixels stay unblended."""
    colours = colorize(mask, ignore_index).astype(np.float32)
    keep = np.zeros(mask.shape, dtype=bool)
    if background is not None:
        keep |= mask == background
    if ignore_index is not None:
        keep |= mask == ignore_index
    blended = (1 - opacity) * rgb.astype(np.float32) + opacity * colours
    blended[keep] = rgb[keep]
    return blended.astype(np.uint8)


#: the tiles of a readable panel are enlarged (nearest neighbour, by a whole factor) to at least this height
READABLE_ROW_HEIGHT = 200
PREDICTION_TITLES = ("image", "truth", "prediction")
CHANGE_TITLES = ("before", "after", "truth", "prediction")
IGNORED_COLOUR = (0, 0, 0)  # colorize's colour of ignore_index pixels
TEXT_SIZE = 16  # px, titles and legends
TEXT_COLOUR = (20, 20, 20)


def text_font(size: int = TEXT_SIZE):
    """Pillow's default font at ``size`` px (scalable where Pillow has FreeType; else its small bitmap font)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()


def class_legend(class_names: Sequence[str], ignore_index: int | None = None) -> list[tuple[str, tuple]]:
    """``(name, colour)`` of each class as :func:`colorize` draws it, and of ``ignore_index`` when given."""
    entries = [(str(name), tuple(int(v) for v in PALETTE[i % len(PALETTE)])) for i, name in enumerate(class_names)]
    if ignore_index is not None:
        entries.append((f"ignored ({ignore_index})", IGNORED_COLOUR))
    return entries


def prediction_panel(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], bands: Sequence[str],
                     ignore_index: int | None = None, gap: int = 4, *, readable: bool = False,
                     class_names: Sequence[str] | None = None):
    """One row per sample: input composite | truth | prediction, as a PIL image.

    Each row is ``(image (C, H, W), truth (H, W), prediction (H, W))``. ``readable``: column titles, a legend of
    the classes (``class_names``; "ignored" too where a truth has ``ignore_index`` pixels) and rows at least
    :data:`READABLE_ROW_HEIGHT` px high; otherwise the bare grid, tile ``(r, c)`` at ``(c * (W + gap), r * (H +
    gap))``, as overlays drawn on it expect.
    """
    tiles = [[rgb_composite(img, bands), colorize(truth, ignore_index), colorize(pred, ignore_index)]
             for img, truth, pred in rows]
    if not readable:
        return tile_panel(tiles, gap=gap)
    ignored = ignore_index if _has_value([truth for _, truth, _ in rows], ignore_index) else None
    legend = class_legend(class_names, ignored) if class_names is not None else None
    return tile_panel(tiles, PREDICTION_TITLES, legend, READABLE_ROW_HEIGHT, gap)


def _has_value(masks: Sequence[np.ndarray], value: int | None) -> bool:
    return value is not None and any(bool((np.asarray(m) == value).any()) for m in masks)


def change_panel(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], bands: Sequence[str],
                 ignore_index: int | None = None, gap: int = 4, *, readable: bool = False,
                 class_names: Sequence[str] = ("unchanged", "changed")):
    """One row per pair: before | after | truth | prediction, as a PIL image.

    Each row is ``(image_a (C, H, W), image_b (C, H, W), truth (H, W), prediction (H, W))``; change maps are
    drawn white (changed) on black, ``ignore_index`` pixels grey. ``readable``: column titles, a legend
    (``class_names``: unchanged, changed; "ignored" where a truth has such pixels) and rows at least
    :data:`READABLE_ROW_HEIGHT` px high.
    """

    def grey(mask: np.ndarray) -> np.ndarray:
        out = np.where(mask == 1, 255, 0).astype(np.uint8)
        if ignore_index is not None:
            out[mask == ignore_index] = 128
        return np.repeat(out[..., None], 3, axis=-1)

    tiles = [[rgb_composite(a, bands), rgb_composite(b, bands), grey(truth), grey(pred)]
             for a, b, truth, pred in rows]
    if not readable:
        return tile_panel(tiles, gap=gap)
    legend = [(str(class_names[0]), (0, 0, 0)), (str(class_names[1]), (255, 255, 255))]
    if _has_value([truth for _, _, truth, _ in rows], ignore_index):
        legend.append((f"ignored ({ignore_index})", (128, 128, 128)))
    return tile_panel(tiles, CHANGE_TITLES, legend, READABLE_ROW_HEIGHT, gap)


def tile_panel(tiles: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None,
               legend: Sequence[tuple[str, Sequence[int]]] | None = None, min_row_height: int = 0, gap: int = 4):
    """Rows of ``(H, W, 3)`` uint8 tiles on white as a PIL image: with ``titles`` above the columns, ``legend``
    (``(name, colour)`` swatches) below, tiles enlarged by a whole factor (nearest neighbour) to at least
    ``min_row_height`` px high."""
    from PIL import Image, ImageDraw

    height = max(t.shape[0] for row in tiles for t in row)
    width = max(t.shape[1] for row in tiles for t in row)
    scale = max(1, math.ceil(min_row_height / height))
    height, width = height * scale, width * scale
    columns = max(len(row) for row in tiles)
    grid_width = columns * (width + gap) - gap
    font = text_font()
    top = _text_height(font) + 12 if titles else 0
    legend_lines = _legend_lines(legend or [], font, grid_width)
    bottom = len(legend_lines) * (_text_height(font) + 8) + 8 if legend_lines else 0
    canvas = np.full((top + len(tiles) * (height + gap) - gap + bottom, grid_width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else tile
            y, x = top + r * (height + gap), c * (width + gap)
            canvas[y : y + big.shape[0], x : x + big.shape[1]] = big
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, title in enumerate(titles or []):
        centre = c * (width + gap) + width / 2
        draw.text((centre - draw.textlength(title, font=font) / 2, 6), title, fill=TEXT_COLOUR, font=font)
    y = canvas.shape[0] - bottom + 8
    for line in legend_lines:
        _draw_legend_line(draw, line, font, (4, y))
        y += _text_height(font) + 8
    return picture


def _text_height(font) -> int:
    return int(font.getbbox("Ag")[3])  # the bottom of the lowest glyph below the text's origin


SWATCH_GAP = 18  # px between legend entries


def _legend_entry_width(name: str, font) -> float:
    return _text_height(font) + 6 + font.getlength(name) + SWATCH_GAP


def _legend_lines(legend: Sequence[tuple[str, Sequence[int]]], font, width: int) -> list[list]:
    """The legend entries split into lines no wider than ``width`` px (at least one entry a line)."""
    lines: list[list] = []
    used = width + 1.0
    for entry in legend:
        need = _legend_entry_width(entry[0], font)
        if used + need > width:
            lines.append([])
            used = 4.0
        lines[-1].append(entry)
        used += need
    return lines


def _draw_legend_line(draw, entries: Sequence[tuple[str, Sequence[int]]], font, origin: tuple[float, float]) -> None:
    x, y = origin
    size = _text_height(font)
    for name, colour in entries:
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(v) for v in colour), outline=(110, 110, 110))
        draw.text((x + size + 6, y), name, fill=TEXT_COLOUR, font=font)
        x += _legend_entry_width(name, font)


# ---- curves of the logged metrics --------------------------------------------------------------------------
#: one panel of :func:`curves_picture`: its title and its lines, ``{label: [(epoch, value), ...]}``
CurvePanel = tuple[str, Mapping[str, Sequence[tuple[float, float]]]]
PANEL_SIZE = (520, 340)  # px, one chart
MARGINS = (70, 56, 18, 50)  # px, left, top, right, bottom around a chart's plot area
MAX_MARKERS = 60  # points per line up to which each value is marked with a dot


def read_epoch_metrics(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """The epoch-level values of a Lightning ``CSVLogger`` file (``metrics.csv``): ``{name: [(epoch, value),
    ...]}`` in logging order, names as logged less a ``_epoch`` suffix; per-step columns (``*_step``, ``step``),
    empty cells and values that are not finite numbers are left out."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = _number(row.get("epoch"))
            if epoch is None:
                continue
            for key, cell in row.items():
                value = _number(cell)
                if key in (None, "epoch", "step") or key.endswith("_step") or value is None:
                    continue
                series.setdefault(key.removesuffix("_epoch"), []).append((epoch, value))
    return series


def _number(cell: str | None) -> float | None:
    try:
        value = float(cell)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def curves_picture(panels: Sequence[CurvePanel], title: str = "", columns: int = 2):
    """Line charts of ``panels`` (one chart each: title, axes with ticks, x label "epoch", a legend), ``columns``
    charts a line under ``title``, as a PIL image. Each label keeps its colour across charts."""
    from PIL import Image, ImageDraw

    if not panels:
        raise ValueError("curves_picture needs at least one panel")
    labels = list(dict.fromkeys(label for _, lines in panels for label in lines))
    colours = {label: tuple(int(v) for v in PALETTE[i % len(PALETTE)]) for i, label in enumerate(labels)}
    font, small = text_font(TEXT_SIZE), text_font(TEXT_SIZE - 3)
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    top = _text_height(font) + 16 if title else 0
    panel_w, panel_h = PANEL_SIZE
    picture = Image.new("RGB", (columns * panel_w, top + rows * panel_h), "white")
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text(((picture.width - draw.textlength(title, font=font)) / 2, 8), title, fill=TEXT_COLOUR, font=font)
    for i, (name, lines) in enumerate(panels):
        origin = ((i % columns) * panel_w, top + (i // columns) * panel_h)
        _draw_chart(picture, draw, origin, name, lines, colours, font, small)
    return picture


def _draw_chart(picture, draw, origin: tuple[int, int], name: str, lines: Mapping[str, Sequence[tuple[float, float]]],
                colours: Mapping[str, tuple], font, small) -> None:
    """One chart of :func:`curves_picture` into the ``PANEL_SIZE`` box at ``origin``."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = MARGINS
    x0, y0 = origin[0] + left, origin[1] + top
    x1, y1 = origin[0] + PANEL_SIZE[0] - right, origin[1] + PANEL_SIZE[1] - bottom
    points = [p for line in lines.values() for p in line]
    draw.text(((x0 + x1 - draw.textlength(name, font=font)) / 2, origin[1] + 8), name, fill=TEXT_COLOUR, font=font)
    draw.rectangle([x0, y0, x1, y1], outline=(90, 90, 90))
    if not points:
        draw.text((x0 + 10, y0 + 10), "nothing logged yet", fill=TEXT_COLOUR, font=small)
        return
    xs, ys = _axis_range([p[0] for p in points], whole=True), _axis_range([p[1] for p in points])

    def at(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xs[0]) / (xs[1] - xs[0]) * (x1 - x0), y1 - (y - ys[0]) / (ys[1] - ys[0]) * (y1 - y0))

    for tick in _ticks(*xs, whole=True):
        px = at(tick, ys[0])[0]
        draw.line([px, y0, px, y1], fill=(232, 232, 232))
        text = f"{tick:g}"
        draw.text((px - draw.textlength(text, font=small) / 2, y1 + 5), text, fill=TEXT_COLOUR, font=small)
    for tick in _ticks(*ys):
        py = at(xs[0], tick)[1]
        draw.line([x0, py, x1, py], fill=(232, 232, 232))
        text = f"{tick:.4g}"
        draw.text((x0 - 6 - draw.textlength(text, font=small), py - _text_height(small) / 2), text,
                  fill=TEXT_COLOUR, font=small)
    draw.rectangle([x0, y0, x1, y1], outline=(90, 90, 90))
    draw.text(((x0 + x1 - draw.textlength("epoch", font=small)) / 2, y1 + 8 + _text_height(small)), "epoch",
              fill=TEXT_COLOUR, font=small)
    label = Image.new("RGB", (int(draw.textlength(name, font=small)) + 2, _text_height(small) + 4), "white")
    ImageDraw.Draw(label).text((1, 0), name, fill=TEXT_COLOUR, font=small)
    label = label.rotate(90, expand=True)  # the y axis' label, read bottom to top
    picture.paste(label, (origin[0] + 4, int((y0 + y1 - label.height) / 2)))
    for label_name, line in lines.items():
        xy = [at(x, y) for x, y in sorted(line, key=lambda p: p[0])]
        if len(xy) > 1:
            draw.line(xy, fill=colours[label_name], width=2)
        if len(xy) <= MAX_MARKERS:
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[label_name])
    _draw_chart_legend(draw, [(n, colours[n]) for n, line in lines.items() if line], small, (x0 + x1) / 2,
                       origin[1] + 14 + _text_height(font))


def _draw_chart_legend(draw, entries: Sequence[tuple[str, tuple]], font, centre: float, y: float) -> None:
    """Line samples and labels side by side, centred on ``centre`` at height ``y`` (between title and plot)."""
    widths = [34 + draw.textlength(name, font=font) + 16 for name, _ in entries]
    x = centre - (sum(widths) - 16) / 2
    mid = y + _text_height(font) / 2 + 1
    for (name, colour), width in zip(entries, widths):
        draw.line([x, mid, x + 28, mid], fill=colour, width=3)
        draw.text((x + 34, y), name, fill=TEXT_COLOUR, font=font)
        x += width


def _axis_range(values: Sequence[float], whole: bool = False) -> tuple[float, float]:
    """``(low, high)`` around ``values`` with a margin, never empty (``whole``: a lone value spans one, as epochs)."""
    low, high = min(values), max(values)
    if whole and low == high:
        return math.floor(low) - 0.5, math.ceil(high) + 0.5
    span = high - low or max(abs(high), 1.0) * 0.1
    return low - 0.06 * span, high + 0.06 * span


def _ticks(low: float, high: float, whole: bool = False, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) between ``low`` and ``high``."""
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if whole:
        step = max(1.0, round(step))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


# ---- depth ------------------------------------------------------------------------------------------------------

#: anchors of the "turbo" colour map (Mikhailov, 2019), evenly spaced from 0 (far: dark blue) to 1 (near: dark red)
_TURBO = np.array(
    [[48, 18, 59], [70, 107, 227], [40, 187, 236], [50, 241, 152], [164, 252, 60], [238, 207, 58], [251, 128, 34],
     [208, 47, 5], [122, 4, 3]], dtype=np.float64,
)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Values in ``[0, 1]`` (any shape) -> turbo colours ``(..., 3)`` uint8 (linear between the anchors)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0, 1) * (len(_TURBO) - 1)
    low = np.minimum(v.astype(int), len(_TURBO) - 2)
    frac = (v - low)[..., None]
    return np.round(_TURBO[low] * (1 - frac) + _TURBO[low + 1] * frac).astype(np.uint8)


def depth_range(depth: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """The depth range a picture spans: 2nd and 98th percentiles of the valid (> 0, finite) pixels."""
    depth = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(depth) & (depth > 0) & (True if valid is None else valid)
    if not ok.any():
        return 0.0, 1.0
    low, high = np.percentile(depth[ok], [2, 98])
    return float(low), float(max(high, low * 1.0001 + 1e-12))


def depth_colours(depth: np.ndarray, depth_min: float | None = None, depth_max: float | None = None) -> np.ndarray:
    """Depth ``(H, W)`` -> ``(H, W, 3)`` uint8: near red, far blue (linear in inverse depth, as disparity pictures
    are drawn), over ``[depth_min, depth_max]`` (default :func:`depth_range`); pixels without depth (0, NaN) black."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth_min is None or depth_max is None:
        depth_min, depth_max = depth_range(depth)
    near, far = 1.0 / max(depth_min, 1e-12), 1.0 / max(depth_max, 1e-12)
    valid = np.isfinite(depth) & (depth > 0)
    inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), far)
    colours = colour_ramp((inverse - far) / max(near - far, 1e-12))
    colours[~valid] = 0
    return colours


def depth_colour_bar(depth_min: float, depth_max: float, width: int = 320, unit: str = ""):
    """A horizontal colour bar (PIL image) for :func:`depth_colours`: near on the right, with the end values."""
    from PIL import Image, ImageDraw

    font = text_font()
    bar_height, text = 16, _text_height(font) + 6
    near, far = 1.0 / depth_min, 1.0 / depth_max
    inverse = far + (near - far) * np.linspace(0, 1, width)
    bar = np.repeat(colour_ramp((inverse - far) / max(near - far, 1e-12))[None], bar_height, axis=0)
    canvas = np.full((bar_height + text + 4, width, 3), 255, dtype=np.uint8)
    canvas[:bar_height] = bar
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    suffix = f" {unit}" if unit else ""
    left, right = f"far {depth_max:.3g}{suffix}", f"near {depth_min:.3g}{suffix}"
    draw.text((2, bar_height + 3), left, fill=TEXT_COLOUR, font=font)
    draw.text((width - draw.textlength(right, font=font) - 2, bar_height + 3), right, fill=TEXT_COLOUR, font=font)
    return picture
