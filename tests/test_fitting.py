"""facetex.fitting beyond the notebook: Deep3DFaceRecon's losses against literal re-computations, the fitter on other
basis sizes (BFM-like) and its gradients, crops/paste round trips, the two-step mask on a real photo, bad input."""
import math

import numpy as np
import pytest
import torch

from facetex.camera import Camera
from facetex.fitting import (FittingLosses, OptimFitter, align_crop, apply_affine, coefficient_regularizer,
                             crop_template, estimate_light, face_region_mask, fit, gamma_regularizer, invert_affine,
                             landmark68_mask, landmark_loss, paste, photometric_loss, pose_from_landmarks,
                             reflectance_loss, render_params, warp_affine)
from facetex.lighting import sh_from_direction
from facetex.morphable import FaceParams, FitResult, MorphableModel, embedded_model
from facetex.render import composite

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return embedded_model(n=40)


def _synthetic(model, S=64, yaws=(-30., 30.), seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(yaws)
    p = model.sample(B, generator=g, scale=0.6)
    ang = torch.stack([torch.zeros(B), torch.tensor(yaws), torch.zeros(B)], -1) * math.pi / 180
    p = p.replace(angle=ang, gamma=sh_from_direction(torch.tensor([[0.3, 0.2, 1.]] * B), 0.6, 0.45))
    cam = Camera().scaled(S)
    with torch.no_grad():
        out, screen, _ = render_params(model, p, cam)
    img = composite(out.image, out.mask, torch.full((B, 3, S, S), 0.3))
    return img, model.landmarks(screen)[..., :2], p, cam


# ---------------------------------------------------------------- losses: literal loops as references
def test_landmark_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 68, 2, generator=g) * 5, torch.randn(3, 68, 2, generator=g) * 5
    w = [20. if (28 <= k <= 30 or k >= 60) else 1. for k in range(68)]
    ref = [sum(w[k] * float(((a[i, k] - b[i, k]) ** 2).sum()) for k in range(68)) / 68 for i in range(3)]
    np.testing.assert_allclose(landmark_loss(a, b, reduction="none").numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(float(landmark_loss(a, b)), np.mean(ref), rtol=1e-5)


def test_photometric_loss_matches_loop_and_has_finite_gradient():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    m = (torch.rand(2, 1, 5, 6, generator=g) > 0.5).float()
    num = sum(math.sqrt(1e-6 + float(((x[i, :, r, c] - y[i, :, r, c]) ** 2).sum()))
              for i in range(2) for r in range(5) for c in range(6) if m[i, 0, r, c] > 0)
    np.testing.assert_allclose(float(photometric_loss(x, y, m)), num / float(m.sum()), rtol=1e-5)
    z = y.clone().requires_grad_(True)                      # identical images: the eps keeps the sqrt differentiable
    photometric_loss(z, y, m).backward()
    assert torch.isfinite(z.grad).all()


def test_regularizers_accept_dicts_and_params():
    p = FaceParams.from_vector(torch.randn(2, 257))
    d = dict(id=p.id, exp=p.exp, tex=p.tex, gamma=p.gamma)
    ref = (p.id ** 2).sum(1) + 0.8 * (p.exp ** 2).sum(1) + 1.7e-2 * (p.tex ** 2).sum(1)
    torch.testing.assert_close(coefficient_regularizer(p, reduction="none"), ref)
    torch.testing.assert_close(coefficient_regularizer(d), ref.mean())
    g = p.gamma.reshape(2, 3, 9)
    torch.testing.assert_close(gamma_regularizer(d, reduction="none"), g.var(1, unbiased=False).mean(-1))


def test_reflectance_loss_ignores_non_skin():
    alb = torch.rand(1, 20, 3)
    skin = torch.zeros(20); skin[:10] = 1
    alb2 = alb.clone(); alb2[:, 10:] = torch.rand(1, 10, 3)     # change only non-skin vertices
    torch.testing.assert_close(reflectance_loss(alb, skin), reflectance_loss(alb2, skin))


def test_fitting_losses_defaults_are_deep3dfacerecon():
    L = FittingLosses()
    assert (L.w_lm, L.w_color, L.w_reg, L.w_gamma, L.w_reflc) == (1.6e-3, 1.92, 3e-4, 10.0, 5.0)
    assert (L.w_id, L.w_exp, L.w_tex) == (1.0, 0.8, 1.7e-2)


# ---------------------------------------------------------------- fitter
def test_fitter_improves_pose_over_closed_form(model):
    img, lm, p, cam = _synthetic(model)
    a0, _ = pose_from_landmarks(model, cam, lm)
    r = OptimFitter(model, cam, rigid_steps=30, full_steps=30, tol=0).fit(img, lm)
    e0 = ((a0 - p.angle) * 180 / math.pi).abs().max()
    e1 = ((r.params.angle - p.angle) * 180 / math.pi).abs().max()
    assert e1 < 4 and r.losses["lm_px"].max() < 0.5, (e0, e1, r.losses["lm_px"])
    assert r.losses["history"].shape == (60, 2) and r.losses["steps"].tolist() == [30, 30]
    assert bool(r.ok.all())


def test_fitter_with_other_basis_sizes(model):
    """A BFM-like model with other basis sizes (here 40/20/30) fits with the same code; params keep its sizes."""
    m = MorphableModel(mean_shape=model.mean_shape, id_base=model.id_base[..., :40], exp_base=model.exp_base[..., :20],
                       id_std=model.id_std[:40], exp_std=model.exp_std[:20], tex_mean=model.tex_mean,
                       tex_base=model.tex_base[..., :30], tex_std=model.tex_std[:30], faces=model.faces, uv=model.uv,
                       landmarks68=model.landmarks68, face_mask=model.face_mask, skin_mask=model.skin_mask, name="small")
    img, lm, p, cam = _synthetic(model, yaws=(15.,))
    r = OptimFitter(m, cam, rigid_steps=10, full_steps=5, tol=0).fit(img, lm)
    assert r.params.sizes == (40, 20, 30)
    assert torch.isfinite(r.params.to_vector()).all()


def test_init_at_truth_stays_there(model):
    img, lm, p, cam = _synthetic(model, yaws=(20.,))
    r = OptimFitter(model, cam, rigid_steps=0, full_steps=10, lr=1e-3, tol=0).fit(img, lm, init=p)
    assert r.losses["lm_px"].max() < 0.3
    assert ((r.params.angle - p.angle) * 180 / math.pi).abs().max() < 1.0


def test_photometric_mask_restricts_loss(model):
    img, lm, p, cam = _synthetic(model, yaws=(0.,))
    f = OptimFitter(model, cam)
    zero = torch.zeros(1, 1, 64, 64)
    t, _ = f.terms(p, img, lm, cam, mask=zero)
    assert float(t["color"]) == 0.0
    t, _ = f.terms(p, img * 0.5, lm, cam)
    assert float(t["color"]) > 0.05


def test_estimate_light_recovers_gamma(model):
    img, lm, p, cam = _synthetic(model, yaws=(-10., 25.))
    g = estimate_light(model, p, cam, img, ridge=1e-7)
    torch.testing.assert_close(g, p.gamma, atol=0.01, rtol=0)


# ---------------------------------------------------------------- crops, paste, two-step
def test_paste_of_own_crop_restores_image():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 90), torch.linspace(0, 1, 120), indexing="ij")
    img = torch.stack([xx, yy, (xx + yy) / 2])[None]                      # smooth: bilinear is exact on linear ramps
    T = torch.tensor([[[0.7, 0, 20.], [0, 0.7, 10.]]])                    # crop px → image px
    crop = warp_affine(img, T, 64)
    res = FitResult(params=FaceParams.zeros(1), mask=torch.ones(1, 1, 64, 64), landmarks=torch.zeros(1, 68, 2),
                    transform=T)
    out = paste(res, crop, torch.zeros_like(img))
    inside = (slice(14, 50), slice(24, 60))                               # well inside the pasted square
    torch.testing.assert_close(out[..., inside[0], inside[1]], img[..., inside[0], inside[1]], atol=1e-4, rtol=0)
    assert float(out[..., 70:, :].abs().max()) == 0.0                      # outside the crop: the background


