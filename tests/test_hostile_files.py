"""Hostile inputs: VRTs disguised as GeoTIFFs, URL paths, compression bombs, lying headers, truncated files,
odd names. Every file is made here, in tmp_path; none of them is allowed to read beyond itself or to allocate
what its header declares."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from vadapt.data.io import DataError, LimitExceeded, probe, read_raw
from vadapt.data.safe_open import DEFAULT_MAX_PIXELS, SAFE_DRIVERS

BANDS = ("red", "green", "blue")
SECRET = b"TOP-SECRET-" * 64


def write_tif(path: Path, data: np.ndarray, **extra) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, crs="EPSG:32633", transform=from_origin(0, 0, 10, 10), **extra) as dst:
        dst.write(data)
        dst.descriptions = BANDS[: data.shape[0]]
    return path


def raw_vrt(tmp_path: Path) -> Path:
    """x.tif holding a VRT whose raw band reads the bytes of a 'secret' file."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    path = tmp_path / "raw.tif"
    path.write_text(textwrap.dedent(f"""\
        <VRTDataset rasterXSize="32" rasterYSize="16">
          <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
            <SourceFilename relativeToVRT="0">{secret}</SourceFilename>
            <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>32</LineOffset>
          </VRTRasterBand>
        </VRTDataset>"""))
    return path


def source_vrt(tmp_path: Path, source: str, name: str = "simple.tif") -> Path:
    """x.tif holding a VRT with three SimpleSource bands on ``source`` (another server file, or a URL)."""
    bands = "".join(f"""
          <VRTRasterBand dataType="Byte" band="{b}"><Description>{BANDS[b - 1]}</Description>
            <SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand>
            </SimpleSource></VRTRasterBand>""" for b in (1, 2, 3))
    path = tmp_path / name
    path.write_text(f'<VRTDataset rasterXSize="32" rasterYSize="32">{bands}\n</VRTDataset>')
    return path


@pytest.fixture
def hostile_vrts(tmp_path: Path) -> dict[str, Path]:
    other = tmp_path / "elsewhere"
    other.mkdir()
    private = write_tif(other / "private.tif", np.full((3, 32, 32), 77, np.uint8))
    return {"raw": raw_vrt(tmp_path), "simple": source_vrt(tmp_path, str(private)),
            "url": source_vrt(tmp_path, "/vsicurl/http://127.0.0.1:9/x.tif", "url.tif")}


# ---- VRTs and URLs ---------------------------------------------------------------------------------------------
def test_allow_list_is_what_this_gdal_reads():
    with rasterio.Env() as env:
        drivers = env.drivers()
    assert "VRT" not in SAFE_DRIVERS
    assert {"GTiff", "PNG", "JPEG"} <= set(SAFE_DRIVERS)
    assert all(d in drivers for d in SAFE_DRIVERS), [d for d in SAFE_DRIVERS if d not in drivers]


@pytest.mark.parametrize("kind", ["raw", "simple", "url"])
def test_vrt_disguised_as_tif_is_refused(hostile_vrts, kind, monkeypatch):
    monkeypatch.delenv("VADAPT_ALLOW_VRT", raising=False)
    path = hostile_vrts[kind]
    with pytest.raises(DataError) as err:
        probe(path)
    message = str(err.value)
    assert str(path) in message and "--allow-vrt" in message and "VRT" in message
    assert "\n" not in message
    # read_raw with a FileInfo forged as if probe had accepted it: the opener refuses again
    from vadapt.data.io import FileInfo

    forged = FileInfo(str(path), "gdal", 16, 32, 1, None, (None,))
    with pytest.raises(DataError, match="--allow-vrt"):
        read_raw(forged, indexes=[0])


@pytest.mark.parametrize("path", ["/vsicurl/http://127.0.0.1:9/x.tif", "http://127.0.0.1:9/x.tif",
                                  "/vsizip//etc/x.zip/a.tif"])
def test_virtual_and_url_paths_are_refused(path, monkeypatch):
    monkeypatch.delenv("VADAPT_ALLOW_VRT", raising=False)
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"/vsi.*--allow-vrt"):
        probe(path)
    assert time.perf_counter() - started < 1.0  # refused, not tried


def test_opted_in_vrt_reads_sources_but_never_raw_files(hostile_vrts, monkeypatch):
    monkeypatch.delenv("VADAPT_ALLOW_VRT", raising=False)
    info = probe(hostile_vrts["simple"], allow_vrt=True)
    assert (info.height, info.width, info.count, info.names) == (32, 32, 3, BANDS)
    assert (read_raw(info) == 77).all()
    # the environment switch is the same opt-in (DataLoader workers inherit it)
    monkeypatch.setenv("VADAPT_ALLOW_VRT", "1")
    assert probe(hostile_vrts["simple"]).allow_vrt
    # a raw-file band is refused even opted in (the GDAL 3.10 of the wheels ignores
    # GDAL_VRT_ENABLE_RAWRASTERBAND=NO, so the opener checks the XML), also behind a SimpleSource VRT
    with pytest.raises(DataError, match="raw files") as err:
        probe(hostile_vrts["raw"], allow_vrt=True)
    assert str(hostile_vrts["raw"]) in str(err.value) and "TOP-SECRET" not in str(err.value)
    nested = source_vrt(hostile_vrts["raw"].parent, str(hostile_vrts["raw"]), "nested.tif")
    with pytest.raises(DataError, match="raw files"):
        probe(nested, allow_vrt=True)


