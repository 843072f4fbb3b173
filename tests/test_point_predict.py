"""Batch point-cloud prediction (``vadapt.inference.points``) and the app's 3D tab functions, on tiny checkpoints
made here: classification CSV, part-segmentation PLY / CSV, bad files in failed.csv, reruns skip finished work."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vadapt.checkpoint import save_adapter
from vadapt.inference.points import part_colours, parts_ply, predict_points, read_cloud
from vadapt.tasks.part_segmentation import PartSegmentationTask
from vadapt.tasks.point_classification import PointClassificationTask

CLASSES = ["cube", "cylinder", "sphere"]
CATEGORY_PARTS = [[4, 5, 6], [2, 3], [0, 1]]


def _randomise(task: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, weights) -> dict[str, Path]:
    """A tiny classification and a tiny part-segmentation checkpoint (frozen backbone from ``weights``)."""
    folder = tmp_path_factory.mktemp("point_ckpts")
    cls = PointClassificationTask(backbone="point_mae_test", weights=weights, num_classes=3, class_names=CLASSES,
                                  head_hidden=16)
    _randomise(cls)
    seg = PartSegmentationTask(backbone="point_mae_test", weights=weights, num_parts=7, num_categories=3,
                               category_parts=CATEGORY_PARTS, propagation_dims=[32, 32], head_dims=[32, 16])
    _randomise(seg)
    return {"cls": save_adapter(cls.eval(), folder / "cls.safetensors"),
            "seg": save_adapter(seg.eval(), folder / "seg.safetensors")}


@pytest.fixture()
def clouds(tmp_path) -> Path:
    """Good files of several formats (one in a sub-folder) and three bad ones."""
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    np.save(root / "a.npy", rng.normal(size=(300, 3)).astype(np.float32))
    np.save(root / "sub" / "b.npy", rng.normal(size=(40, 4)).astype(np.float32))  # fewer points, 4 columns
    np.savetxt(root / "c.xyz", rng.uniform(-2, 2, size=(200, 3)))
    (root / "d.ply").write_text(parts_ply(rng.normal(size=(100, 3)), np.zeros(100, int)))
    (root / "cube.off").write_text("OFF\n8 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n1 0 1\n1 1 1\n0 1 1\n"
                                   "3 0 1 2\n3 4 5 6\n")
    bad = rng.normal(size=(50, 3)).astype(np.float32)
    bad[3, 1] = np.nan
    np.save(root / "nan.npy", bad)
    (root / "empty.xyz").write_text("")
    (root / "broken.ply").write_bytes(b"ply\nformat nonsense\n\x00\x01")
    (root / "notes.md").write_text("not a cloud")
    np.save(root / "a_parts.npy", np.zeros(300, np.int64))  # a label file: ignored, not failed
    return root


GOOD = {"a.npy", "sub/b.npy", "c.xyz", "d.ply", "cube.off"}
BAD = {"nan.npy", "empty.xyz", "broken.ply"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_read_cloud_normalises_and_keeps_original_coordinates(clouds):
    cloud = read_cloud(clouds / "sub" / "b.npy", 64)
    assert cloud.points.shape == (64, 3) and cloud.points.dtype == np.float32
    assert np.linalg.norm(cloud.points, axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert len(cloud.keep) == 40  # the 40 distinct points; repeats dropped for writing
    raw = np.load(clouds / "sub" / "b.npy")[:, :3]
    assert {tuple(p) for p in cloud.original[cloud.keep]} == {tuple(p) for p in raw}
    assert np.array_equal(read_cloud(clouds / "a.npy", 64).points, read_cloud(clouds / "a.npy", 64).points)


def test_classification_csv_failed_and_rerun(checkpoints, clouds, tmp_path):
    out = tmp_path / "out"
    report = predict_points(checkpoints["cls"], clouds, out, num_points=64, batch_size=2)
    assert report.kind == "classification" and set(report.done) == GOOD
    assert {name for name, _ in report.failed} == BAD and not report.ok
    rows = _rows(out / "predictions.csv")
    assert {r["file"] for r in rows} == GOOD
    assert list(rows[0]) == ["file", "label", "class_name", "probability", *[f"prob_{c}" for c in CLASSES]]
    for r in rows:
        probs = np.array([float(r[f"prob_{c}"]) for c in CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        assert r["class_name"] == CLASSES[int(r["label"])] == CLASSES[int(probs.argmax())]
        assert float(r["probability"]) == pytest.approx(probs.max(), abs=1e-6)
    failed = {r["file"]: r["reason"] for r in _rows(out / "failed.csv")}
    assert set(failed) == BAD and "NaN" in failed["nan.npy"] and "no points" in failed["empty.xyz"]
    assert all("\n" not in reason for reason in failed.values())
    assert not list(out.rglob("*.vadapt-partial*"))  # no temporaries left
    # rerun: done files skipped, the bad ones retried (and still failing); the CSV keeps every row
    (clouds / "nan.npy").unlink()
    again = predict_points(checkpoints["cls"], clouds, out, num_points=64, batch_size=2)
    assert set(again.skipped) == GOOD and not again.done
    assert {name for name, _ in again.failed} == BAD - {"nan.npy"}
    assert _rows(out / "predictions.csv") == rows


@pytest.mark.parametrize("fmt", ["ply", "csv"])
def test_part_segmentation_files_failed_and_rerun(checkpoints, clouds, tmp_path, fmt):
    out = tmp_path / "out"
    report = predict_points(checkpoints["seg"], str(clouds), out, num_points=64, batch_size=3, format=fmt)
    assert report.kind == "parts" and set(report.done) == GOOD
    assert {name for name, _ in report.failed} == BAD
    for name in GOOD:
        path = out / Path(name).with_suffix(f".{fmt}")
        assert path.is_file()
        if fmt == "csv":
            rows = _rows(path)
            parts = np.array([int(r["part"]) for r in rows])
            assert list(rows[0]) == ["x", "y", "z", "part", "red", "green", "blue"]
        else:
            import trimesh

            body = path.read_text().split("end_header\n")[1].split()
            parts = np.array(body[3::7], dtype=int)
            cloud = trimesh.load(path, process=False)  # a standard PLY point cloud with colours
            assert np.asarray(cloud.colors).shape == (len(parts), 4)
            assert np.array_equal(np.asarray(cloud.colors)[:, :3], part_colours(parts))
        # every cloud's parts belong to one category's part set
        assert any(set(parts.tolist()) <= set(allowed) for allowed in CATEGORY_PARTS)
        assert len(parts) == (40 if name == "sub/b.npy" else 64)
    b = _rows(out / "sub" / "b.csv") if fmt == "csv" else None
    if b is not None:  # written in the input's own coordinates
        raw = np.load(clouds / "sub" / "b.npy")[:, :3]
        xyz = np.array([[float(r[k]) for k in "xyz"] for r in b])
        assert np.allclose(np.sort(xyz, 0), np.sort(raw, 0), atol=1e-4)
    stamp = (out / f"a.{fmt}").stat().st_mtime_ns
    inner = predict_points(checkpoints["seg"], clouds, clouds / "pred", num_points=64, format=fmt)
    again_inner = predict_points(checkpoints["seg"], clouds, clouds / "pred", num_points=64, format=fmt)
    assert set(inner.done) == set(again_inner.skipped) == GOOD  # outputs inside the input folder are not inputs
    shutil.rmtree(clouds / "pred")
    again = predict_points(checkpoints["seg"], clouds, out, num_points=64, batch_size=3, format=fmt)
    assert set(again.skipped) == GOOD and not again.done
    assert (out / f"a.{fmt}").stat().st_mtime_ns == stamp


def test_part_segmentation_given_category_and_errors(checkpoints, clouds, tmp_path):
    report = predict_points(checkpoints["seg"], clouds / "a.npy", tmp_path / "o", num_points=64, category=1,
                            format="csv")
    parts = {int(r["part"]) for r in _rows(tmp_path / "o" / "a.csv")}
    assert report.done == ["a.npy"] and parts <= {2, 3}
    with pytest.raises(ValueError, match="category"):
        predict_points(checkpoints["seg"], clouds / "c.xyz", tmp_path / "p", num_points=64, category=5)
    with pytest.raises(FileNotFoundError):
        predict_points(checkpoints["seg"], tmp_path / "missing", tmp_path / "p")
    with pytest.raises(ValueError, match="format"):
        predict_points(checkpoints["seg"], clouds, tmp_path / "p", format="obj")  # type: ignore[arg-type]


# ---- the app's 3D tab (plain functions, no browser) -------------------------------------------------------------


@pytest.fixture()
def demo(checkpoints, tmp_path):
    from vadapt.app import Limits
    from vadapt.app.checkpoints import CheckpointInfo, find_checkpoints
    from vadapt.app.service import Demo

    found, _ = find_checkpoints([checkpoints["cls"].parent])
    other = CheckpointInfo(Path("seg.safetensors"), "image seg", "SemanticSegmentationTask", "x", 1,
                           frozenset({"segment"}), ("red",))
    return Demo([*found, other], Limits(max_upload_mb=1), tmp_path / "work")


def _glb_colours(path: Path) -> np.ndarray:
    import trimesh

    scene = trimesh.load(path, force="mesh", process=False)
    return np.asarray(scene.visual.vertex_colors)[:, :3]


def test_demo_lists_only_point_checkpoints_and_refuses_others(demo, clouds):
    from vadapt.app import AppError

    choices = demo.point_choices()
    assert len(choices) == 2 and all("safetensors" in c for c in choices) and "image seg" not in choices
    assert demo.point_default() == choices[0]
    with pytest.raises(AppError, match="point-cloud checkpoint"):
        demo.predict_points(str(clouds / "a.npy"), "image seg")
    with pytest.raises(AppError, match="pick a checkpoint"):
        demo.predict_points(str(clouds / "a.npy"), None)
    with pytest.raises(AppError, match="upload"):
        demo.predict_points(None, choices[0])
    with pytest.raises(AppError, match="point cloud or mesh"):
        demo.predict_points(str(clouds / "notes.md"), choices[0])
    with pytest.raises(AppError, match="NaN") as err:
        demo.predict_points(str(clouds / "nan.npy"), choices[0], 256)
    assert str(clouds) not in str(err.value)  # the server's paths stay off the page
    big = clouds / "big.npy"
    np.save(big, np.zeros((200_000, 3), np.float32))
    with pytest.raises(AppError, match="MB"):
        demo.predict_points(str(big), choices[0])


def test_demo_classification_and_parts(demo, clouds):
    labels = {("PointClassificationTask" in c): c for c in demo.point_choices()}
    shown = demo.point_view(str(clouds / "cube.off"))
    assert shown.suffix == ".glb" and (_glb_colours(shown) == (150, 150, 160)).all()
    result = demo.predict_points(str(clouds / "c.xyz"), labels[True], 256)
    assert set(result.scores) == set(CLASSES) and sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.download is None and "c.xyz" in result.summary
    assert (_glb_colours(result.model_path) == (150, 150, 160)).all()  # classification: uncoloured
    result = demo.predict_points(str(clouds / "d.ply"), labels[False], 256)
    assert all(k.startswith("part ") for k in result.scores)
    assert sum(result.scores.values()) == pytest.approx(1.0)
    colours = _glb_colours(result.model_path)
    assert len(colours) == 6 * 100  # an octahedron per distinct point of the 100-point cloud
    parts = [int(k.split()[1]) for k in result.scores]
    assert {tuple(c) for c in colours} == {tuple(c) for c in part_colours(np.array(parts))}
    assert result.download is not None and result.download.suffix == ".ply" and "category" in result.summary


def test_page_builds_with_the_3d_tab(demo):
    from vadapt.app.ui import build

    page = build(demo)
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"points-file", "points-ckpt", "points-view", "points-scores", "points-run"} <= ids


def test_cli_predict_points_exit_codes(checkpoints, clouds, tmp_path, capsys):
    from vadapt.cli import main

    out = tmp_path / "cli"
    assert main(["predict-points", "--checkpoint", str(checkpoints["cls"]), "--input", str(clouds),
                 "--output", str(out), "--num-points", "64"]) == 1  # the three bad files failed
    assert {r["file"] for r in _rows(out / "predictions.csv")} == GOOD
    assert "3 failed" in capsys.readouterr().err
    assert main(["predict-points", "--checkpoint", str(checkpoints["cls"]), "--input", str(tmp_path / "nothing"),
                 "--output", str(out)]) == 2
