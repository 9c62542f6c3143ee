"""The Fig. 1 training step: composite structure against an independent re-render, the synthetic world's ground truth
(a perfect texture reproduces G_bg's image), gradient routing of the two GAN phases, the lazy R1 term against
independent autograd, rotation/relighting/two-step switches, determinism, transfer learning and bad input."""
import json
import math

import pytest
import torch

from facetex import morphable
from facetex.core import image_to_gan, make_generator
from facetex.morphable import FitResult
from facetex.pipeline import (Composite, NoisyOracleFitter, PipelineConfig, TexturePipeline, make_optimizers,
                              r1_penalty, rig_rotate, sample_pose_targets)
from facetex.synthetic import OracleFitter, SyntheticStyleGenerator


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return TexturePipeline(PipelineConfig(img_resolution=32, tex_resolution=32))


@pytest.fixture(scope="module")
def comp(pipe):
    return pipe.compose(pipe.sample_z(4, seed=0), make_generator(0))


# -- configuration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("img_resolution", 48), ("img_resolution", 8), ("tex_resolution", 2048), ("z_dim", 0), ("w_dim", 1.5),
    ("channel_base", -1), ("mapping_layers", 0), ("rotate", 1), ("relight", "yes"), ("two_step", None),
    ("yaw_range_deg", -5.), ("yaw_range_deg", 90.), ("pitch_range_deg", float("nan")), ("r1_gamma", -1.),
    ("r1_every", 0), ("lr_g", 0.), ("lr_d", float("inf")), ("betas", (0.0, 1.0)), ("betas", (0.5,)),
    ("seed", 1.5), ("background", "ffhq"), ("pretrained", 3), ("bg_truncation_psi", 1.5)])
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        PipelineConfig(**{field: value})


def test_config_round_trip_and_unknown_keys():
    c = PipelineConfig(img_resolution=32, rotate=False, betas=[0.1, 0.9], pretrained=None)
    assert c.betas == (0.1, 0.9)
    d = json.loads(json.dumps(c.to_dict()))
    assert PipelineConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="img_res"):
        PipelineConfig.from_dict({"img_res": 32})
    with pytest.raises(ValueError, match="pretrained"):
        PipelineConfig(background="pretrained")


def test_synthetic_pose_range_is_checked():
    with pytest.raises(ValueError, match="yaw_range_deg"):
        TexturePipeline(PipelineConfig(img_resolution=32, tex_resolution=32, yaw_range_deg=70.))


def test_rotation_needs_a_rig_for_other_generators(pipe):
    from facetex.stylegan2 import Generator
    G = Generator(z_dim=pipe.z_dim, w_dim=16, resolution=32, channel_base=128, channel_max=8, mapping_layers=1)
    with pytest.raises(ValueError, match="rig"):                     # a StyleGAN2 G_bg has no exact pose edit
        TexturePipeline(pipe.config, G_bg=G, fitter=lambda images: None)
    with pytest.raises(ValueError, match="z"):
        TexturePipeline(pipe.config, G_bg=SyntheticStyleGenerator(32, z_dim=16))
    with pytest.raises(ValueError, match="img_resolution"):
        TexturePipeline(pipe.config, G_bg=SyntheticStyleGenerator(64, z_dim=pipe.z_dim))


# -- the composite -------------------------------------------------------------------------------------------------
def test_composite_shapes_and_ranges(pipe, comp):
    B, R, T = 4, 32, 32
    assert isinstance(comp, Composite) and "Composite(" in repr(comp)
    assert comp.image.shape == (B, 3, R, R) and comp.background.shape == (B, 3, R, R) and comp.face.shape == (B, 3, R, R)
    assert comp.mask.shape == (B, 1, R, R) and comp.texture.shape == (B, 3, T, T)
    assert comp.ws_bg.shape == (B, pipe.G_bg.num_ws, pipe.G_bg.w_dim)
    assert comp.ws_tex.shape == (B, pipe.G_T.num_ws, pipe.G_T.w_dim)
    assert comp.params.batch_size == B
    for t in (comp.image, comp.background, comp.face, comp.mask, comp.texture, comp.albedo, comp.coverage):
        t = t.detach()
        assert float(t.min()) >= 0 and float(t.max()) <= 1
    # a face was actually pasted: a sizeable part of each image, not all of it
    frac = comp.mask.mean(dim=[1, 2, 3])
    assert bool((frac > 0.05).all()) and bool((frac < 0.8).all()), frac


