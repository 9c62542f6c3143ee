"""facetex.landmarks: file formats, bad input, no-face status, the face-oval mask against scikit-image."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

skimage = pytest.importorskip("skimage")
pytest.importorskip("mediapipe")
from skimage.measure import points_in_poly

from facetex.landmarks import (FACE_OVAL, detect_landmarks, face_oval_mask, five_points, mesh_to_68,
                               polygon_mask, LandmarkDetector)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def astro():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def ref(astro):
    return detect_landmarks([astro])


def test_file_formats(tmp_path, astro, ref):
    gray = (skimage.color.rgb2gray(astro) * 65535).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    rgba = np.concatenate([astro, np.full(astro.shape[:2] + (1,), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(astro).save(tmp_path / "rgb.jpg", quality=95)
    r = detect_landmarks([tmp_path / "gray16.png", tmp_path / "rgba.png", str(tmp_path / "rgb.jpg")])
    assert r.found.tolist() == [True, True, True] and r.status == ["ok"] * 3
    for b in range(3):  # the same face, within the detector's noise
        assert (r.points[b] - ref.points[0]).norm(dim=-1).median() < 4


def test_no_face_is_a_status_not_a_crash():
    g = torch.Generator().manual_seed(0)
    r = detect_landmarks(torch.rand(3, 3, 96, 80, generator=g) * 0.1 + 0.45)
    assert r.found.tolist() == [False] * 3 and r.status == ["no face found"] * 3
    assert torch.isnan(r.points).all() and torch.isnan(r.lm68).all()
    m = r.mask(feather=2.0)
    assert m.shape == (3, 1, 96, 80) and m.abs().sum() == 0


def test_mixed_batch_keeps_per_image_status(astro):
    blank = np.full_like(astro, 128)
    r = detect_landmarks([blank, astro])
    assert r.found.tolist() == [False, True] and r.status[0] == "no face found" and r.status[1] == "ok"
    m = r.mask()
    assert m[0].sum() == 0 and m[1].sum() > 1000
    assert torch.isfinite(r.points[1]).all()


@pytest.mark.parametrize("bad,msg", [
    (torch.rand(1, 3, 20, 200), "smaller than min_size"),
    (torch.rand(1, 3, 40, 5000), "larger than max_size"),
    (torch.rand(1, 6, 64, 64), "channels"),
    (torch.rand(3, 64, 64, 1), "channels"),
    ([np.zeros((64, 64, 5), np.uint8)], "got shape (64, 64, 5)"),
    ([np.zeros((64, 64), np.uint8), np.zeros((64, 65), np.uint8)], "one size"),
    ([], "empty"),
    ([42], "expected a path"),
    (torch.full((1, 3, 64, 64), float("nan")), "non-finite"),
])
def test_bad_input(bad, msg):
    with pytest.raises(ValueError, match=None) as e:
        detect_landmarks(bad)
    assert msg in str(e.value), str(e.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="file not found"):
        detect_landmarks(["/nonexistent/face.png"])


def test_custom_limits():
    det = LandmarkDetector(min_size=8, max_size=64)
    assert det(torch.full((1, 3, 16, 16), 0.5)).found.tolist() == [False]
    with pytest.raises(ValueError, match="max_size=64"):
        det(torch.rand(1, 3, 65, 65))


def test_uint8_tensor_equals_float(astro, ref):
    t = torch.from_numpy(astro).permute(2, 0, 1)[None]
    r = detect_landmarks(t)
    assert torch.allclose(r.points, ref.points, atol=1e-3)


def test_polygon_mask_matches_skimage():
    g = torch.Generator().manual_seed(1)
    B, N, H, W = 4, 31, 57, 63
    ang = torch.sort(torch.rand(B, N, generator=g) * 2 * math.pi, dim=1).values
    rad = 6 + 20 * torch.rand(B, N, generator=g)
    poly = torch.stack([31 + rad * ang.cos(), 28 + rad * ang.sin()], -1)
    m = polygon_mask(poly, (H, W), rows_per_chunk=5)
    yy, xx = np.mgrid[0:H, 0:W]
    cent = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    for b in range(B):
        refm = points_in_poly(cent, poly[b].numpy()).reshape(H, W)
        assert (m[b, 0].numpy().astype(bool) != refm).sum() == 0


def test_face_oval_mask_uses_the_oval(ref):
    # a mesh whose oval is a square of 10x10 px and all other points inside: the mask is exactly that square
    pts = torch.full((1, 468, 2), 15.0)
    n = len(FACE_OVAL)
    t = torch.arange(n) / n
    side = (t * 4).floor()
    frac = t * 4 - side
    x = torch.where(side == 0, 10 + 10 * frac, torch.where(side == 1, torch.full_like(frac, 20.),
                    torch.where(side == 2, 20 - 10 * frac, torch.full_like(frac, 10.))))
    y = torch.where(side == 0, torch.full_like(frac, 10.), torch.where(side == 1, 10 + 10 * frac,
                    torch.where(side == 2, torch.full_like(frac, 20.), 20 - 10 * frac)))
    pts[0, list(FACE_OVAL)] = torch.stack([x, y], -1)
    m = face_oval_mask(pts, torch.tensor([True]), (32, 40))
    assert m.sum() == 100 and m[0, 0, 10:20, 10:20].min() == 1
    f = face_oval_mask(pts, torch.tensor([True]), 32, feather=1.5)
    assert f.shape == (1, 1, 32, 32) and 0 <= f.min() and f.max() <= 1
    assert abs(float(f.sum()) - 100) < 1.0   # blur preserves mass away from the border
    with pytest.raises(ValueError, match="image_size"):
        face_oval_mask(pts)
    with pytest.raises(ValueError, match="`points` must have shape"):
        face_oval_mask(pts[:, :68], image_size=32)


def test_five_points_of_the_portrait(ref):
    f = five_points(ref.lm68)
    assert f.shape == (1, 5, 2)
    l, r_, nose, ml, mr = f[0]
    assert l[0] < nose[0] < r_[0] and ml[0] < nose[0] < mr[0]
    assert max(l[1], r_[1]) < nose[1] < min(ml[1], mr[1])
    # nose tip of the mapping is mesh vertex 4, mouth corners 61/291
    assert torch.allclose(mesh_to_68(ref.points)[0, 30], ref.points[0, 4])
    assert torch.allclose(f[0, 3], ref.points[0, 61]) and torch.allclose(f[0, 4], ref.points[0, 291])