def test_app_refuses_vrts_even_with_the_environment_switch(hostile_vrts, monkeypatch):
    from vadapt.app.images import load_image
    from vadapt.app.limits import AppError, Limits

    monkeypatch.setenv("VADAPT_ALLOW_VRT", "1")  # uploads are never trusted
    for kind, path in hostile_vrts.items():
        with pytest.raises(AppError, match="VRT") as err:
            load_image(path, Limits(), name=f"{kind}.tif")
        assert f"{kind}.tif" in str(err.value) and "TOP-SECRET" not in str(err.value)
        assert "--allow-vrt" not in str(err.value)  # an opt-in the demo does not offer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, effnet_weights) -> Path:
    from vadapt.adapters import LoraConfig
    from vadapt.checkpoint import save_adapter
    from vadapt.tasks import SemanticSegmentationTask

    folder = tmp_path_factory.mktemp("ckpt")
    task = SemanticSegmentationTask(backbone="efficientnet_lite0_test", weights=effnet_weights, bands=BANDS,
                                    num_classes=2, head="fpn", adapter=LoraConfig(r=4), mean=[0.5] * 3,
                                    std=[0.25] * 3)
    return save_adapter(task, folder / "adapter.safetensors")


def test_infer_reports_hostile_files_and_goes_on(hostile_vrts, checkpoint, tmp_path, monkeypatch):
    from vadapt.inference import infer

    monkeypatch.delenv("VADAPT_ALLOW_VRT", raising=False)
    folder = tmp_path / "in"
    folder.mkdir()
    for path in hostile_vrts.values():
        (folder / path.name).write_bytes(path.read_bytes())
    write_tif(folder / "good.tif", np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8))
    huge = folder / "huge.tif"
    with rasterio.open(huge, "w", driver="GTiff", height=200_000, width=200_000, count=1, dtype="uint8",
                       tiled=True, compress="deflate", sparse_ok=True):
        pass
    report = infer(checkpoint, tmp_path / "out", input=str(folder), tile=32, num_workers=0, progress=False)
    assert report.done == ["good.tif"]
    failed = dict(report.failed)
    assert set(failed) == {"raw.tif", "simple.tif", "url.tif", "huge.tif"}
    assert all("--allow-vrt" in failed[n] for n in ("raw.tif", "simple.tif", "url.tif"))
    assert "--max-pixels" in failed["huge.tif"] and "40,000,000,000" in failed["huge.tif"]
    # opted in: the SimpleSource VRT is predicted, the raw one still fails
    report = infer(checkpoint, tmp_path / "out2", input=str(folder), tile=32, num_workers=0, progress=False,
                   allow_vrt=True)
    assert "simple.tif" in report.done and "raw.tif" in dict(report.failed)


def test_infer_reports_every_path_a_folder_holds(checkpoint, tmp_path):
    from vadapt.inference import infer

    folder = tmp_path / "scenes[2024]"  # an existing folder is taken literally, glob characters and all
    folder.mkdir()
    write_tif(folder / "good.tif", np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8))
    (folder / "folder.tif").mkdir()
    (folder / "broken.tif").symlink_to(tmp_path / "gone.tif")
    (folder / "loop.tif").symlink_to(folder / "loop.tif")
    report = infer(checkpoint, tmp_path / "out", input=str(folder), tile=32, num_workers=0, progress=False)
    failed = dict(report.failed)
    assert report.done == ["good.tif"] and set(failed) == {"folder.tif", "broken.tif", "loop.tif"}
    assert "is a directory" in failed["folder.tif"] and "broken symlink" in failed["broken.tif"]
    assert "symlink loop" in failed["loop.tif"]


def test_a_raster_too_wide_for_the_row_buffer_is_refused_with_the_reason(checkpoint, tmp_path):
    from vadapt.inference import infer

    (tmp_path / "in").mkdir()
    with rasterio.open(tmp_path / "in" / "wide.tif", "w", driver="GTiff", height=512, width=200_000, count=3,
                       dtype="uint8", tiled=True, compress="deflate", sparse_ok=True):
        pass  # 1e8 px, within --max-pixels: the blender's tile row (3 x 512 x 200000 float32) is what is too big
    write_tif(tmp_path / "in" / "good.tif", np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8))
    started = time.perf_counter()
    report = infer(checkpoint, tmp_path / "out", input=str(tmp_path / "in"), num_workers=0, progress=False)
    reason = dict(report.failed)["wide.tif"]
    assert report.done == ["good.tif"] and "200,000 px wide" in reason and "--tile" in reason and "1.1 GiB" in reason
    assert time.perf_counter() - started < 60