def test_composite_is_background_outside_and_face_inside(pipe, comp):
    out = (comp.mask == 0).expand(-1, 3, -1, -1)
    inside = (comp.mask == 1).expand(-1, 3, -1, -1)
    assert out.any() and inside.any()
    assert torch.equal(comp.image[out], comp.background[out])
    torch.testing.assert_close(comp.image[inside], comp.face[inside], atol=1e-6, rtol=0)


def test_face_matches_independent_render(pipe, comp):
    ref = morphable.render(pipe.model, comp.params, pipe.camera, texture=comp.texture)   # its own two-pass code
    torch.testing.assert_close(comp.face, ref.image.clamp(0, 1), atol=1e-5, rtol=0)
    assert torch.equal(comp.coverage, ref.mask)
    blend = comp.mask * ref.image.clamp(0, 1) + (1 - comp.mask) * comp.background
    torch.testing.assert_close(comp.image, blend, atol=1e-5, rtol=0)
    # the albedo pass samples the texture: a constant texture gives a constant albedo inside the coverage
    z = pipe.sample_z(2, seed=3)
    flat = pipe.compose(z, make_generator(1), texture=torch.full((2, 3, 16, 16), 0.25))
    m = flat.coverage.expand(-1, 3, -1, -1) > 0
    torch.testing.assert_close(flat.albedo[m], torch.full_like(flat.albedo[m], 0.25))


def test_perfect_texture_reproduces_the_synthetic_image(pipe):
    z = pipe.sample_z(3, seed=7)
    tex = pipe.G_bg.ground_truth(pipe.G_bg.mapping(z)).texture      # the albedo G_bg painted (pose-independent)
    c = pipe.compose(z, make_generator(2), texture=tex)
    truth = pipe.G_bg.ground_truth(c.ws_bg)
    torch.testing.assert_close(c.image, truth.image, atol=1e-4, rtol=0)
    # … and a wrong texture (another person's) does not
    other = pipe.G_bg.ground_truth(pipe.G_bg.mapping(pipe.sample_z(3, seed=8))).texture
    c2 = pipe.compose(z, make_generator(2), texture=other)
    assert (c2.image - truth.image).abs().mean() > 5e-3


# -- switches ------------------------------------------------------------------------------------------------------
def test_rotation_follows_requested_angles(pipe):
    z = pipe.sample_z(6, seed=11)
    c = pipe.compose(z, make_generator(4))
    yaw, pitch = sample_pose_targets(6, pipe.config.yaw_range_deg, pipe.config.pitch_range_deg, make_generator(4))
    torch.testing.assert_close(c.yaw, yaw); torch.testing.assert_close(c.pitch, pitch)
    assert float(yaw.abs().max()) <= math.radians(45) and float(pitch.abs().max()) <= math.radians(15)
    assert float(yaw.std()) > math.radians(5)                        # targets actually vary
    ang = pipe.G_bg.pose_of(c.ws_bg)                                # the decoded pose of the rotated latents
    torch.testing.assert_close(ang[:, 1], yaw, atol=1e-4, rtol=0)
    torch.testing.assert_close(ang[:, 0], pitch, atol=1e-4, rtol=0)
    torch.testing.assert_close(c.params.angle, ang)                  # the oracle fit sees the rotated face
    # the rotation keeps everything but the pose: roll and the other W+ rows are unchanged
    w = pipe.G_bg.mapping(z)
    torch.testing.assert_close(pipe.G_bg.pose_of(w)[:, 2], ang[:, 2], atol=1e-4, rtol=0)
    a, b = pipe.G_bg.rows["pose"]
    assert torch.equal(torch.cat([c.ws_bg[:, :a], c.ws_bg[:, b:]], 1), torch.cat([w[:, :a], w[:, b:]], 1))
    src = pipe.compose(z, make_generator(4), with_source=True)
    torch.testing.assert_close(src.source, pipe.G_bg.ground_truth(w).image)       # the unrotated I_bg
    assert torch.equal(src.image, c.image) and c.source is None
    off = pipe.ablated(rotate=False).compose(z, make_generator(4), with_source=True)
    assert torch.equal(off.ws_bg, w) and off.yaw is None and off.source is None


