import numpy as np
import pytest
import torch

from vadapt.bands import adapt_input_weight, canonical, select_bands
from vadapt.registry import Registry


def test_registry_rejects_duplicates_and_uppercase_and_lists_valid_names():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1)
    with pytest.raises(ValueError, match="twice"):
        reg.register("alpha", 2)
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("Beta", 3)
    with pytest.raises(ValueError, match="Did you mean 'alpha'.*Valid names: alpha"):
        reg.get("alpah")


@pytest.mark.parametrize("init", ["copy", "mean", "zero"])
def test_rgb_filters_kept_bit_identical_and_reordered(init):
    weight = torch.randn(8, 3, 3, 3)  # red, green, blue
    out = adapt_input_weight(weight, ["red", "green", "blue"], ["blue", "green", "red", "nir", "swir16"], init)
    assert out.shape == (8, 5, 3, 3)
    assert torch.equal(out[:, 0], weight[:, 2]) and torch.equal(out[:, 1], weight[:, 1])
    assert torch.equal(out[:, 2], weight[:, 0])
    if init == "copy":  # nir and swir are nearest to red in wavelength
        assert torch.equal(out[:, 3], weight[:, 0]) and torch.equal(out[:, 4], weight[:, 0])
    elif init == "mean":
        assert torch.allclose(out[:, 3], weight.mean(1))
    else:
        assert not out[:, 3:].any()


def test_repeat_init_rescales_like_timm():
    weight = torch.randn(4, 3, 1, 1)
    bands = ["red", "green", "blue", "nir", "swir16", "swir22"]
    out = adapt_input_weight(weight, ["red", "green", "blue"], bands, "repeat")
    assert torch.allclose(out[:, 0], weight[:, 0] * 0.5)
    assert torch.allclose(out[:, 3:], weight * 0.5)


def test_sentinel2_band_ids_are_aliases():
    assert canonical("B04") == "red" and canonical("B8A") == "nir08"


def test_missing_band_is_an_error_never_zero_filled():
    arr = np.zeros((4, 4, 3))
    with pytest.raises(ValueError, match=r"\['nir'\] are required"):
        select_bands(arr, ["red", "green", "blue"], ["red", "nir"])
    picked = select_bands(np.arange(3)[None, None].repeat(2, 0), ["red", "green", "blue"], ["blue", "red"])
    assert picked[0, 0].tolist() == [2, 0]


def test_unknown_wavelength_with_copy_init_is_explained():
    with pytest.raises(ValueError, match="no known wavelength"):
        adapt_input_weight(torch.randn(2, 3, 1, 1), ["red", "green", "blue"], ["red", "elevation"], "copy")


def test_memory_setting_is_taken_by_glibc_and_respects_the_environment(monkeypatch):
    import platform

    from vadapt.memory import return_freed_memory_to_os

    if platform.libc_ver()[0] == "glibc":
        assert return_freed_memory_to_os() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_freed_memory_to_os() is False
