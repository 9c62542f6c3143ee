"""facetex.rnet: Deep3DFaceRecon checkpoint layout, alignment against a NumPy re-derivation, fitter edge cases."""
import numpy as np
import pytest
import torch

from facetex.camera import Camera
from facetex.fitting import apply_affine
from facetex.rnet import (LM3D_STD, ReconNet, ResNet, RNetFitter, RNetLoss, align_faces, align_transform,
                          load_deep3d_checkpoint, reframe_params, train_rnet)

torch.set_num_threads(1)


def test_torchvision_state_dict_layout():
    sd = ResNet("resnet50", num_classes=1000).state_dict()
    assert len(sd) == 320  # torchvision resnet50: 161 parameters + 159 BN buffers
    block = {k[len("layer1.0."):] for k in sd if k.startswith("layer1.0.")}
    bn = lambda n: {f"{n}.weight", f"{n}.bias", f"{n}.running_mean", f"{n}.running_var", f"{n}.num_batches_tracked"}
    want = {"conv1.weight", "conv2.weight", "conv3.weight", "downsample.0.weight"} | bn("bn1") | bn("bn2") | bn("bn3") | bn("downsample.1")
    assert block == want
    assert [k for k in sd if k.startswith("layer4.") and k.endswith("conv2.weight")] == \
        ["layer4.0.conv2.weight", "layer4.1.conv2.weight", "layer4.2.conv2.weight"]
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)   # v1.5: stride in the 3×3 conv
    assert ResNet("resnet50").layer2[0].conv2.stride == (2, 2) and ResNet("resnet50").layer2[0].conv1.stride == (1, 1)


def test_recon_net_heads():
    net = ReconNet("resnet18", width=8)
    shapes = [tuple(net.state_dict()[f"final_layers.{i}.weight"].shape) for i in range(7)]
    assert shapes == [(n, 64, 1, 1) for n in (80, 64, 80, 3, 27, 2, 1)]
    with torch.no_grad():
        for i, m in enumerate(net.final_layers): m.bias.fill_(i)
        v = net.eval()(torch.rand(2, 3, 64, 64))
    p = net.predict(torch.rand(2, 3, 64, 64))
    assert v.shape == (2, 257) and torch.all(v[:, :80] == 0) and torch.all(v[:, 224:227] == 3)
    assert torch.all(p.gamma == 4) and torch.all(p.trans[:, :2] == 5) and torch.all(p.trans[:, 2] == 6)
    with pytest.raises(ValueError, match="`x` must have shape"):
        net(torch.rand(2, 1, 64, 64))