def test_custom_rig_callable_is_used(pipe):
    calls = []
    def rig(ws, yaw, pitch):
        calls.append((yaw.clone(), pitch.clone()))
        return pipe.G_bg.with_pose(ws, yaw=yaw, pitch=pitch)
    p = TexturePipeline(pipe.config, G_bg=pipe.G_bg, rig=rig)
    c = p.compose(pipe.sample_z(2, seed=1), make_generator(9))
    assert len(calls) == 1 and torch.equal(calls[0][0], c.yaw)
    class Obj:                                                       # StyleRig-like object with `.rotate`
        def rotate(self, ws, yaw, pitch): return pipe.G_bg.with_pose(ws, yaw=-yaw, pitch=pitch)
    c2 = TexturePipeline(pipe.config, G_bg=pipe.G_bg, rig=Obj()).compose(pipe.sample_z(2, seed=1), make_generator(9))
    torch.testing.assert_close(c2.params.angle[:, 1], -c2.yaw, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="rig"):
        rig_rotate(42, c.ws_bg, c.yaw, c.pitch)


def test_relight_off_gives_unit_shading(pipe):
    z = pipe.sample_z(2, seed=5)
    on, off = pipe.compose(z, make_generator(1)), pipe.ablated(relight=False).compose(z, make_generator(1))
    assert torch.equal(off.shading, off.coverage.expand(-1, 3, -1, -1))       # 1 inside, 0 outside
    torch.testing.assert_close(off.face, off.albedo.clamp(0, 1))
    torch.testing.assert_close(on.albedo, off.albedo)                            # same texture and geometry
    inside = on.coverage.expand(-1, 3, -1, -1) > 0
    assert (on.shading[inside] - 1).abs().mean() > 0.05                          # real lighting is not flat


def test_two_step_mask_vs_3dmm_only():
    G = SyntheticStyleGenerator(32)
    cfg = PipelineConfig(img_resolution=32, tex_resolution=32)
    noisy = TexturePipeline(cfg, G_bg=G, fitter=NoisyOracleFitter(G, angle_deg=5, trans=0.08, seed=1))
    z = noisy.sample_z(3, seed=2)
    c2 = noisy.compose(z, make_generator(0))
    true_mask = G.ground_truth(c2.ws_bg).mask
    torch.testing.assert_close(c2.mask, true_mask * c2.coverage)
    noisy.fitter.rng.manual_seed(1)
    c2 = noisy.compose(z, make_generator(0))
    noisy.fitter.rng.manual_seed(1)
    c1 = noisy.ablated(two_step=False).compose(z, make_generator(0))
    assert torch.equal(c1.mask, c1.coverage) and torch.equal(c1.coverage, c2.coverage)
    assert (c1.mask != c2.mask).any()                       # the misaligned fit spills beyond the true face region
    # with the exact oracle both masks coincide
    exact = TexturePipeline(cfg, G_bg=G)
    a, b = exact.compose(z, make_generator(0)), exact.ablated(two_step=False).compose(z, make_generator(0))
    assert torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="ablated"):
        exact.ablated(img_resolution=64)
    view = exact.ablated(relight=False)                      # a view: same networks, own registry
    assert view.G_T is exact.G_T and view.D is exact.D and exact.config.relight
    view.G_T = torch.nn.Linear(1, 1)
    assert isinstance(exact.G_T, torch.nn.Module) and not isinstance(exact.G_T, torch.nn.Linear)