def test_infer_without_images_fails_before_loading_the_model(tmp_path):
    from vadapt.inference import infer

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no images here")
    started = time.perf_counter()
    with pytest.raises(DataError, match="no input images"):
        infer(tmp_path / "missing-checkpoint.safetensors", tmp_path / "out", input=str(tmp_path / "in"))
    assert time.perf_counter() - started < 2.0


# ---- sizes from headers ----------------------------------------------------------------------------------------
def _peak_growth_mb(code: str) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; growth of its peak RSS (MB) over the imports, and its output."""
    script = textwrap.dedent(f"""\
        import resource, sys
        import numpy, rasterio
        from vadapt.data import io
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
{textwrap.indent(textwrap.dedent(code), ' ' * 12)}
        except Exception as exc:
            print("REFUSED", exc)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("GROWTH", (after - before) / 1024)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    growth = float(out.stdout.split("GROWTH")[-1])
    return growth, out.stdout


def test_npz_bomb_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.npz"
    # a zero-strided view: written chunk by chunk, so making the bomb does not need its 400 MB either
    np.savez_compressed(bomb, img=np.broadcast_to(np.uint8(0), (20000, 20000)))
    assert bomb.stat().st_size < 2_000_000
    started = time.perf_counter()
    growth, out = _peak_growth_mb(f"io.probe({str(bomb)!r})")
    assert "REFUSED" in out and "compression bomb" in out, out
    assert growth < 100, out
    assert time.perf_counter() - started < 10
    # the app's pixel limit (4096²) refuses it too, from the header
    from vadapt.app.images import load_image
    from vadapt.app.limits import AppError, Limits

    with pytest.raises(AppError, match="this demo accepts up to"):
        load_image(bomb, Limits(), name="bomb.npz")
    # and the scene data module's loader
    from vadapt.data.scene import load_scene

    with pytest.raises(DataError, match="compression bomb"):
        np.savez_compressed(tmp_path / "scene.npz", img=np.broadcast_to(np.uint8(0), (20000, 20000)),
                            msk=np.zeros((2, 2), np.uint8))
        load_scene(tmp_path / "scene.npz", ["red"], file_bands=["red"])


def test_npy_with_a_huge_header_is_refused(tmp_path):
    path = tmp_path / "liar.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                 "shape": (1_000_000, 1_000_000, 3)})
        f.write(b"\0" * 64)
    assert path.stat().st_size < 1024
    with pytest.raises(LimitExceeded, match=r"1000000x1000000.*max_pixels.*--max-pixels"):
        probe(path)
    # within the pixel limit but more bytes declared than the file has: truncated, not mapped
    with pytest.raises(DataError, match="truncated"):
        probe(path, max_pixels=10**13)


def test_geotiff_declaring_200000_squared_is_refused_quickly(tmp_path):
    path = tmp_path / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", height=200_000, width=200_000, count=1, dtype="uint8",
                       tiled=True, compress="deflate", sparse_ok=True):
        pass  # sparse: nothing written
    assert path.stat().st_size < 10_000_000
    started = time.perf_counter()
    with pytest.raises(LimitExceeded) as err:
        probe(path)
    assert time.perf_counter() - started < 2.0
    message = str(err.value)
    assert str(path) in message and f"{DEFAULT_MAX_PIXELS:,}" in message and "--max-pixels" in message
    assert probe(path, max_pixels=4 * 10**10).width == 200_000  # raised explicitly: accepted


def test_truncated_geotiff_names_what_failed(tmp_path):
    data = np.random.default_rng(1).integers(0, 10000, (3, 512, 512), dtype=np.uint16)
    path = write_tif(tmp_path / "cut.tif", data, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    try:
        info = probe(path)
        read_raw(info)
    except DataError as exc:
        message = str(exc)
    else:
        pytest.fail("a GeoTIFF cut in half was read")
    assert str(path) in message and "previous exception" not in message.lower()
    assert "truncated" in message or "TIFF" in message or "failed" in message


@pytest.mark.parametrize("name", ["with [brackets].tif", "star*and?mark.tif", "ünïcødé 東京.tif", "a b.npy",
                                  "q?.png"])
def test_odd_names_read_fine(tmp_path, name):
    from PIL import Image

    data = np.arange(3 * 20 * 24, dtype=np.uint8).reshape(3, 20, 24)
    path = tmp_path / name
    if name.endswith(".tif"):
        write_tif(path, data)
    elif name.endswith(".npy"):
        np.save(path, np.moveaxis(data, 0, -1))
    else:
        Image.fromarray(np.moveaxis(data, 0, -1)).save(path)
    info = probe(path)
    assert (info.height, info.width, info.count) == (20, 24, 3)
    assert np.array_equal(read_raw(info), np.moveaxis(data, 0, -1))
