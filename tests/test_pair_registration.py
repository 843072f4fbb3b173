"""Change pairs must lie on one pixel grid: a misregistered pair (other CRS, shifted, other pixel size) is refused
with the numbers, or with ``align`` the "after" image is warped onto the "before" image's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import change_detection_checkpoint
from rasterio.crs import CRS
from rasterio.transform import from_origin

from vadapt.data.registration import Grid, grid_mismatch
from vadapt.inference import infer

UTM = from_origin(500_000, 5_000_000, 10, 10)


def grid(crs: str = "EPSG:32633", transform=UTM, size: tuple[int, int] = (64, 72)) -> Grid:
    return Grid.of(CRS.from_string(crs), transform, *size)


def test_grid_mismatch_names_what_differs_with_the_numbers():
    assert grid_mismatch(grid(), grid(), (64, 72), (64, 72)) is None
    assert grid_mismatch(grid(), grid("EPSG:4326", from_origin(13.0, 45.1, 1e-4, 1e-4)), (64, 72), (64, 72)) == (
        "different CRS (EPSG:32633 vs EPSG:4326)")
    shifted = grid_mismatch(grid(), grid(transform=from_origin(550_000, 5_000_000, 10, 10)), (64, 72), (64, 72))
    assert shifted == "grids shifted by +5000.00 px in x and -0.00 px in y (+50000, +0 CRS units)"
    coarse = grid_mismatch(grid(), grid(transform=from_origin(500_000, 5_000_000, 30, 30)), (64, 72), (22, 24))
    assert coarse == "different pixel sizes (10 x 10 vs 30 x 30 CRS units)"
    assert grid_mismatch(None, None, (64, 72), (64, 70)) == "different sizes (72x64 vs 70x64 px)"
    assert grid_mismatch(grid(), None, (64, 72), (64, 72)) is None  # nothing to compare: one is not georeferenced


def write(path: Path, data: np.ndarray, transform=UTM, crs: str = "EPSG:32633") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype="float32", crs=crs, transform=transform) as dst:
        dst.write(data.astype(np.float32))
        dst.descriptions = ("red", "green", "blue")


@pytest.fixture(scope="module")
def change_checkpoint(tmp_path_factory) -> Path:
    return change_detection_checkpoint(tmp_path_factory.mktemp("cd"), seed=0)


def scene(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(xx / 9 + seed), np.cos(yy / 7), np.sin((xx + yy) / 11)])
    return (0.5 + 0.3 * base + 0.05 * rng.standard_normal((3, h, w))).astype(np.float32)


def probabilities(folder: Path) -> np.ndarray:
    with rasterio.open(next(folder.glob("*_prob.tif"))) as src:
        return src.read(), src.transform, src.crs


def test_misregistered_pairs_are_refused_with_the_numbers(change_checkpoint, tmp_path):
    before = scene()
    cases = {"utm_vs_wgs84.tif": dict(transform=from_origin(13.0, 45.1, 1e-4, 1e-4), crs="EPSG:4326"),
             "shifted_50km.tif": dict(transform=from_origin(550_000, 5_000_000, 10, 10)),
             "10m_vs_30m.tif": dict(transform=from_origin(500_000, 5_000_000, 30, 30))}
    for name, geo in cases.items():
        write(tmp_path / "A" / name, before)
        write(tmp_path / "B" / name, scene(seed=1), **geo)
    report = infer(change_checkpoint, tmp_path / "out", input_a=str(tmp_path / "A"), input_b=str(tmp_path / "B"),
                   progress=False)
    reasons = dict(report.failed)
    assert report.done == [] and set(reasons) == set(cases)
    assert "different CRS (EPSG:32633 vs EPSG:4326)" in reasons["utm_vs_wgs84.tif"]
    assert "shifted by +5000.00 px in x" in reasons["shifted_50km.tif"]
    assert "different pixel sizes (10 x 10 vs 30 x 30" in reasons["10m_vs_30m.tif"]
    assert all("--align" in r for r in reasons.values())


def test_align_warps_after_onto_befores_grid(change_checkpoint, tmp_path):
    import dataclasses

    from vadapt.data.io import probe, read_raw

    world = scene(64, 84)
    before = world[:, :, :80]
    # "after": the same ground, its grid starting 4 px (40 m) further east: pixel (i, j) of after = world (i, j + 4)
    after = world[:, :, 4:84]
    write(tmp_path / "A" / "pair.tif", before)
    write(tmp_path / "B" / "pair.tif", after, transform=from_origin(500_040, 5_000_000, 10, 10))
    # what "after" is on before's grid: the world, with no data west of after's first column (0 there)
    on_grid = before.copy()
    on_grid[:, :, :4] = 0
    write(tmp_path / "A2" / "pair.tif", before)
    write(tmp_path / "B2" / "pair.tif", on_grid)

    info = probe(tmp_path / "B" / "pair.tif")
    warped = read_raw(dataclasses.replace(info, warp_to=grid(size=(64, 80)), height=64, width=80))
    np.testing.assert_allclose(warped.transpose(2, 0, 1), on_grid, atol=1e-6)

    kwargs = dict(progress=False, probabilities=True, format="tif")
    refused = infer(change_checkpoint, tmp_path / "no", input_a=str(tmp_path / "A"), input_b=str(tmp_path / "B"),
                    **kwargs)
    assert refused.done == [] and "shifted by +4.00 px" in refused.failed[0][1]
    aligned = infer(change_checkpoint, tmp_path / "out", input_a=str(tmp_path / "A"), input_b=str(tmp_path / "B"),
                    align=True, **kwargs)
    reference = infer(change_checkpoint, tmp_path / "ref", input_a=str(tmp_path / "A2"),
                      input_b=str(tmp_path / "B2"), **kwargs)
    assert aligned.done == reference.done == ["pair.tif"]
    got, transform, crs = probabilities(tmp_path / "out")
    want, ref_transform, _ = probabilities(tmp_path / "ref")
    assert transform == ref_transform == UTM and crs == CRS.from_epsg(32633)  # the output is on before's grid
    np.testing.assert_allclose(got, want, atol=1e-4)  # the model saw exactly the aligned pair
