"""EDM's augmentation pipe: identity at p = 0, exact flips and quarter turns, the geometry each label
describes (checked on linear ramps, which bilinear resampling reproduces exactly), and the label
distributions of NVlabs/edm's definitions."""
import math

import pytest
import torch

from edmlab.design.augment import AUGMENT_DIM, AugmentParams, AugmentPipe

EDM = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)


def ramp(n: int, size: int, a: float = 0.3, b: float = -0.7) -> torch.Tensor:
    """``[n, 1, size, size]`` images a·x + b·y in centred pixel coordinates (x right, y down)."""
    y, x = centred(size)
    return (a * x + b * y).expand(n, 1, size, size).clone()


def centred(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    return torch.meshgrid(coords, coords, indexing="ij")


def test_p_zero_is_identity_with_zero_labels():
    images = torch.randn(64, 3, 8, 8)
    out, labels = AugmentPipe(p=0, **EDM)(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, images)
    assert labels.shape == (64, AUGMENT_DIM) and labels.dtype == torch.float32
    assert torch.equal(labels, torch.zeros(64, AUGMENT_DIM))


@pytest.mark.parametrize("axis, column, dim", [("xflip", 0, 3), ("yflip", 1, 2)])
def test_flip_only_gives_exact_flips(axis, column, dim):
    images = torch.randn(200, 2, 5, 7)
    out, labels = AugmentPipe(p=1, **{axis: 1})(images, generator=torch.Generator().manual_seed(1))
    flipped = labels[:, column] == 1
    assert 40 < flipped.sum() < 160
    assert torch.equal(out[flipped], images[flipped].flip(dim))
    assert torch.equal(out[~flipped], images[~flipped])
    others = torch.cat([labels[:, :column], labels[:, column + 1:]], dim=1)
    assert torch.equal(others, torch.zeros_like(others))


@pytest.mark.parametrize("angle, k", [(math.pi / 2, 1), (-math.pi / 2, -1), (math.pi, 2)])
def test_quarter_turns_match_rot90(angle, k):
    images = torch.randn(3, 2, 6, 6)
    params = AugmentParams.identity(3)
    params.rotate[:] = angle
    out = AugmentPipe().apply(images, params)
    torch.testing.assert_close(out, torch.rot90(images, k, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(params.labels[:, 3:5], torch.tensor([[math.cos(angle) - 1, math.sin(angle)]] * 3))


def test_drawn_rotation_turns_by_the_labelled_angle():
    size, n = 15, 64
    out, labels = AugmentPipe(p=1, rotate_frac=1)(ramp(n, size), generator=torch.Generator().manual_seed(2))
    theta = torch.atan2(labels[:, 4], labels[:, 3] + 1)
    assert theta.abs().max() > 2.5 and (theta > 0).any() and (theta < 0).any()
    y, x = centred(size)
    inside = x**2 + y**2 <= ((size - 1) / 2) ** 2
    c, s = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1)
    expected = 0.3 * (c * x - s * y) - 0.7 * (s * x + c * y)
    torch.testing.assert_close(out[:, 0][:, inside], expected[:, inside], atol=2e-4, rtol=0)


def test_drawn_zoom_scales_by_two_to_the_point_two_label():
    size, n = 9, 400
    out, labels = AugmentPipe(p=1, scale=1)(ramp(n, size), generator=torch.Generator().manual_seed(3))
    s = torch.exp2(0.2 * labels[:, 2])
    zoom_in = s >= 1
    assert zoom_in.sum() > 100
    expected = ramp(n, size) / s.view(n, 1, 1, 1)
    torch.testing.assert_close(out[zoom_in], expected[zoom_in], atol=1e-4, rtol=0)


def test_drawn_translation_shifts_by_an_eighth_of_the_size_per_unit_label():
    size, n = 16, 200
    out, labels = AugmentPipe(p=1, translate_frac=1)(ramp(n, size), generator=torch.Generator().manual_seed(4))
    tx, ty = (labels[:, 7] * 0.125 * size).view(n, 1, 1), (labels[:, 8] * 0.125 * size).view(n, 1, 1)
    y, x = centred(size)
    half = (size - 1) / 2
    inside = ((x - tx).abs() <= half) & ((y - ty).abs() <= half)
    expected = 0.3 * (x - tx) - 0.7 * (y - ty)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(out[:, 0][inside], expected[inside], atol=2e-4, rtol=0)


def test_one_pixel_shift_reflects_at_the_border():
    images = torch.randn(2, 3, 8, 8)
    params = AugmentParams.identity(2)
    params.translate_x[:] = 1.0  # 1·0.125·8 = one pixel to the right
    out = AugmentPipe().apply(images, params)
    torch.testing.assert_close(out[..., 1:], images[..., :-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 0], images[..., 1], atol=1e-5, rtol=0)


def test_aniso_stretches_along_its_axis_and_labels_w_cos_w_sin():
    size, n = 11, 300
    pipe = AugmentPipe(p=1, aniso=1)
    params = pipe.draw(n, generator=torch.Generator().manual_seed(5))
    out = pipe.apply(ramp(n, size), params)
    w, r = params.aniso, params.aniso_axis
    torch.testing.assert_close(params.labels[:, 5:7], torch.stack([w * r.cos(), w * r.sin()], 1).float())
    s = torch.exp2(0.2 * w).float()
    y, x = centred(size)
    c, si = r.float().cos().view(n, 1, 1), r.float().sin().view(n, 1, 1)
    u, v = c * x - si * y, si * x + c * y                       # R(r)·p
    u, v = u / s.view(n, 1, 1), v * s.view(n, 1, 1)             # diag(1/s, s)
    qx, qy = c * u + si * v, -si * u + c * v                    # R(−r)
    half = (size - 1) / 2
    inside = (qx.abs() <= half) & (qy.abs() <= half)
    expected = 0.3 * qx - 0.7 * qy
    torch.testing.assert_close(out[:, 0][inside], expected[inside], atol=2e-4, rtol=0)


def test_label_distributions_follow_nvlabs_definitions():
    n, p = 40000, 0.5
    labels = AugmentPipe(p=p, **EDM).draw(n, generator=torch.Generator().manual_seed(6)).labels.double()
    assert set(labels[:, 0].unique().tolist()) == {0.0, 1.0}
    assert labels[:, 0].mean() == pytest.approx(0.5, abs=0.015)          # multiplier 1e8: always drawn
    assert labels[:, 1].mean() == pytest.approx(p / 2, abs=0.015)        # applied w.p. p, then a fair coin
    scale = labels[:, 2][labels[:, 2] != 0]
    assert len(scale) / n == pytest.approx(p, abs=0.015)
    assert scale.mean() == pytest.approx(0.0, abs=0.03) and scale.std() == pytest.approx(1.0, abs=0.03)
    turned = labels[:, 4] != 0
    assert turned.float().mean() == pytest.approx(p, abs=0.015)
    theta = torch.atan2(labels[turned, 4], labels[turned, 3] + 1)
    assert theta.abs().mean() == pytest.approx(math.pi / 2, abs=0.05)    # U(−π, π): E|θ| = π/2
    assert labels[turned, 3].mean() == pytest.approx(-1.0, abs=0.02)     # E[cos θ − 1] = −1
    w2 = labels[:, 5] ** 2 + labels[:, 6] ** 2
    applied = w2 > 0
    assert applied.float().mean() == pytest.approx(p, abs=0.015)
    assert w2[applied].mean() == pytest.approx(1.0, abs=0.05)           # w ~ N(0, 1)
    axis_zero = (labels[applied, 6] == 0).float().mean()
    assert axis_zero == pytest.approx(0.5, abs=0.03)                     # r = 0 w.p. 1 − aniso_rotate_prob
    moved = labels[:, 7] != 0
    assert torch.equal(moved, labels[:, 8] != 0)                         # one draw gates both axes
    assert moved.float().mean() == pytest.approx(p, abs=0.015)
    assert labels[moved, 7:].std().item() == pytest.approx(1.0, abs=0.03)


def test_generator_makes_it_reproducible():
    images = torch.randn(16, 3, 8, 8)
    pipe = AugmentPipe(p=0.5, **EDM)
    a = pipe(images, generator=torch.Generator().manual_seed(7))
    b = pipe(images, generator=torch.Generator().manual_seed(7))
    c = pipe(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("kwargs, name", [(dict(p=1.5), "p"), (dict(p=-0.1), "p"), (dict(xflip=-1), "xflip"),
                                          (dict(aniso_rotate_prob=2), "aniso_rotate_prob"),
                                          (dict(scale_std=float("nan")), "scale_std"), (dict(p="high"), "p")])
def test_bad_settings_raise_naming_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AugmentPipe(**kwargs)


def test_rejects_non_image_batches():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        AugmentPipe(p=1, **EDM)(torch.randn(8, 2))