def test_align_crop_recovers_known_similarity(model):
    cam = Camera().scaled(64)
    tmpl = crop_template(model, cam)
    T = torch.tensor([[[2.0, 0, 30.], [0, 2.0, 12.]]])                    # template frame → photo frame
    lm = apply_affine(T, tmpl[None])
    _, lm_c, transform = align_crop(torch.rand(1, 3, 200, 200), lm, tmpl, 64)
    torch.testing.assert_close(transform, T, atol=1e-4, rtol=0)
    torch.testing.assert_close(lm_c, tmpl[None], atol=1e-3, rtol=0)


def test_two_step_mask_on_astronaut_matches_direct_face_oval(model):
    """d_lm built in the crop and warped back agrees with the face oval filled directly in the photo."""
    skdata = pytest.importorskip("skimage.data")
    lmk = pytest.importorskip("facetex.landmarks")
    from facetex.core import image_from_array
    photo = image_from_array(skdata.astronaut())
    det = lmk.detect_landmarks(photo)
    assert bool(det.found.all())
    step1 = lambda im, lm: FitResult(params=model.zero_params(im.shape[0]), mask=torch.zeros(im.shape[0], 1, 128, 128),
                                     landmarks=lm)
    r = fit(photo, step1=step1, landmarks=det, crop_size=128, model=model)
    back = warp_affine(r.mask, invert_affine(r.transform), (512, 512)) > 0.5
    direct = lmk.face_oval_mask(det.points, det.found, (512, 512)) > 0.5
    iou = (back & direct).sum() / (back | direct).sum()
    assert iou > 0.95, iou
    one = fit(photo, step1=step1, landmarks=det, crop_size=128, model=model, two_step=False)
    assert float(one.mask.sum()) == 0.0                                   # the one-step mask is step 1's own


