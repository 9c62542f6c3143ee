"""Integration and bad-input tests of facetex.synthetic: the synthetic face world's ground truth must be honest."""
import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facetex.core import StyleGenerator, gan_to_image, load_image, uv_to_grid
from facetex.lighting import irradiance
from facetex.morphable import FitResult, render
from facetex.render import render_mesh
from facetex.synthetic import (AlbedoParams, OracleFitter, SyntheticFaces, SyntheticStyleGenerator, albedo_texture,
                               anchors_from_landmarks, anchors_of, detail_patterns, procedural_albedo,
                               sample_albedo_params, write_image_folder)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G():
    return SyntheticStyleGenerator(64)


# ---------------------------------------------------------------- albedo textures
def test_albedo_deterministic_and_varied():
    a, pa = procedural_albedo(3, 64, seed=11)
    b, _ = procedural_albedo(3, 64, seed=11)
    assert torch.equal(a, b)
    assert a.shape == (3, 3, 64, 64) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert isinstance(pa, AlbedoParams)
    c, _ = procedural_albedo(3, 64, seed=12)
    assert float((a - c).abs().mean()) > 0.01


@pytest.mark.parametrize("size", [64, 1024])
def test_albedo_sizes(size):
    t, _ = procedural_albedo(1, size, seed=0)
    assert t.shape == (1, 3, size, size)


def test_albedo_resolution_consistent():
    "A low-resolution texture is (nearly) the area-downsampled high-resolution one."
    p = sample_albedo_params(2, seed=3)
    hi, lo = albedo_texture(p, 256), albedo_texture(p, 64)
    assert float((F.avg_pool2d(hi, 4) - lo).abs().mean()) < 0.01


def test_albedo_carries_no_lighting():
    "Over many faces the skin is as bright left as right and top as bottom of the cheeks: no shading is baked in."
    t, _ = procedural_albedo(64, 64, seed=1)
    lum = t.mean(1)                                         # B×H×W
    left, right = lum[:, 28:44, 10:22].mean(), lum[:, 28:44, 42:54].mean()
    assert abs(float(left / right) - 1) < 0.02
    assert abs(float(lum[:, :, :32].mean() / lum[:, :, 32:].mean()) - 1) < 0.02


def test_albedo_features_at_anchors():
    "Lips are redder than the cheek, the pupil is dark, brows lie at the brow anchors."
    t, p = procedural_albedo(16, 256, seed=2)
    px = lambda u, v: t[:, :, int(v * 256), int(u * 256)]
    lips, cheek = px(0.5, 0.77), px(0.5, 0.63)
    assert float((lips[:, 0] / lips[:, 1] - cheek[:, 0] / cheek[:, 1]).mean()) > 0.05
    assert bool((px(0.325, 0.375).mean(1) < 0.2).all())                      # pupil of the right eye
    # brows: switching them off changes the texture at the brow anchors (both sides) and nowhere else
    from dataclasses import replace
    diff = (t - albedo_texture(replace(p, brow_density=torch.zeros_like(p.brow_density)), 256)).abs().sum(1).mean(0)
    assert float(diff[int(0.255 * 256), int(0.31 * 256)]) > 0.05 and float(diff[int(0.255 * 256), int(0.69 * 256)]) > 0.05
    assert float(diff[int(0.4 * 256):].max()) < 1e-4 and float(diff[:int(0.18 * 256)].max()) < 1e-4
    assert float(diff[:, 128].max()) < 1e-3                                    # no unibrow


def test_albedo_gradients():
    from facetex.synthetic import ALBEDO_DIM, albedo_params_from_unit
    u = torch.randn(2, ALBEDO_DIM, requires_grad=True)
    albedo_texture(albedo_params_from_unit(u), 32).mean().backward()
    assert float(u.grad.abs().sum()) > 0


@pytest.mark.parametrize("size", [48, 2048, 0, 8.0, True])
def test_albedo_bad_size(size):
    with pytest.raises(ValueError, match="`size` must be a power of two"):
        albedo_texture(sample_albedo_params(1, 0), size)


def test_albedo_bad_args():
    with pytest.raises(ValueError, match="`n` must be an integer"): procedural_albedo(-1)
    with pytest.raises(ValueError, match="lacks"): albedo_texture(sample_albedo_params(1, 0), 32, anchors={"eye_r": (0, 0)})
    with pytest.raises(ValueError, match="AlbedoParams"): albedo_texture(torch.zeros(1, 3), 32)