def test_image_fitter_path_and_crop_transform(pipe):
    """A generic `images -> FitResult` fitter: fed the background image; an identity crop transform goes through
    the warp path and must give the same composite as no transform."""
    seen = []
    def fitter(images):
        seen.append(images)
        ws = seen_ws[-1]
        t = pipe.G_bg.ground_truth(ws)
        return FitResult(params=t.params, mask=t.mask, landmarks=t.landmarks, transform=eye.expand(len(ws), 2, 3).clone(),
                         image_size=32)
    eye = torch.tensor([[1., 0., 0.], [0., 1., 0.]])
    seen_ws = []
    p = TexturePipeline(PipelineConfig(**{**pipe.config.to_dict(), "rotate": False}), G_bg=pipe.G_bg, fitter=fitter)
    z = pipe.sample_z(2, seed=4)
    seen_ws.append(pipe.G_bg.mapping(z))
    c = p.compose(z, make_generator(0))
    ref = pipe.ablated(rotate=False).compose(z, make_generator(0))
    torch.testing.assert_close(seen[0], ref.background)             # the fitter got Î_bg in [0,1]
    torch.testing.assert_close(c.image, ref.image, atol=1e-5, rtol=0)
    torch.testing.assert_close(c.mask, ref.mask, atol=1e-5, rtol=0)
    bad = TexturePipeline(p.config, G_bg=pipe.G_bg, fitter=lambda images: "not a fit")
    with pytest.raises(ValueError, match="FitResult"):
        bad.compose(z)


# -- losses and gradients ------------------------------------------------------------------------------------------
def _grad_norm(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_train_mode_keeps_frozen_networks_in_eval(pipe):
    was = pipe.training
    pipe.train()
    assert pipe.G_T.training and pipe.D.training
    assert not any(m.training for m in pipe.G_bg.modules())             # G_bg's w_avg must not drift during training
    w = [b.clone() for b in pipe.G_bg.buffers()]
    with torch.no_grad(): pipe.compose(pipe.sample_z(2, seed=3), make_generator(0))
    assert all(torch.equal(a, b) for a, b in zip(w, pipe.G_bg.buffers()))
    pipe.eval()
    assert not pipe.G_T.training and not pipe.D.training
    pipe.train(was)


def test_generator_loss_reaches_only_G_T(pipe):
    pipe.zero_grad(set_to_none=True)
    z = pipe.sample_z(4, seed=1)
    loss, stats = pipe.generator_loss(z, make_generator(0))
    assert loss.ndim == 0 and math.isfinite(stats["loss_g"])
    # stats stay detached 0-d tensors on the pipeline's device (no host sync per training step)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad and v.device == loss.device
               for v in stats.values())
    assert float(stats["loss_g"]) == float(loss.detach())
    loss.backward()
    assert _grad_norm(pipe.G_T.mapping.parameters()) > 0 and _grad_norm(pipe.G_T.synthesis.parameters()) > 0
    assert all(p.grad is None for p in pipe.D.parameters())
    assert all(p.grad is None for p in pipe.G_bg.parameters()) and all(not b.requires_grad for b in pipe.G_bg.buffers())
    assert all(p.requires_grad for p in pipe.D.parameters())            # flags restored
    # the value is the non-saturating loss of D's logits on the composite
    with torch.no_grad():
        c = pipe.compose(z, make_generator(0))
        ref = torch.nn.functional.softplus(-pipe.D(c.image * 2 - 1)).mean()
    torch.testing.assert_close(loss.detach(), ref, atol=1e-5, rtol=0)
    pipe.zero_grad(set_to_none=True)


def test_d_requires_grad_restored_after_error(pipe):
    with pytest.raises(ValueError, match="z"):
        pipe.generator_loss(torch.zeros(2, 5))
    assert all(p.requires_grad for p in pipe.D.parameters())


def test_discriminator_loss_reaches_only_D(pipe):
    pipe.zero_grad(set_to_none=True)
    z, real = pipe.sample_z(4, seed=1), pipe.real_images(4, seed=99)
    loss, stats = pipe.discriminator_loss(z, real, r1=True, generator=make_generator(0))
    loss.backward()
    assert _grad_norm(pipe.D.parameters()) > 0
    assert all(p.grad is None for p in pipe.G_T.parameters())
    assert 0 <= stats["d_acc"] <= 1
    with torch.no_grad():
        fake = pipe.compose(z, make_generator(0)).image
        F = torch.nn.functional
        ref = F.softplus(pipe.D(fake * 2 - 1)).mean() + F.softplus(-pipe.D(real * 2 - 1)).mean()
    torch.testing.assert_close(stats["loss_d_fake"] + stats["loss_d_real"], ref, atol=1e-5, rtol=0)
    pipe.zero_grad(set_to_none=True)


