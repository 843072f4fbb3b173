"""Test-time augmentation: plain pass unchanged, probabilities, equivariance, pass counts, scales, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from vadapt.inference.tta import TTA_MODES, TestTimeAugmentation

pytestmark = pytest.mark.usefixtures("one_thread")

C, K = 3, 4


class Counting:
    """A ``logits_fn`` around a module that records the input size of every call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append((x.shape[-2], x.shape[-1]))
        return self.module(x)

    @property
    def calls(self) -> int:
        return len(self.sizes)


def conv(kernel: int, seed: int = 0) -> torch.nn.Conv2d:
    """A random conv C -> K; kernel 1 is exactly equivariant to flips and rotations, kernel 3 is not."""
    torch.manual_seed(seed)
    module = torch.nn.Conv2d(C, K, kernel, padding=kernel // 2)
    with torch.no_grad():
        module.weight.mul_(3.0)  # confident logits: logit and probability averages differ clearly
    return module.eval()


def smooth(h: int, w: int) -> torch.Tensor:
    """A low-frequency (1, C, h, w) input: bilinear resampling changes it little."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([torch.sin(2 * xx + yy), torch.cos(3 * yy - xx), xx * yy])[None]


@torch.no_grad()
def test_none_is_the_plain_softmax_in_one_call():
    torch.manual_seed(0)
    x = torch.randn(2, C, 24, 40)
    fn = Counting(conv(3))
    tta = TestTimeAugmentation()
    out = tta(fn, x)
    assert fn.calls == 1 and tta.passes == 1
    assert torch.equal(out, torch.softmax(fn.module(x), 1))


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("scales", [(1.0,), (0.75, 1.0, 1.25)])
@torch.no_grad()
def test_outputs_are_probabilities_for_non_square_inputs(mode, scales):
    torch.manual_seed(0)
    x = torch.randn(2, C, 40, 56)
    out = TestTimeAugmentation(mode, scales)(conv(3), x)
    assert out.shape == (2, K, 40, 56)
    assert out.min() >= 0
    torch.testing.assert_close(out.sum(1), torch.ones(2, 40, 56))


@pytest.mark.parametrize("mode", ["flip", "d4"])
@torch.no_grad()
def test_an_equivariant_model_is_unchanged(mode):
    torch.manual_seed(0)
    x = torch.randn(2, C, 40, 56)
    model = conv(1)
    plain = TestTimeAugmentation()(model, x)
    torch.testing.assert_close(TestTimeAugmentation(mode)(model, x), plain, atol=1e-6, rtol=0)


@torch.no_grad()
def test_d4_is_equivariant_for_a_model_that_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, C, 40, 56)  # not square: a rotation that is undone the wrong way changes the shape
    model = conv(3)
    tta = TestTimeAugmentation("d4")
    out = tta(model, x)
    # not vacuous: TTA changes this model's prediction, and the model itself is not equivariant
    assert (out - TestTimeAugmentation()(model, x)).abs().max() > 0.05
    assert (model(x.flip(-1)).flip(-1) - model(x)).abs().max() > 0.05
    for k in (1, 2, 3):
        rot = torch.rot90(x, k, dims=(-2, -1))
        torch.testing.assert_close(tta(model, rot), torch.rot90(out, k, dims=(-2, -1)), atol=1e-5, rtol=0)
    for dim in (-1, -2):
        torch.testing.assert_close(tta(model, x.flip(dim)), out.flip(dim), atol=1e-5, rtol=0)
    torch.testing.assert_close(tta(model, x.transpose(-2, -1)), out.transpose(-2, -1), atol=1e-5, rtol=0)


@torch.no_grad()
def test_flip_averages_probabilities_not_logits():
    torch.manual_seed(0)
    x = torch.randn(1, C, 24, 32)
    model = conv(3)
    expected = (
        torch.softmax(model(x), 1)
        + torch.softmax(model(x.flip(-1)), 1).flip(-1)
        + torch.softmax(model(x.flip(-2)), 1).flip(-2)
    ) / 3
    logit_mean = torch.softmax((model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2)) / 3, 1)
    out = TestTimeAugmentation("flip")(model, x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert (out - logit_mean).abs().max() > 0.01


@pytest.mark.parametrize(
    ("mode", "scales", "passes"),
    [("none", (1.0,), 1), ("flip", (1.0,), 3), ("d4", (1.0,), 8), ("d4", (0.75, 1.0, 1.25), 24), ("none", (0.5, 2), 2)],
)
@torch.no_grad()
def test_passes_match_calls(mode, scales, passes):
    fn = Counting(conv(1))
    tta = TestTimeAugmentation(mode, scales)
    tta(fn, torch.randn(1, C, 32, 48))
    assert tta.passes == passes == fn.calls


def test_describe():
    assert TestTimeAugmentation("d4", [0.75, 1, 1.25]).describe() == "d4 x scales 0.75, 1, 1.25: 24 passes per tile"
    assert TestTimeAugmentation().describe() == "none x scales 1: 1 pass per tile"


@torch.no_grad()
def test_scaled_sizes_round_to_nearest_and_keep_16_px():
    fn = Counting(conv(1))
    out = TestTimeAugmentation("none", (0.75, 1.0, 0.1))(fn, torch.randn(1, C, 37, 46))
    assert out.shape == (1, K, 37, 46)
    assert fn.sizes == [(28, 35), (37, 46), (16, 16)]  # 27.75 -> 28, 34.5 -> 35 (half up), 3.7 / 4.6 -> 16


@torch.no_grad()
def test_d4_rotations_see_swapped_sizes():
    fn = Counting(conv(1))
    TestTimeAugmentation("d4", (0.5,))(fn, torch.randn(1, C, 40, 64))
    assert sorted(fn.sizes) == [(20, 32)] * 4 + [(32, 20)] * 4


@torch.no_grad()
def test_multi_scale_on_a_smooth_input_is_close_to_plain():
    x = smooth(48, 64)
    model = conv(1)
    plain = TestTimeAugmentation()(model, x)
    out = TestTimeAugmentation("none", (0.5, 1.0))(model, x)
    assert out.shape == plain.shape == (1, K, 48, 64)
    assert (out - plain).abs().max() > 0  # the half-scale pass did something
    torch.testing.assert_close(out, plain, atol=0.02, rtol=0)


@torch.no_grad()
def test_scales_resample_bilinear_half_pixel_antialiased_when_shrinking():
    torch.manual_seed(0)
    x = torch.randn(1, C, 32, 40)
    model = conv(3)

    def one_scale(scale: float) -> torch.Tensor:
        size = (round(32 * scale), round(40 * scale))
        small = torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False, antialias=scale < 1)
        logits = torch.nn.functional.interpolate(
            model(small), (32, 40), mode="bilinear", align_corners=False, antialias=scale > 1
        )
        return torch.softmax(logits, 1)

    out = TestTimeAugmentation("none", (0.5, 1.5))(model, x)
    torch.testing.assert_close(out, (one_scale(0.5) + one_scale(1.5)) / 2, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("mode", "scales", "setting"),
    [
        ("rot", (1.0,), "tta"),
        ("", (1.0,), "tta"),
        (None, (1.0,), "tta"),
        ("d4", (), "tta_scales"),
        ("d4", (1.0, 0.0), "tta_scales"),
        ("d4", (-1.0,), "tta_scales"),
        ("d4", (math.nan,), "tta_scales"),
        ("d4", (math.inf,), "tta_scales"),
        ("d4", ("1",), "tta_scales"),
        ("d4", "1", "tta_scales"),
    ],
)
def test_bad_settings_raise_naming_the_setting(mode, scales, setting):
    with pytest.raises(ValueError, match=rf"^{setting} "):
        TestTimeAugmentation(mode, scales)