def test_checkpoint_roundtrip_and_errors(tmp_path):
    src = ReconNet("resnet34", width=8)
    with torch.no_grad():
        for q in src.parameters(): q.normal_(0, 0.05)
    torch.save({"net_recon": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 20},
               tmp_path / "epoch_20.pth")
    net = load_deep3d_checkpoint(tmp_path / "epoch_20.pth")
    assert net.arch == "resnet34" and net.backbone.width == 8 and not net.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(): assert torch.allclose(net(x), src.eval()(x), atol=1e-6)

    sd = src.state_dict()
    bad = dict(sd); bad["final_layers.0.weight"] = torch.zeros(80, 32, 1, 1)
    torch.save({"net_recon": bad}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="final_layers.0.weight"):
        load_deep3d_checkpoint(tmp_path / "shape.pth")
    extra = dict(sd); extra["backbone.fc.weight"] = torch.zeros(257, 256)
    torch.save({"net_recon": extra}, tmp_path / "fc.pth")
    with pytest.raises(ValueError, match="use_last_fc"):
        load_deep3d_checkpoint(tmp_path / "fc.pth")
    torch.save({"net_recon": {"conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="backbone.conv1.weight"):
        load_deep3d_checkpoint(tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a dict"):
        load_deep3d_checkpoint(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="Deep3DFaceRecon"):
        load_deep3d_checkpoint(tmp_path / "nope.pth")


def _deep3d_reference(lm5, H, W, target=224., rescale=102.):
    """Deep3DFaceRecon's align_img arithmetic, re-derived in NumPy: POS least squares, then resize + crop corner."""
    x = LM3D_STD.double().numpy()
    xp = np.stack([lm5[:, 0], H - 1 - lm5[:, 1]], 1)
    A = np.zeros((10, 8)); A[0::2, :3] = x; A[0::2, 3] = 1; A[1::2, 4:7] = x; A[1::2, 7] = 1
    k = np.linalg.lstsq(A, xp.reshape(-1), rcond=None)[0]
    s = rescale / ((np.linalg.norm(k[:3]) + np.linalg.norm(k[4:7])) / 2)
    t = np.array([k[3], k[7]])
    w, h = int(W * s), int(H * s)
    left = int(w / 2 - target / 2 + float((t[0] - W / 2) * s))
    up = int(h / 2 - target / 2 + float((H / 2 - t[1]) * s))
    # crop pixel q ↔ resized pixel q + (left, up) ↔ original pixel (q + corner) * (W/w, H/h)
    return np.array([[W / w, 0, left * W / w], [0, H / h, up * H / h]])


def test_align_transform_matches_numpy_rederivation():
    g = np.random.default_rng(0)
    for H, W in ((300, 400), (512, 512), (97, 131)):
        c = np.array([W / 2, H / 2]) + g.normal(0, 10, 2)
        sc = min(H, W) * g.uniform(0.2, 0.5)
        lm5 = c + sc * LM3D_STD[:, :2].numpy() * [1, -1] + g.normal(0, 2, (5, 2))
        M = align_transform(torch.tensor(lm5, dtype=torch.float32)[None], (H, W))[0].double().numpy()
        np.testing.assert_allclose(M, _deep3d_reference(lm5, H, W), rtol=1e-5, atol=1e-3)


def test_align_faces_is_shift_equivariant():
    yy, xx = torch.meshgrid(torch.arange(120.), torch.arange(100.), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(xx / 9), 0.5 + 0.4 * torch.cos(yy / 7), (xx + yy) / 220])[None]
    lm5 = torch.tensor([[[35., 50], [65, 50], [50, 65], [38, 82], [62, 82]]])
    pad = torch.zeros(1, 3, 150, 140); pad[:, :, 17:137, 23:123] = img
    a = align_faces(img, lm5, antialias=False)
    b = align_faces(pad, lm5 + torch.tensor([23., 17]), antialias=False)
    # Deep3DFaceRecon truncates the resized size and the crop corner to integers, which depend on the image size:
    # the two crops agree to a pixel in placement and closely in content
    corners = torch.tensor([[[0., 0], [224, 224]]])
    assert (apply_affine(b.transform, corners) - torch.tensor([23., 17]) - apply_affine(a.transform, corners)).abs().max() < 1.0
    inside = a.images.abs().sum(1) > 0
    assert (a.images - b.images).abs().sum(1)[inside].mean() < 0.05
    assert torch.allclose(apply_affine(b.transform, b.landmarks), lm5 + torch.tensor([23., 17]), atol=1e-3)
    with pytest.raises(ValueError, match="`images` must have shape"):
        align_faces(img[:, :1], lm5)
    with pytest.raises(ValueError, match="`lm` must have shape"):
        align_faces(img, lm5[0])


def test_reframe_identity_and_inverse():
    from facetex.morphable import embedded_model
    m = embedded_model(n=24)
    g = torch.Generator().manual_seed(1)
    p = m.sample(3, g).replace(trans=torch.randn(3, 3, generator=g) * 0.2)
    c1, c2 = Camera(), Camera().scaled(96)
    M = torch.tensor([[[0.5, 0, 3.], [0, 0.5, -2.]]]).repeat(3, 1, 1)
    back = torch.tensor([[[2., 0, -6.], [0, 2., 4.]]]).repeat(3, 1, 1)
    q = reframe_params(reframe_params(p, M, c1, c2), back, c2, c1)
    assert torch.allclose(q.trans, p.trans, atol=1e-4)


def test_fitter_checks_and_no_face():
    from facetex.morphable import embedded_model
    m = embedded_model(n=24)
    with pytest.raises(ValueError, match="sizes"):
        RNetFitter(ReconNet("resnet18", width=4, sizes=(10, 10, 10)), m)
    f = RNetFitter(ReconNet("resnet18", width=4), m, input_size=64)
    r = f.fit_photos(torch.full((2, 3, 80, 120), 0.5))
    assert r.ok.tolist() == [False, False] and r.transform.shape == (2, 2, 3)
    assert torch.allclose(r.transform[0], torch.tensor([[80 / 64, 0, 20.], [0, 80 / 64, 0]]))
    with pytest.raises(ValueError, match="landmarks68"):
        f.fit_photos(torch.rand(2, 3, 64, 64), torch.rand(2, 5, 2))
    with pytest.raises(ValueError, match="`images` must have shape"):
        f.fit(torch.rand(2, 3, 64, 48), torch.rand(2, 68, 2))


def test_train_rnet_arguments_and_a_falling_loss():
    from facetex.morphable import embedded_model, screen_vertices
    m = embedded_model(n=24)
    cam = Camera().scaled(32)
    g = torch.Generator().manual_seed(0)
    p = m.sample(8, g, scale=0.3).replace(trans=torch.randn(8, 3, generator=g) * torch.tensor([.2, .2, 0.]))
    with torch.no_grad(): lm = m.landmarks(screen_vertices(m, p, cam))[..., :2]
    # the image carries the translation as a bright dot: learnable in a few steps
    img = torch.zeros(8, 3, 32, 32)
    for b in range(8):
        c = lm[b].mean(0).round().long().clamp(1, 30); img[b, :, c[1] - 1:c[1] + 2, c[0] - 1:c[0] + 2] = 1
    data = [dict(images=img, lm68=lm)]
    net = ReconNet("resnet18", width=4)
    hist = train_rnet(net, data, RNetLoss(m, cam, photometric=False), steps=30, lr=3e-3, progress=False)
    assert len(hist["total"]) == 30 and np.mean(hist["total"][-5:]) < 0.5 * hist["total"][0]
    h0 = train_rnet(net, data, RNetLoss(m, cam), steps=0, progress=False)
    assert set(h0) == {"seconds"}
    with pytest.raises(ValueError, match="steps"):
        train_rnet(net, data, RNetLoss(m, cam), steps=-1)
    with pytest.raises(ValueError, match="no batch"):
        train_rnet(net, [], RNetLoss(m, cam), steps=1, progress=False)
    with pytest.raises(ValueError, match="batch\\['lm68'\\]"):
        RNetLoss(m, cam)(p, dict(images=img, lm68=lm[:, :5]))