def test_r1_matches_independent_autograd(pipe):
    z, real = pipe.sample_z(4, seed=1), pipe.real_images(4, seed=99)
    x = image_to_gan(real)
    g = torch.func.grad(lambda x: pipe.D(x).sum())(x)                 # functional autograd, separate code path
    pen = g.square().sum(dim=[1, 2, 3])
    _, pen_fn = r1_penalty(pipe.D, x)
    torch.testing.assert_close(pen_fn.detach(), pen, rtol=1e-4, atol=1e-7)
    l0, s0 = pipe.discriminator_loss(z, real, r1=False, generator=make_generator(0))
    l1, s1 = pipe.discriminator_loss(z, real, r1=True, generator=make_generator(0))
    c = pipe.config
    expected = s0["loss_d"] + float(pen.detach().mean()) * c.r1_gamma / 2 * c.r1_every
    assert abs(s1["loss_d"] - expected) < 1e-4 * max(1, abs(expected))
    assert float(pen.detach().mean()) > 0
    # r1_gamma = 0 switches the term off; r1_every scales it
    p0 = TexturePipeline(PipelineConfig(**{**c.to_dict(), "r1_gamma": 0.0}), G_bg=pipe.G_bg)
    p0.load_state_dict(pipe.state_dict())
    l2, s2 = p0.discriminator_loss(z, real, r1=True, generator=make_generator(0))
    assert abs(s2["loss_d"] - s0["loss_d"]) < 1e-5
    # the R1 term has a gradient wrt D's weights (second-order backprop works)
    pipe.zero_grad(set_to_none=True)
    _, p = r1_penalty(pipe.D, x)
    p.mean().backward()
    assert _grad_norm(pipe.D.parameters()) > 0
    pipe.zero_grad(set_to_none=True)


def test_forward_dispatch_and_bad_input(pipe):
    z, real = pipe.sample_z(2, seed=1), pipe.real_images(2, seed=2)
    lg, _ = pipe(z, phase="G", generator=make_generator(0))
    lg2, _ = pipe.generator_loss(z, make_generator(0))
    torch.testing.assert_close(lg, lg2)
    assert isinstance(pipe(z, phase="compose"), Composite)
    with pytest.raises(ValueError, match="real"): pipe(z, phase="D")
    with pytest.raises(ValueError, match="phase"): pipe(z, phase="E")
    with pytest.raises(ValueError, match="real"): pipe.discriminator_loss(z, real[:, :, :16, :16])
    with pytest.raises(ValueError, match="z"): pipe.compose(torch.zeros(2, pipe.z_dim + 1))
    with pytest.raises(ValueError, match="texture"): pipe.compose(z, texture=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="n"): pipe.sample_z(0)


# -- determinism, optimisers, transfer learning --------------------------------------------------------------------
def test_determinism():
    cfg = PipelineConfig(img_resolution=32, tex_resolution=32, seed=3)
    torch.manual_seed(0); before = torch.rand(1)
    torch.manual_seed(0)
    a = TexturePipeline(cfg)
    after = torch.rand(1)
    assert torch.equal(before, after)                                   # construction leaves the global RNG alone
    b = TexturePipeline(cfg)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    c = TexturePipeline(PipelineConfig(img_resolution=32, tex_resolution=32, seed=4))
    assert not torch.equal(a.G_T.mapping.fc0.weight, c.G_T.mapping.fc0.weight)
    assert torch.equal(a.sample_z(3, seed=5), b.sample_z(3, seed=5))
    ca, cb = a.compose(a.sample_z(3, seed=5), make_generator(6)), b.compose(b.sample_z(3, seed=5), make_generator(6))
    assert torch.equal(ca.image, cb.image) and torch.equal(ca.texture, cb.texture)
    cc = a.compose(a.sample_z(3, seed=5), make_generator(7))
    assert not torch.equal(ca.yaw, cc.yaw)


def test_make_optimizers(pipe):
    og, od = make_optimizers(pipe)
    c = pipe.config
    k = c.r1_every / (c.r1_every + 1)
    assert og.param_groups[0]["lr"] == c.lr_g and og.param_groups[0]["betas"] == c.betas
    assert math.isclose(od.param_groups[0]["lr"], c.lr_d * k)
    assert math.isclose(od.param_groups[0]["betas"][1], c.betas[1] ** k)
    assert {id(p) for p in og.param_groups[0]["params"]} == {id(p) for p in pipe.G_T.parameters()}
    assert {id(p) for p in od.param_groups[0]["params"]} == {id(p) for p in pipe.D.parameters()}


