"""Upload limits and the one error type the page shows as a short message."""

from __future__ import annotations

from dataclasses import dataclass


class AppError(ValueError):
    """A problem the user can fix (bad file, limit exceeded, wrong checkpoint): shown in the page as is."""


@dataclass(frozen=True)
class Limits:
    """What the app accepts from a browser.

    Attributes:
        max_upload_mb: largest uploaded file (enforced by Gradio's ``max_file_size`` and checked again here).
        max_pixels: largest image (height x width), checked from the file header before any pixel is read, by
            the data layer's reader (``vadapt.data.io.probe(max_pixels=...)``, the check behind ``vadapt infer
            --max-pixels``, whose default ``vadapt.data.safe_open.DEFAULT_MAX_PIXELS`` is far larger).
        max_bands: most bands in one image.
        max_batch_files: most images the Batch tab segments in one run (folders: ``vadapt infer``).
    """

    max_upload_mb: float = 100.0
    max_pixels: int = 4096 * 4096
    max_bands: int = 32
    max_batch_files: int = 16

    def check_file_size(self, size_bytes: int, name: str) -> None:
        if size_bytes > self.max_upload_mb * 1024 * 1024:
            raise AppError(f"{name} is {size_bytes / 2**20:.1f} MB; this demo accepts files up to "
                           f"{self.max_upload_mb:g} MB")

    def check_image(self, height: int, width: int, bands: int, name: str) -> None:
        if height * width > self.max_pixels:
            raise AppError(f"{name} is {width}x{height} = {height * width:,} pixels; this demo accepts up to "
                           f"{self.max_pixels:,} pixels (use `vadapt infer` for large scenes)")
        if bands > self.max_bands:
            raise AppError(f"{name} has {bands} bands; this demo accepts up to {self.max_bands}")
        if min(height, width) < 1:
            raise AppError(f"{name} is empty ({width}x{height})")