def test_detail_patterns_nested():
    assert torch.allclose(detail_patterns(32), F.avg_pool2d(detail_patterns(128)[None], 4)[0], atol=1e-5)


# ---------------------------------------------------------------- the generator
def test_generator_interface(G):
    assert isinstance(G, StyleGenerator) and isinstance(G, torch.nn.Module)
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0))
    ws = G.mapping(z)
    assert ws.shape == (3, G.num_ws, G.w_dim)
    img = G.synthesis(ws)
    assert img.shape == (3, G.img_channels, G.img_resolution, G.img_resolution)
    assert float(img.min()) >= -1 and float(img.max()) <= 1
    # truncation: psi=0 gives the mean latent for every z
    assert torch.allclose(G.mapping(z, truncation_psi=0.0), G.w_avg.expand(3, -1, -1))


def test_pose_and_light_distribution(G):
    p, _, _ = G.decode(G.sample_ws(512, seed=5))
    yaw, pitch = p.angle[:, 1].rad2deg(), p.angle[:, 0].rad2deg()
    assert float(yaw.abs().max()) <= 60 and float(pitch.abs().max()) <= 25
    assert float(yaw.max()) > 45 and float(yaw.min()) < -45 and float(pitch.abs().max()) > 18   # the range is used
    assert float(yaw.abs().median()) < 40                                                     # mostly not profiles
    amb = irradiance(torch.tensor([[[0., 0, 1]]]).expand(512, 1, 3), p.gamma)[:, 0]
    assert float(amb.min()) > 0.2 and float(amb.max()) < 1.6


def test_ground_truth_rerenders_face_region():
    G = SyntheticStyleGenerator(128)
    ws = G.sample_ws(4, seed=9)
    t = G.ground_truth(ws)
    m, p = G.model, t.params
    v = m.vertices(p)
    re = render_mesh(G.camera.project(v), m.faces, 128, uv=m.uv, texture=t.texture,
                     vertex_shading=irradiance(m.normals(v), p.gamma))
    assert torch.equal(re.mask, t.mask)
    assert float(((re.image.clamp(0, 1) - t.image) * t.mask).abs().max()) < 1e-5
    # the same through the morphable model's public two-pass render (normals of the unposed shape, rotated)
    ro = render(m, p, G.camera, texture=t.texture)
    assert torch.equal(ro.mask, t.mask)
    assert float(((ro.image.clamp(0, 1) - t.image) * t.mask).abs().max()) < 1e-4
    # outside the mask the image is the background, which does not depend on the texture
    assert float(((t.background - t.image) * (1 - t.mask)).abs().max()) < 1e-6
    assert 0.05 < float(t.mask.mean()) < 0.5


def test_tex_coefficients_are_least_squares(G):
    "The true `tex` is the least-squares fit of the texture's colours at the vertices (checked with lstsq in float64)."
    t = G.ground_truth(G.sample_ws(2, seed=1))
    m = G.model
    grid = uv_to_grid(m.uv)[None, :, None].expand(2, -1, -1, -1)   # border padding: the render's texture lookup
    cols = F.grid_sample(t.texture, grid, padding_mode="border", align_corners=False)[..., 0].transpose(1, 2)
    A = m.tex_base.reshape(-1, m.sizes[2]).double()
    b = (cols - m.tex_mean).reshape(2, -1).double()
    ref = torch.linalg.lstsq(A, b.T).solution.T
    assert torch.allclose(t.params.tex.double(), ref, atol=1e-4 * float(ref.abs().max()))
    assert float((m.albedo(t.params, clamp=False) - cols).abs().mean()) < float((m.tex_mean - cols).abs().mean())


def test_with_pose_exact_and_only_pose(G):
    ws = G.sample_ws(5, seed=2)
    t0 = G.ground_truth(ws)
    yaw = torch.tensor([-59., -30, 0, 30, 59]).deg2rad()
    ws2 = G.with_pose(ws, yaw=yaw)
    t2 = G.ground_truth(ws2)
    assert torch.allclose(t2.params.angle[:, 1], yaw, atol=1e-4)
    assert torch.allclose(t2.params.angle[:, [0, 2]], t0.params.angle[:, [0, 2]], atol=1e-4)   # pitch, roll kept
    assert torch.allclose(t2.params.trans, t0.params.trans, atol=1e-4)
    for k in ("id", "exp", "tex", "gamma"):
        assert torch.equal(getattr(t2.params, k), getattr(t0.params, k)), k
    assert torch.equal(t2.texture, t0.texture)
    a, b = G.rows["pose"]
    assert torch.equal(ws2[:, b:], ws[:, b:])
    # the images differ (the head turned) and the edit is idempotent
    assert float((t2.image - t0.image).abs().mean()) > 0.01
    assert torch.allclose(G.with_pose(ws2, yaw=yaw), ws2, atol=1e-4)


