"""Segmentation datamodules and readers (imported lazily: ``from vadapt.data import X`` loads what X needs).

* ``FolderSegmentationDataModule`` -- image / mask folders (glob patterns, mask templates, value / colour /
  threshold masks), ``vadapt.data.folder``;
* ``MMSegDataModule`` -- the mmsegmentation layout and options, ``vadapt.data.mmseg``;
* ``RasterSegmentationDataModule`` -- random windows of large multi-band GeoTIFF / npy / npz scenes with
  nodata, ``vadapt.data.raster``;
* ``SceneDataModule`` -- random crops of ``.npz`` scenes with held-out rows, ``vadapt.data.scene``;
* ``ChangeDetectionDataModule`` -- bi-temporal pairs ``A/``, ``B/``, ``label/`` (LEVIR-CD / WHU-CD / SYSU-CD),
  ``vadapt.data.change``;
* ``MonocularVideoDataModule`` -- monocular video (frame folders, videos; SCARED, Hamlyn, C3VD, SimCol layouts)
  for self-supervised depth, ``vadapt.data.depth_video``;
* ``compute_band_stats`` / ``print_band_stats`` -- per-band mean / std for ``vadapt stats``,
  ``vadapt.data.stats``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ChangeDetectionDataModule": "change",
    "FolderSegmentationDataModule": "folder",
    "MMSegDataModule": "mmseg",
    "RasterSegmentationDataModule": "raster",
    "SceneDataModule": "scene",
    "SegmentationDataModule": "base",
    "MonocularVideoDataModule": "depth_video",
    "DataError": "io",
    "find_data_error": "io",
    "BandStats": "stats",
    "compute_band_stats": "stats",
    "print_band_stats": "stats",
    "format_stats_yaml": "stats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
