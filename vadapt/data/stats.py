"""Per-band mean / std of a config's training data, for ``model.init_args.mean`` / ``std``.

``vadapt stats --config CFG`` builds only the config's ``data`` section and reads every training file once
(in strips, un-augmented, bands selected and ``scale`` applied, i.e. in the units the model receives), with
nodata pixels excluded, and prints::

    # per-band statistics of the training data of CFG: 1,234,567 valid pixels (nodata excluded)
    # bands: [blue, green, red, nir]
    model:
      init_args:
        mean: [0.1917, 0.1852, 0.1784, 0.4309]
        std: [0.1434, 0.1418, 0.1642, 0.1613]

The std is the population standard deviation (ddof 0), accumulated in float64 with Chan's pairwise update.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import DataError


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics: ``bands`` names, ``mean`` and ``std`` (population) lists, ``pixels`` counted."""

    bands: tuple[str, ...]
    mean: list[float]
    std: list[float]
    pixels: int


def accumulate(chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, std)`` over the valid pixels of ``(image (h, w, C), valid (h, w))`` chunks."""
    n, mean, m2 = 0, None, None
    for image, valid in chunks:
        values = np.asarray(image, dtype=np.float64)[np.asarray(valid, dtype=bool)]
        if values.size == 0:
            continue
        k = values.shape[0]
        c_mean = values.mean(0)
        c_m2 = ((values - c_mean) ** 2).sum(0)
        if mean is None:
            n, mean, m2 = k, c_mean, c_m2
            continue
        delta = c_mean - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + c_m2 + delta**2 * (n * k / total)
        n = total
    if mean is None:
        return 0, np.array([]), np.array([])
    return n, mean, np.sqrt(m2 / n)


def datamodule_from_config(config: str | Path | dict[str, Any]):
    """Instantiate only the ``data`` section (``class_path`` / ``init_args``) of a LightningCLI config."""
    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    if isinstance(config, dict):
        cfg, name = config, "the config"
    else:
        if not Path(config).is_file():
            raise FileNotFoundError(f"config file not found: {config}")
        with open(config) as f:
            cfg, name = yaml.safe_load(f) or {}, str(config)
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise DataError(f"{name} has no `data: {{class_path: ..., init_args: ...}}` section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True, fail_untyped=False)
    parsed = parser.parse_object({"data": data})
    return parser.instantiate(parsed).data


def compute_band_stats(data) -> BandStats:
    """Per-band mean / std over the training files of ``data`` (a datamodule, a config path, or a config dict).

    The datamodule must provide ``iter_stat_pixels()`` (all vadapt datamodules do) yielding
    ``(image (h, w, C) float, valid (h, w) bool)`` chunks and ``bands``.
    """
    dm = data if hasattr(data, "iter_stat_pixels") else datamodule_from_config(data)
    if not hasattr(dm, "iter_stat_pixels"):
        raise DataError(f"{type(dm).__name__} cannot compute band statistics (it has no iter_stat_pixels)")
    n, mean, std = accumulate(dm.iter_stat_pixels())
    if n == 0:
        raise DataError(f"{type(dm).__name__}: the training files have no valid (non-nodata) pixels")
    return BandStats(tuple(dm.bands), [float(v) for v in mean], [float(v) for v in std], int(n))


def _num(value: float, digits: int) -> str:
    return f"{float(f'{value:.{digits}g}')!r}"


def format_stats_yaml(stats: BandStats, source: str | None = None, digits: int = 4) -> str:
    """The YAML snippet for ``model.init_args.mean`` / ``std`` (``digits`` significant digits)."""
    where = f" of {source}" if source else ""
    lines = [
        f"# per-band statistics of the training data{where}: {stats.pixels:,} valid pixels (nodata excluded)",
        f"# bands: [{', '.join(stats.bands)}]",
    ]
    constant = [b for b, s in zip(stats.bands, stats.std) if s == 0]
    if constant:
        lines.append(f"# warning: bands {constant} are constant (std 0); the task needs std > 0")
    lines += [
        "model:",
        "  init_args:",
        f"    mean: [{', '.join(_num(v, digits) for v in stats.mean)}]",
        f"    std: [{', '.join(_num(v, digits) for v in stats.std)}]",
    ]
    return "\n".join(lines)


def print_band_stats(config: str | Path, digits: int = 4, file=None) -> BandStats:
    """What ``vadapt stats --config CFG`` does: compute the statistics and print the YAML snippet."""
    stats = compute_band_stats(config)
    print(format_stats_yaml(stats, str(config), digits), file=file or sys.stdout)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vadapt.data.stats --config CFG [--digits N]``; bad input prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog="vadapt stats", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="LightningCLI YAML; only its `data` section is built")
    parser.add_argument("--digits", type=int, default=4, help="significant digits printed (default 4)")
    args = parser.parse_args(argv)
    try:
        print_band_stats(args.config, args.digits)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
