"""Extra checks for facetex.camera and facetex.lighting: gradients, dtypes, bad input, and a full pose→shade pipeline
against a per-vertex reference loop written from the formulas."""
import math

import pytest
import torch

from facetex.camera import (Camera, clip_matrix, deep3d_to_screen, euler_to_rotation, ndc_to_screen, project,
                            rigid_transform, rotation_to_euler, screen_to_ndc, to_camera_space, to_clip, unproject)
from facetex.lighting import (SH_PRESETS, irradiance, relight, sh_basis, sh_from_direction, sh_preset,
                              sphere_normal_image)

torch.set_num_threads(1)


def test_gradients_double():
    g = torch.Generator().manual_seed(0)
    ang = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    verts = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    tr = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, a, t: project(rigid_transform(v, a, t)), (verts, ang, tr))
    nrm = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    gam = torch.randn(2, 27, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(irradiance, (nrm, gam))
    R = euler_to_rotation(torch.tensor([[0.2, 0.4, -0.3]], dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(rotation_to_euler, (R,))


def test_dtype_preserved():
    v = torch.rand(1, 4, 3, dtype=torch.float64)
    assert project(v).dtype == torch.float64 and to_clip(v).dtype == torch.float64
    assert irradiance(v, torch.zeros(1, 27)).dtype == torch.float64


def test_pipeline_against_loop():
    "Pose, project and shade 30 vertices one at a time with plain Python math, compare with the batched functions."
    g = torch.Generator().manual_seed(3)
    verts = torch.randn(1, 30, 3, generator=g) * 0.5
    nrm = torch.nn.functional.normalize(torch.randn(1, 30, 3, generator=g), dim=-1)
    a, b, c = 0.1, -0.5, 0.2
    cam = Camera().scaled(256)
    gam = sh_from_direction([0.3, 0.5, 1.0], intensity=[0.9, 0.7, 0.5], ambient=0.2)
    out = project(rigid_transform(verts, torch.tensor([[a, b, c]]), torch.tensor([[0.1, -0.2, 0.5]])), cam)[0]
    light = irradiance(nrm, gam)[0]
    d = torch.tensor([0.3, 0.5, 1.0]); d = d / d.norm()
    for i in range(30):
        x, y, z = verts[0, i].tolist()
        # x' = Rz Ry Rx x, one rotation at a time
        y, z = y * math.cos(a) - z * math.sin(a), y * math.sin(a) + z * math.cos(a)
        x, z = x * math.cos(b) + z * math.sin(b), -x * math.sin(b) + z * math.cos(b)
        x, y = x * math.cos(c) - y * math.sin(c), x * math.sin(c) + y * math.cos(c)
        x, y, z = x + 0.1, y - 0.2, z + 0.5
        zc = cam.distance - z
        exp = [cam.focal * x / zc + cam.center, cam.image_size - cam.focal * y / zc - cam.center, zc]
        assert torch.allclose(out[i], torch.tensor(exp), atol=1e-3)
        t = float(nrm[0, i] @ d)
        e2 = 0.25 + t / 2 + 5 / 32 * (3 * t * t - 1)
        assert torch.allclose(light[i], 0.2 + torch.tensor([0.9, 0.7, 0.5]) * e2, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="`angles` must have shape"): euler_to_rotation(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="floating-point"): euler_to_rotation(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="`trans` must have shape"): rigid_transform(torch.zeros(2, 5, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="Camera.distance"): Camera(distance=0)
    with pytest.raises(ValueError, match="Camera.image_size"): Camera(image_size=float("nan"))
    with pytest.raises(ValueError, match="`screen` must have shape"): unproject(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="`verts` must have shape"): to_camera_space(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="`points` must have shape"): deep3d_to_screen(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="non-finite"): project(torch.full((1, 2, 3), float("inf")))
    with pytest.raises(ValueError, match="near < far"): clip_matrix(near=0.0)
    with pytest.raises(ValueError, match="`gamma`"): irradiance(torch.zeros(1, 4, 3), torch.zeros(1, 9))
    with pytest.raises(ValueError, match="`size`"): sphere_normal_image(1)
    with pytest.raises(ValueError, match="`ambient`"): sh_from_direction([0, 0, 1.0], ambient=[1.0, 2.0])
    with pytest.raises(ValueError, match="`direction`"): sh_from_direction([0, 1.0])
    with pytest.raises(ValueError, match="`albedo`"): relight(torch.rand(1, 3, 8, 8), torch.rand(1, 8 * 8, 3), torch.zeros(1, 27))


def test_ndc_rectangular_and_presets():
    p = torch.tensor([[0.0, 0.0], [640.0, 480.0], [320.0, 240.0]])
    n = screen_to_ndc(p, (480, 640))
    assert torch.allclose(n, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(ndc_to_screen(n, (480, 640)), p)
    nrm, mask = sphere_normal_image(16)
    for name in ["ambient", *SH_PRESETS]:
        img = relight(torch.full((1, 3, 16, 16), 0.5), nrm, sh_preset(name)) * mask
        assert torch.isfinite(img).all() and img.max() < 1.0 and img[mask.expand_as(img) > 0].min() > -0.05
    assert sh_basis(torch.zeros(7, 3)).shape == (7, 9)


def test_camera_numbers_and_image_sizes():
    import numpy as np
    # numbers read from files arrive as NumPy scalars: accepted and stored as Python numbers
    cam = Camera(focal=np.float32(1015.0), center=np.float64(112.0), image_size=np.int64(224))
    assert cam == Camera() and type(cam.image_size) is int and type(cam.focal) is float
    assert cam.scaled(448).image_size == 448
    for bad in (dict(image_size=True), dict(image_size=100.5), dict(focal="1015"), dict(center=float("inf"))):
        with pytest.raises(ValueError, match="Camera."): Camera(**bad)
    with pytest.raises(ValueError, match="`image_size` must be positive"): screen_to_ndc(torch.zeros(2, 2), (0, 4))
    with pytest.raises(ValueError, match="`image_size`"): deep3d_to_screen(torch.zeros(2, 2), 22.5)