@pytest.mark.parametrize("kw,msg", [({"yaw": 1.2}, "`yaw` must be within"), ({"pitch": -0.5}, "`pitch` must be within"),
                                    ({"yaw": float("nan")}, "`yaw` must be within"),
                                    ({"yaw": torch.zeros(3)}, "`yaw` must be a number or a tensor of 2 values")])
def test_with_pose_bad(G, kw, msg):
    with pytest.raises(ValueError, match=msg): G.with_pose(G.sample_ws(2), **kw)


def test_gradients_reach_every_group(G):
    ws = G.sample_ws(2, seed=4).requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    for k, (a, b) in G.rows.items():
        assert float(ws.grad[:, a:b].abs().sum()) > 0, k


@pytest.mark.parametrize("group", ["albedo", "lighting", "background"])
def test_gradient_matches_finite_difference(G, group):
    "Along a random direction in one group's rows, autograd's directional derivative matches central differences."
    ws = G.sample_ws(1, seed=6)
    torch.manual_seed(0)
    d = torch.zeros_like(ws); a, b = G.rows[group]; d[:, a:b] = torch.randn(1, b - a, G.w_dim) * 0.01
    w = ws.clone().requires_grad_(True)
    loss = lambda x: G.synthesis(x).mean()
    loss(w).backward()
    fd = (loss(ws + d) - loss(ws - d)) / 2
    assert abs(float((w.grad * d).sum()) - float(fd)) < 0.1 * abs(float(fd)) + 1e-6


@pytest.mark.parametrize("kw,msg", [({"img_resolution": 100}, "`img_resolution` must be a power of two"),
                                    ({"img_resolution": 2048}, "`img_resolution` must be a power of two"),
                                    ({"tex_resolution": 30}, "`tex_resolution` must be a power of two"),
                                    ({"z_dim": -2}, "`z_dim` must be an integer"),
                                    ({"model": "bfm"}, "`model` must be a MorphableModel"),
                                    ({"depth": 9.0}, "`depth` .* must be < camera.distance")])
def test_generator_bad_args(kw, msg):
    with pytest.raises(ValueError, match=msg): SyntheticStyleGenerator(**kw)


def test_generator_bad_latents(G):
    with pytest.raises(ValueError, match="`ws` must have shape"): G.synthesis(torch.zeros(1, G.num_ws, G.w_dim + 1))
    with pytest.raises(ValueError, match="`z` must have shape"): G.mapping(torch.zeros(2, G.z_dim, 1))
    with pytest.raises(ValueError, match="non-finite"): G.synthesis(torch.full((1, G.num_ws, G.w_dim), float("nan")))