def test_transfer_learning_from_checkpoint(tmp_path):
    from facetex.stylegan2 import Discriminator, Generator, save_checkpoint
    torch.manual_seed(0)
    G = Generator(z_dim=32, w_dim=32, resolution=16, channel_base=1024, channel_max=16, mapping_layers=2)
    D = Discriminator(16, channel_base=1024, channel_max=16)
    path = save_checkpoint(tmp_path / "src.safetensors", G=G, D=D)
    p = TexturePipeline(PipelineConfig(img_resolution=32, tex_resolution=32, pretrained=str(path)))
    assert p.z_dim == 32 and p.G_bg.z_dim == 32 and p.G_T.img_resolution == 32 and p.D.img_resolution == 32
    assert torch.equal(p.G_T.mapping.fc1.weight, G.mapping.fc1.weight)                  # mapping copied
    assert torch.equal(p.G_T.synthesis.b8.conv1.weight, G.synthesis.b8.conv1.weight)    # shared blocks copied
    assert torch.equal(p.G_T.synthesis.b32.conv1.weight, G.synthesis.b16.conv1.weight)  # new top block repeats
    assert torch.equal(p.D.b4.fc.weight, D.b4.fc.weight)
    assert p.transfer_report["copied"] and p.transfer_report_D["copied"]
    c = p.compose(p.sample_z(2, seed=0), make_generator(0))
    assert c.texture.shape == (2, 3, 32, 32) and c.image.shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError):
        TexturePipeline(PipelineConfig(img_resolution=32, tex_resolution=32, pretrained=str(tmp_path / "missing.pkl")))


def test_pretrained_background_with_image_fitter(tmp_path, pipe):
    """background='pretrained': the checkpoint's generator is the frozen G_bg; a generic image fitter gets its images."""
    from facetex.stylegan2 import Generator, save_checkpoint
    torch.manual_seed(1)
    G = Generator(z_dim=32, w_dim=32, resolution=32, channel_base=512, channel_max=16, mapping_layers=2)
    path = save_checkpoint(tmp_path / "bg", G=G)
    synth = SyntheticStyleGenerator(32)
    got = []
    def fitter(images):                         # any image fitter; here the truth of a synthetic face, for geometry
        got.append(images)
        t = synth.ground_truth(synth.sample_ws(images.shape[0], seed=0))
        return FitResult(params=t.params, mask=t.mask, landmarks=t.landmarks, image_size=32)
    cfg = PipelineConfig(img_resolution=32, tex_resolution=32, pretrained=str(path), background="pretrained", rotate=False)
    p = TexturePipeline(cfg, fitter=fitter, model=synth.model, camera=synth.camera)
    assert isinstance(p.G_bg, Generator) and not any(q.requires_grad for q in p.G_bg.parameters())
    z = p.sample_z(2, seed=0)
    c = p.compose(z)
    with torch.no_grad():
        bg = ((G.synthesis(G.mapping(z), noise_mode="const") + 1) / 2).clamp(0, 1)
        bg2 = ((p.G_bg.synthesis(p.G_bg.mapping(z), noise_mode="const") + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(bg2, bg)                                   # G_bg is the checkpoint's generator
    assert torch.equal(got[0], c.background)
    out = (c.mask == 0).expand(-1, 3, -1, -1)
    assert torch.equal(c.image[out], c.background[out]) and c.mask.sum() > 0
    with pytest.raises(ValueError, match="rig"):
        TexturePipeline(PipelineConfig(**{**cfg.to_dict(), "rotate": True}), fitter=fitter)
    loss, _ = p.generator_loss(z)
    loss.backward()
    assert _grad_norm(p.G_T.parameters()) > 0 and all(q.grad is None for q in p.G_bg.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_compose_on_gpu_with_device_generator(pipe):
    import copy
    p = copy.deepcopy(pipe).cuda()
    z = p.sample_z(2, seed=0)
    c = p.compose(z, make_generator(0, device="cuda"))
    assert c.image.is_cuda and c.texture.is_cuda
    loss, _ = p.generator_loss(z); loss.backward()