def test_landmark68_mask_contains_landmarks(model):
    img, lm, p, cam = _synthetic(model, yaws=(0.,))
    m = landmark68_mask(lm, 64)
    inner = lm[0, 27:68].round().long().clamp(0, 63)                      # nose, eyes, mouth lie inside the outline
    assert bool(m[0, 0, inner[:, 1], inner[:, 0]].all())


def test_bad_inputs(model):
    f = OptimFitter(model, Camera().scaled(32), rigid_steps=1, full_steps=0)
    with pytest.raises(ValueError, match="`images` must have shape"):
        f.fit(torch.rand(1, 4, 32, 32), torch.rand(1, 68, 2))
    with pytest.raises(ValueError, match="`init` must hold B=2"):
        f.fit(torch.rand(2, 3, 32, 32), torch.rand(2, 68, 2), init=FaceParams.zeros(1))
    with pytest.raises(ValueError, match="rigid_steps"):
        OptimFitter(model, rigid_steps=-1)
    with pytest.raises(ValueError, match="`pred_lm` must have shape"):
        landmark_loss(torch.rand(68, 2), torch.rand(68, 2))
    with pytest.raises(ValueError, match="`M` must have shape"):
        warp_affine(torch.rand(1, 3, 8, 8), torch.eye(3)[None], 8)
    with pytest.raises(ValueError, match="crop_size=None"):
        fit(torch.rand(1, 3, 40, 50), landmarks=torch.rand(1, 68, 2) * 30, crop_size=None, model=model)


def test_no_face_found_is_not_ok(model):
    """An image without a face: MediaPipe finds nothing, the fit still returns (finite), flagged not ok, empty d_lm."""
    pytest.importorskip("facetex.landmarks")
    noise = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    r = fit(noise, crop_size=64, model=model, rigid_steps=2, full_steps=2)
    assert r.ok.tolist() == [False]
    assert float(r.mask.sum()) == 0.0
    assert torch.isfinite(r.params.to_vector()).all()


def test_align_crop_antialiases_large_photos(model):
    """A 1-px checkerboard cropped 13× smaller: the default (anti-aliased) crop is its mean grey, plain bilinear aliases."""
    cam = Camera().scaled(64)
    tmpl = crop_template(model, cam)
    T = torch.tensor([[[13.3, 0, 100.], [0, 13.3, 50.]]])                 # the whole crop lies inside the photo
    chk = ((torch.arange(1000)[:, None] + torch.arange(1000)[None]) % 2).float()[None, None].expand(1, 3, -1, -1)
    crop, _, transform = align_crop(chk, apply_affine(T, tmpl[None]), tmpl, 64)
    torch.testing.assert_close(transform, T, atol=1e-3, rtol=0)
    assert float((crop[..., 2:-2, 2:-2] - 0.5).abs().max()) < 0.02
    raw, _, _ = align_crop(chk, apply_affine(T, tmpl[None]), tmpl, 64, antialias=False)
    assert float((raw[..., 2:-2, 2:-2] - 0.5).abs().mean()) > 0.1


def test_fit_accepts_gray_16bit_arrays_and_rejects_bad_images(model):
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("facetex.landmarks")
    from skimage.color import rgb2gray
    from facetex.core import image_from_array
    a8 = skdata.astronaut()
    step1 = lambda im, lm: FitResult(params=model.zero_params(im.shape[0]), mask=torch.zeros(im.shape[0], 1, 128, 128),
                                     landmarks=lm)
    ref = fit(image_from_array(a8), step1=step1, crop_size=128, model=model)
    g16 = (rgb2gray(a8) * 65535).astype(np.uint16)
    rgba = np.concatenate([a8, np.full(a8.shape[:2] + (1,), 255, np.uint8)], -1)
    r = fit([g16, rgba], step1=step1, crop_size=128, model=model)
    assert r.ok.tolist() == [True, True] and float(r.mask[0].sum()) > 1000
    torch.testing.assert_close(r.transform[1], ref.transform[0], atol=1e-3, rtol=0)          # opaque RGBA = RGB
    assert float((r.transform[0, :, :2] - ref.transform[0, :, :2]).abs().max()) < 0.05       # gray: same crop,
    assert float((r.transform[0, :, 2] - ref.transform[0, :, 2]).abs().max()) < 6.0          # within detector noise
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        fit(torch.from_numpy(a8).permute(2, 0, 1)[None].float(), step1=step1, model=model)   # 0–255 floats
    with pytest.raises(ValueError, match="max_size"):
        fit(torch.rand(1, 3, 40, 5000), step1=step1, model=model)