# ---------------------------------------------------------------- dataset, writer, oracle
def test_dataset_deterministic(G):
    a = SyntheticFaces(50, 64, seed=3, generator=G)
    b = SyntheticFaces(50, 64, seed=3, generator=SyntheticStyleGenerator(64))
    assert torch.allclose(a[7], b[7], atol=1e-5)
    assert torch.allclose(a[7], a.__getitems__([1, 7, 9])[1], atol=1e-5)
    assert float((a[7] - SyntheticFaces(50, 64, seed=4, generator=G)[7]).abs().mean()) > 0.01
    assert torch.allclose(a[-1], a[49])
    x = a[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1


def test_dataset_loader_and_truth(G):
    ds = SyntheticFaces(20, 64, seed=1, generator=G, return_truth=True)
    img, tr = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert img.shape == (3, 3, 64, 64) and tr["params"].shape == (3, 257) and tr["mask"].shape == (3, 1, 64, 64)
    fit = OracleFitter(ds).fit_indices([0, 1, 2])
    assert isinstance(fit, FitResult) and fit.image_size == 64 and bool(fit.ok.all()) and fit.transform is None
    assert torch.allclose(fit.params.to_vector(), tr["params"], atol=1e-5)
    assert torch.allclose(fit.mask, tr["mask"])
    # the oracle's landmarks are the projected model landmarks, inside the face mask
    lm = fit.landmarks.round().long().clamp(0, 63)
    inside = fit.mask[torch.arange(3)[:, None], 0, lm[..., 1], lm[..., 0]]
    assert float(inside[:, 27:].mean()) > 0.9                         # inner landmarks (nose, eyes, mouth)
    # the same through fit_ws on the generator
    fit2 = OracleFitter(G)(ds.ws([0, 1, 2]))
    assert torch.allclose(fit2.params.to_vector(), fit.params.to_vector())


def test_dataset_bad_args(G):
    with pytest.raises(ValueError, match="`n` must be an integer"): SyntheticFaces(0)
    with pytest.raises(ValueError, match="`resolution` must be a power of two"): SyntheticFaces(4, 96)
    with pytest.raises(ValueError, match="unknown options"): SyntheticFaces(4, 64, colour="red")
    with pytest.raises(ValueError, match="unknown options"): SyntheticFaces(4, 64, generator=G, seed=1, z_dim=8)
    with pytest.raises(ValueError, match="`truncation_psi`"): SyntheticFaces(4, 64, generator=G, truncation_psi=2)
    with pytest.raises(IndexError): SyntheticFaces(4, 64, generator=G)[4]
    with pytest.raises(ValueError, match="`source` must be"): OracleFitter("x")


def test_writer_layout_and_zip(tmp_path):
    "Folders of 1000 named by the global index, PNGs that read back to the same pixels, and a zip of the same names."
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 4, 6, generator=g) for _ in range(1003)]
    paths = write_image_folder(imgs, tmp_path / "ffhq", 1002, batch_size=400, zip=True)
    rel = [p.relative_to(tmp_path / "ffhq").as_posix() for p in paths]
    assert rel[0] == "00000/00000.png" and rel[999] == "00000/00999.png" and rel[1000] == "01000/01000.png"
    assert len(rel) == 1002 and sorted(p.name for p in (tmp_path / "ffhq").iterdir()) == ["00000", "01000"]
    back = load_image(paths[1001])[0]
    assert torch.allclose(back, (imgs[1001] * 255).round() / 255, atol=1e-6)
    names = zipfile.ZipFile(tmp_path / "ffhq.zip").namelist()
    assert len(names) == 1002 and "01000/01001.png" in names


def test_writer_synthetic_and_bad_args(tmp_path, G):
    ds = SyntheticFaces(10, 64, generator=G)
    p = write_image_folder(ds, tmp_path / "s", 3)
    assert torch.allclose(load_image(p[2])[0], ds[2], atol=1 / 255)
    with pytest.raises(ValueError, match="`n` must be an integer"): write_image_folder(ds, tmp_path, -1)
    with pytest.raises(ValueError, match="exceeds"): write_image_folder(ds, tmp_path, 11)
    with pytest.raises(ValueError, match="`batch_size`"): write_image_folder(ds, tmp_path, 1, batch_size=0)
    with pytest.raises(ValueError, match="`image` must have shape"):
        write_image_folder([torch.zeros(4, 2, 2)], tmp_path / "bad", 1)


def test_generator_moves_with_its_model():
    "`.double()` (like `.to(device)`) converts the embedded morphable model too; the images agree with float32."
    G = SyntheticStyleGenerator(32)
    ws = G.sample_ws(2, seed=0)
    a = G.synthesis(ws)
    G.double()
    assert G.model.mean_shape.dtype == torch.float64 and G.model.faces.dtype == torch.int64
    b = G.synthesis(ws.double())
    assert b.dtype == torch.float64
    assert float((a.double() - b).abs().gt(1e-3).float().mean()) < 0.01     # up to a few edge pixels


def test_generator_paints_features_where_a_loaded_model_has_them(tmp_path):
    "A model without `uv_anchors` (a BFM-format file, Floater UV) gets anchors from its landmarks: pupils land there."
    from facetex.morphable import embedded_model, load_bfm09, write_bfm09_like
    bfm = load_bfm09(**write_bfm09_like(embedded_model(16), tmp_path / "BFM"))
    assert bfm.uv_anchors == {}
    G = SyntheticStyleGenerator(32, model=bfm, tex_resolution=256)
    assert G.anchors == anchors_from_landmarks(bfm) and G.anchors != anchors_of(None)
    tex = G.ground_truth(G.sample_ws(4, seed=0)).texture
    for k in ("eye_r", "eye_l"):
        u, v = G.anchors[k]
        assert float(tex[:, :, int(v * 256), int(u * 256)].mean(1).max()) < 0.2        # dark pupil at the landmarks' eye
        assert abs(u - float(bfm.uv[bfm.landmarks68[36:42] if k == "eye_r" else bfm.landmarks68[42:48], 0].mean())) < 1e-6
