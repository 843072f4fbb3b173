"""numpy parses ``.npy`` headers with ``ast.literal_eval``, which CPython 3.11 does not make thread-safe
(python/cpython#106905); our readers describe files on a thread pool, so every header parse must hold
``NPY_HEADER_LOCK``. These tests fail when a read path parses a header without it."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from vadapt.data import safe_open
from vadapt.data.io import probe, read_raw
from vadapt.data.points import load_cloud


@pytest.fixture
def header_parses_checked(monkeypatch):
    """Replaces ``ast.literal_eval`` by one that records whether the lock was held at each call."""
    seen: list[bool] = []
    real = ast.literal_eval

    def checked(source):
        seen.append(safe_open.NPY_HEADER_LOCK.locked())
        return real(source)

    monkeypatch.setattr(ast, "literal_eval", checked)
    return seen


def test_every_npy_header_parse_holds_the_lock(tmp_path, header_parses_checked):
    image = tmp_path / "image.npy"
    np.save(image, np.arange(48, dtype=np.float32).reshape(4, 4, 3))
    scene = tmp_path / "scene.npz"
    np.savez(scene, img=np.ones((4, 4, 2), np.float32), msk=np.zeros((4, 4), np.uint8))
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32))

    info = probe(image)
    assert read_raw(info).shape == (4, 4, 3)
    npz_info = probe(scene)
    assert read_raw(npz_info).shape == (4, 4, 2)
    xyz, mesh = load_cloud(cloud, 16, np.random.default_rng(0))
    assert xyz.shape == (32, 3) and not mesh

    assert len(header_parses_checked) >= 4  # headers of the image, the scene members and the cloud
    assert all(header_parses_checked), f"{header_parses_checked.count(False)} header parse(s) without the lock"
