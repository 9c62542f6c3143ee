"""facetex.reconstruct: metrics vs scikit-image, VGG16 layout/loading, and texture reconstruction on synthetic truth."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facetex.core import make_generator
from facetex.reconstruct import (VGG16, ReconLosses, Reconstruction, _prepare_render, _render_texture, _synthesize,
                                 identity_similarity, l1, load_vgg16, psnr, reconstruct, ssim, synthetic_targets)
from facetex.stylegan2 import Generator
from facetex.synthetic import OracleFitter, SyntheticStyleGenerator

torch.set_num_threads(1)


@pytest.mark.parametrize("shape,noise,seed", [((2, 3, 32, 32), 0.1, 0), ((1, 1, 25, 47), 0.3, 1), ((3, 3, 64, 20), 0.02, 2)])
def test_ssim_psnr_match_skimage(shape, noise, seed):
    g = make_generator(seed)
    a = torch.rand(*shape, generator=g)
    b = (a + noise * torch.randn(*shape, generator=g)).clamp(0, 1)
    ref_s = [structural_similarity(a[i].double().numpy(), b[i].double().numpy(), gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=1.0, channel_axis=0) for i in range(shape[0])]
    ref_p = [peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1.0) for i in range(shape[0])]
    np.testing.assert_allclose(ssim(a, b).numpy(), ref_s, atol=1e-4)
    np.testing.assert_allclose(ssim(a.double(), b.double()).numpy(), ref_s, atol=1e-9)
    np.testing.assert_allclose(psnr(a, b).numpy(), ref_p, rtol=1e-4)
    # data_range: scaling both images by 255 with data_range=255 gives the same SSIM / PSNR
    np.testing.assert_allclose(ssim(a.double() * 255, b.double() * 255, data_range=255.).numpy(), ref_s, atol=1e-9)
    np.testing.assert_allclose(psnr(a.double() * 255, b.double() * 255, data_range=255.).numpy(), ref_p, rtol=1e-6)


def test_masked_metrics_brute_force():
    g = make_generator(4)
    a, b = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64), torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    m = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).double()
    for i in range(2):
        sel = m[i, 0].bool()
        d = (a[i] - b[i])[:, sel]
        assert abs(float(l1(a, b, m)[i]) - float(d.abs().mean())) < 1e-12
        assert abs(float(psnr(a, b, m)[i]) - 10 * np.log10(1 / float(d.square().mean()))) < 1e-9
    assert torch.allclose(ssim(a, a, m), torch.ones(2, dtype=torch.float64))


def test_metric_bad_input():
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="`b` must have shape"): l1(a, a[0])
    with pytest.raises(ValueError, match="`mask` must have shape"): ssim(a, a, torch.ones(1, 3, 16, 16))
    with pytest.raises(ValueError, match="needs a face-recognition network"): identity_similarity(a, a)
    with pytest.raises(ValueError, match="`data_range`"): psnr(a, a, data_range=-1.0)
    with pytest.raises(ValueError, match="`data_range`"): ssim(a, a, data_range=0)


def test_identity_similarity_with_user_net():
    g = make_generator(5)
    a, b = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    W = torch.randn(3 * 8 * 8, 16, generator=g)
    net = lambda x: x.flatten(1) @ W
    ea, eb = net(a), net(b)
    ref = (ea * eb).sum(1) / ea.norm(dim=1) / eb.norm(dim=1)
    assert torch.allclose(identity_similarity(a, b, net), ref, atol=1e-6)
    assert torch.allclose(identity_similarity(a, a, net), torch.ones(3), atol=1e-6)


def test_vgg16_names_and_counts():
    with torch.device("meta"):
        full, feat = VGG16(), VGG16(classifier=False)
    assert sum(p.numel() for p in full.parameters()) == 138_357_544
    assert sum(p.numel() for p in feat.parameters()) == 14_714_688
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert list(feat.state_dict()) == [f"features.{i}.{n}" for i in convs for n in ("weight", "bias")]
    assert list(full.state_dict()) == list(feat.state_dict()) + [f"classifier.{i}.{n}" for i in (0, 3, 6) for n in ("weight", "bias")]
    assert tuple(full.state_dict()["classifier.0.weight"].shape) == (4096, 25088)


def test_load_vgg16_round_trip(tmp_path):
    torch.manual_seed(0)
    src = VGG16(classifier=False)
    sd = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    path = tmp_path / "vgg16-features.pth"
    torch.save(sd, path)
    net = load_vgg16(path)
    assert not net.has_classifier and not any(p.requires_grad for p in net.parameters())
    for k, v in net.state_dict().items(): assert torch.equal(v, sd[k])
    x = torch.rand(1, 3, 32, 32)
    fm = net.feature_maps(x)
    assert [tuple(f.shape[1:]) for f in fm] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    # relu1_2 by hand: conv0 → relu → conv2 → relu on the ImageNet-normalised image
    xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = torch.relu(torch.nn.functional.conv2d(xn, sd["features.0.weight"], sd["features.0.bias"], padding=1))
    h = torch.relu(torch.nn.functional.conv2d(h, sd["features.2.weight"], sd["features.2.bias"], padding=1))
    assert torch.allclose(fm[0], h, atol=1e-4)
    assert ReconLosses(vgg=path).uses_perceptual
    # errors name the file
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"): load_vgg16(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"; bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"): load_vgg16(bad)
    wrong = tmp_path / "wrong.pth"; torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="missing"): load_vgg16(wrong)
    shp = tmp_path / "shape.pth"; sd2 = dict(sd); sd2["features.0.weight"] = torch.zeros(64, 3, 5, 5); torch.save(sd2, shp)
    with pytest.raises(ValueError, match="wrong shape"): load_vgg16(shp)


@pytest.fixture(scope="module")
def world():
    G_bg = SyntheticStyleGenerator(64)
    photos, fit, truth = synthetic_targets(G_bg, 2, seed=1)
    torch.manual_seed(0)
    G_T = Generator(z_dim=32, w_dim=32, resolution=32, channel_multiplier=1 / 16, mapping_layers=2).eval()
    return G_bg, photos, fit, truth, G_T


def test_reconstruct_decreases_loss(world):
    G_bg, photos, fit, truth, G_T = world
    before = [p.clone() for p in G_T.parameters()]
    rec = reconstruct(photos, G_T, fit_result=fit, steps=30, lr=0.1, progress=False)
    assert isinstance(rec, Reconstruction) and "texture=" in repr(rec)
    assert rec.texture.shape == (2, 3, 32, 32) and rec.ws.shape == (2, G_T.num_ws, G_T.w_dim)
    h = rec.losses["l1"]
    assert len(h) == 30 and h[-1] < 0.35 * h[0], h[::5]
    assert all(torch.equal(a, b) for a, b in zip(before, G_T.parameters()))          # G_T frozen, untouched
    assert all(p.requires_grad for p in G_T.parameters())                           # and its flags restored
    # the final metrics are those of the returned render
    assert torch.allclose(rec.metrics["l1"], l1(rec.render, photos, rec.mask))
    assert torch.allclose(rec.render * (1 - rec.mask), photos * (1 - rec.mask))
    # batching: image 1 alone follows the same trajectory (independent latents, per-image loss terms); a few steps,
    # as float rounding of batched vs single convolutions is amplified by Adam's normalisation over long runs
    p1, f1, _ = synthetic_targets(G_bg, 2, seed=1)
    from facetex.morphable import FitResult
    sub = FitResult(f1.params.__class__(**{k: getattr(f1.params, k)[1:] for k in ("id", "exp", "tex", "angle", "gamma", "trans")}),
                    f1.mask[1:], f1.landmarks[1:], image_size=f1.image_size)
    rec5 = reconstruct(p1, G_T, fit_result=f1, steps=5, lr=0.1, progress=False)
    rec1 = reconstruct(p1[1:], G_T, fit_result=sub, steps=5, lr=0.1, progress=False)
    assert torch.allclose(rec1.texture[0], rec5.texture[1], atol=1e-3)
    assert not torch.allclose(rec5.texture[0], rec5.texture[1], atol=1e-2)


def test_reconstruct_truth_check(world):
    """Target rendered from G_T(w*): the optimum (zero masked error) is reachable. 60 steps from w̄ must bring the
    masked render L1 below 0.05 (init ≈ 0.33) and the visible-texel texture L1 below 0.08 (init > 0.25)."""
    G_bg, photos, fit, truth, G_T = world
    with torch.no_grad():
        w_star = G_T.mapping(torch.randn(2, G_T.z_dim, generator=make_generator(5)))
        tex_star = _synthesize(G_T, w_star)
        prep = _prepare_render(fit, G_bg.model, G_bg.camera, True)
        face, m = _render_texture(tex_star, G_bg.model, prep, fit, (64, 64))
        target = m * face + (1 - m) * truth.background
    t1 = torch.ones_like(tex_star).requires_grad_(True)
    f1, m1 = _render_texture(t1, G_bg.model, prep, fit, (64, 64)); (f1 * m1).sum().backward()
    visible = (t1.grad.abs().sum(1, keepdim=True) > 0).float()
    rec = reconstruct(target, G_T, fit_result=fit, steps=60, lr=0.1, progress=False)
    init_tex = _synthesize(G_T, G_T.w_avg.expand(2, G_T.num_ws, -1)).detach()
    assert bool((l1(init_tex, tex_star, visible) > 0.2).all())
    assert rec.losses["l1"][0] > 0.2
    assert bool((rec.metrics["l1"] < 0.05).all()), rec.metrics
    assert bool((l1(rec.texture, tex_star, visible) < 0.08).all())


def test_reconstruct_fitter_and_crop_transform(world):
    G_bg, photos, fit, truth, G_T = world
    calls = []
    def fitter(images):
        calls.append(images.shape); return fit
    a = reconstruct(photos, G_T, fitter=fitter, steps=3, progress=False)
    assert calls == [photos.shape]
    # an identity crop transform goes through the warp path and gives the same result
    from dataclasses import replace
    eye = torch.tensor([[1., 0, 0], [0, 1, 0]]).expand(2, 2, 3).clone()
    b = reconstruct(photos, G_T, fit_result=replace(fit, transform=eye), steps=3, progress=False)
    assert torch.allclose(a.mask, b.mask, atol=1e-4) and torch.allclose(a.texture, b.texture, atol=1e-3)


def test_reconstruct_perceptual_random_vgg(world):
    G_bg, photos, fit, truth, G_T = world
    rec = reconstruct(photos, G_T, fit_result=fit, steps=2, losses=ReconLosses(vgg="random"), progress=False)
    assert sorted(rec.losses) == ["l1", "perceptual", "ssim", "total"]
    assert "perceptual" not in reconstruct(photos, G_T, fit_result=fit, steps=1, progress=False).losses


def test_reconstruct_bad_input(world):
    G_bg, photos, fit, truth, G_T = world
    with pytest.raises(ValueError, match="`images` must have shape"): reconstruct(photos[0], G_T, fit_result=fit)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"): reconstruct(photos + 1, G_T, fit_result=fit)
    with pytest.raises(ValueError, match="2 fits for 1 images"): reconstruct(photos[:1], G_T, fit_result=fit)
    with pytest.raises(ValueError, match="OracleFitter"): reconstruct(photos, G_T, fitter=OracleFitter(G_bg))
    with pytest.raises(ValueError, match="`lr`"): reconstruct(photos, G_T, fit_result=fit, lr=0)
    with pytest.raises(ValueError, match="`init_ws`"):
        reconstruct(photos, G_T, fit_result=fit, init_ws=torch.zeros(2, 3, 32), progress=False)
    with pytest.raises(ValueError, match="fit_result.mask"):
        reconstruct(photos[:, :, :32, :32], G_T, fit_result=fit, progress=False)
    with pytest.raises(ValueError, match="`losses`"): reconstruct(photos, G_T, fit_result=fit, losses={"l1": 1})


def test_reconstruct_from_photo_with_real_fit(world):
    """No fit given: facetex.fitting.fit (MediaPipe + 3DMM on an aligned crop) supplies the geometry; the render is
    warped back into the photo. The fitted face region overlaps the true one and the photometric loss falls."""
    G_T = world[4]
    G_bg = SyntheticStyleGenerator(128)
    photo, fit_true, _ = synthetic_targets(G_bg, 1, seed=1)
    rec = reconstruct(photo, G_T, steps=20, lr=0.1, progress=False)
    assert bool(rec.fit.ok.all()) and rec.fit.transform is not None
    assert rec.mask.shape == (1, 1, 128, 128)
    a, b = fit_true.mask.bool(), rec.mask > 0.5
    assert float((a & b).sum() / (a | b).sum()) > 0.6
    assert rec.losses["l1"][-1] < 0.5 * rec.losses["l1"][0]


def test_reconstruct_progress_bar_and_w_reg(world, capsys):
    G_bg, photos, fit, truth, G_T = world
    rec = reconstruct(photos, G_T, fit_result=fit, steps=3, progress=True, losses=ReconLosses(w_reg=1.0))
    assert "reconstruct" in capsys.readouterr().err                                  # tqdm writes to stderr
    assert rec.losses["w_reg"][0] == 0.0 and rec.losses["w_reg"][-1] > 0              # starts at w̄, then moves
