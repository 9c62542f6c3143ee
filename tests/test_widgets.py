"""facetex.widgets: the pure render methods of the relight/rotate demos, their widget wiring (without a front end),
the plotly mesh viewer, and bad arguments."""
import io
import math

import numpy as np
import pytest
import torch

from facetex.core import gan_to_image
from facetex.lighting import sh_preset
from facetex.morphable import embedded_model, render as render_face
from facetex.synthetic import SyntheticStyleGenerator
from facetex.uv import sample_uv_texture
from facetex.widgets import RelightDemo, RotateDemo, light_gamma, mesh_figure, temperature_rgb, to_png

NOSE_TIP = 30   # iBUG 68 index of the nose tip


@pytest.fixture(scope="module")
def model():
    return embedded_model(32)


@pytest.fixture(scope="module")
def G(model):
    return SyntheticStyleGenerator(img_resolution=32, model=model, seed=1)


def _halves(img, mask):
    "Mean luminance of the face pixels in the image-left and image-right halves."
    W = img.shape[-1]; m = mask[0, 0] > 0; lum = img[0].mean(0)
    left, right = m.clone(), m.clone(); left[:, W // 2:] = False; right[:, :W // 2] = False
    return float(lum[left].mean()), float(lum[right].mean())


@pytest.mark.parametrize("textured", [False, True])
def test_light_from_the_left_brightens_the_image_left(model, textured):
    # a constant grey texture removes any left/right asymmetry of the albedo: brightness is the light alone
    tex = None if textured else torch.full((1, 3, 8, 8), 0.6)
    demo = RelightDemo(model, texture=tex, image_size=96)
    mask = demo.mask()
    for az in (-80.0, -45.0):
        left, right = _halves(demo.panels(azimuth=az, elevation=0.0)["shaded"], mask)
        assert left > right + 0.03, (az, left, right)
        left, right = _halves(demo.panels(azimuth=-az, elevation=0.0)["shaded"], mask)
        assert right > left + 0.03, (-az, left, right)
    top, bottom = demo.panels(azimuth=0.0, elevation=70.0)["shading"], demo.panels(azimuth=0.0, elevation=-70.0)["shading"]
    m = mask[0, 0] > 0; H = m.shape[0]
    upper = m.clone(); upper[H // 2:] = False; lower = m & ~upper
    assert float(top[0].mean(0)[upper].mean()) > float(top[0].mean(0)[lower].mean())
    assert float(bottom[0].mean(0)[lower].mean()) > float(bottom[0].mean(0)[upper].mean())


def test_relight_passes_match_the_renderer(model):
    demo = RelightDemo(model, image_size=64, background=0.0)
    v = dict(azimuth=20.0, elevation=-10.0, intensity=0.8, ambient=0.3, temperature=4000.0)
    out = render_face(model, demo.params.replace(gamma=light_gamma(**v)), demo.camera, texture=demo.texture)
    P = demo.panels(**v)
    torch.testing.assert_close(P["shaded"], out.image.clamp(0, 1))
    torch.testing.assert_close(P["albedo"], out.albedo.clamp(0, 1))
    # warm light: red irradiance above blue everywhere on the face
    m = out.mask[0, 0] > 0
    assert bool((out.shading[0, 0][m] > out.shading[0, 2][m]).all())
    torch.testing.assert_close(light_gamma(preset="top", intensity=0.6, ambient=0.45), sh_preset("top"))


def test_temperature_is_planck_ratio():
    # independent check: Wien's approximation is accurate for these λT, so the R/B ratio follows it
    hc_k = 6.62607015e-34 * 2.99792458e8 / 1.380649e-23
    wien = lambda lam, T: lam ** -5 * math.exp(-hc_k / (lam * T))
    T = 3000.0
    r = temperature_rgb(T)
    expect = (wien(610e-9, T) / wien(610e-9, 6500)) / (wien(465e-9, T) / wien(465e-9, 6500))
    assert abs(float(r[0] / r[2]) / expect - 1) < 0.02


def test_yaw_moves_the_nose_tip_right(model):
    demo = RotateDemo(model, generator=None, image_size=128)
    x0 = demo.landmarks(yaw=0.0)[0, NOSE_TIP]
    prev = float(x0[0])
    for t in (10.0, 25.0, 45.0):                     # camera notebook: yaw > 0 turns the nose towards +x (image right)
        x = float(demo.landmarks(yaw=t)[0, NOSE_TIP, 0])
        assert x > prev + 1, (t, x, prev); prev = x
        assert float(demo.landmarks(yaw=-t)[0, NOSE_TIP, 0]) < float(x0[0]) - 1
    # and the rendered face is exactly the rotated 3DMM (landmark pixel is on the face)
    img = demo.face(yaw=30.0)
    c, r = demo.landmarks(yaw=30.0)[0, NOSE_TIP].long().tolist()
    assert float(img[0, :, r, c].sum()) < 2.9       # not the white background


def test_with_pose_panel_is_exact(G):
    ws = G.sample_ws(1, seed=5)
    demo = RotateDemo(generator=G, ws=ws, image_size=64)
    assert demo.method == "exact"
    for yaw, pitch in ((20.0, -10.0), (-50.0, 15.0)):
        want = gan_to_image(G.synthesis(G.with_pose(ws, yaw=math.radians(yaw), pitch=math.radians(pitch))))
        assert torch.equal(demo.generated(yaw=yaw, pitch=pitch), want)
        torch.testing.assert_close(G.pose_of(demo.rotated_ws(yaw=yaw, pitch=pitch))[0, :2],
                                   torch.tensor([math.radians(pitch), math.radians(yaw)]), atol=1e-4, rtol=0)
    # the default 3DMM face is the generator's own face (its decoded identity), centred
    truth = G.ground_truth(ws)
    torch.testing.assert_close(demo.params.id, truth.params.id)
    assert torch.equal(demo.params.trans, torch.zeros(1, 3))


def test_rig_panel_uses_rig_rotate(G):
    from facetex.stylerig import DFR, RigNet, StyleRig
    torch.manual_seed(0)
    rig = StyleRig(DFR(G.num_ws, G.w_dim, G.model.sizes), RigNet(G.num_ws, G.w_dim, G.model.sizes)).eval()
    ws = G.sample_ws(1, seed=2)
    demo = RotateDemo(generator=G, rig=rig, ws=ws, image_size=64)
    assert demo.method == "rig"
    with torch.no_grad(): want = gan_to_image(G.synthesis(rig.rotate(ws, math.radians(15), math.radians(5)))).clamp(0, 1)
    torch.testing.assert_close(demo.generated(yaw=15.0, pitch=5.0), want)


def test_stylegan2_panel_has_fixed_noise(G):
    from facetex.stylegan2 import Generator
    from facetex.stylerig import DFR, RigNet, StyleRig
    torch.manual_seed(0)
    S = Generator(z_dim=16, w_dim=16, resolution=16, channel_base=256, channel_max=16, mapping_layers=1).eval()
    for n, p in S.named_parameters():
        if n.endswith("noise_strength"): p.data.fill_(1.0)           # untrained StyleGAN2 starts with the noise off
    rig = StyleRig(DFR(S.num_ws, S.w_dim, G.model.sizes), RigNet(S.num_ws, S.w_dim, G.model.sizes)).eval()
    demo = RotateDemo(model=G.model, generator=S, rig=rig, image_size=32)
    a, b = demo.generated(yaw=10.0), demo.generated(yaw=10.0)
    assert torch.equal(a, b)                                           # no per-call noise: sliders do not flicker
    with torch.no_grad(): want = gan_to_image(S.synthesis(rig.rotate(demo.ws, math.radians(10), 0.0), noise_mode="const"))
    torch.testing.assert_close(a, want.clamp(0, 1))


def test_slider_callback_updates_image_bytes(model, G):
    demo = RelightDemo(model, image_size=64)
    w = demo.widget
    import ipywidgets
    assert isinstance(w, ipywidgets.VBox)
    first = demo.image.value
    assert first == demo.png()                      # built at the default values
    demo.controls["azimuth"].value = 80.0           # what a slider drag does: observe → update
    assert demo.image.value != first and demo.image.value == demo.png(azimuth=80.0)
    demo.controls["preset"].value = "top"
    assert demo.image.value == to_png(demo.render(azimuth=80.0, preset="top"))
    assert demo.values["preset"] == "top" and "preset='top'" in repr(demo)
    rot = RotateDemo(model, generator=G, image_size=64)
    rot.widget
    before = rot.image.value
    rot.controls["yaw"].value = -20.0
    assert rot.image.value != before and rot.image.value == rot.png(yaw=-20.0)
    from PIL import Image
    im = np.asarray(Image.open(io.BytesIO(rot.image.value)))
    assert im.shape[0] == 64 and im.shape[1] == 64 + 2 + 64       # two panels side by side


def test_mesh_figure_colours_and_geometry(model):
    p = model.sample(1, generator=0).replace(angle=torch.tensor([[0.1, 0.3, 0.0]]))
    tex = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fig = mesh_figure(model, p, tex)
    mesh = fig.data[0]
    v = model.vertices(p)[0]
    np.testing.assert_allclose(np.stack([mesh.x, mesh.y, mesh.z], 1), v.detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.stack([mesh.i, mesh.j, mesh.k], 1), model.faces.numpy())
    rgb = np.array([[int(c) for c in s[4:-1].split(",")] for s in mesh.vertexcolor])
    want = sample_uv_texture(tex, model.uv)[0].numpy() * 255
    assert np.abs(rgb - want).max() <= 1.0
    # without a texture: the model albedo
    rgb2 = np.array([[int(c) for c in s[4:-1].split(",")] for s in mesh_figure(model, p).data[0].vertexcolor])
    assert np.abs(rgb2 - model.albedo(p)[0].numpy() * 255).max() <= 1.0


def test_bad_arguments(model, G):
    demo = RelightDemo(model, image_size=48)
    for kw, name in ((dict(azimuth=200.0), "`azimuth`"), (dict(elevation=-95.0), "`elevation`"),
                     (dict(intensity=-0.1), "`intensity`"), (dict(temperature=500.0), "`temperature`"),
                     (dict(preset="disco"), "`preset`"), (dict(azimuth=float("nan")), "`azimuth`"),
                     (dict(brightness=1.0), "unknown slider")):
        with pytest.raises(ValueError, match=name): demo.render(**kw)
    with pytest.raises(ValueError, match="unknown slider"): demo.set(yaw=3.0)
    with pytest.raises(ValueError, match="`model`"): RelightDemo(model="bfm")
    with pytest.raises(ValueError, match="`params`"): RelightDemo(model, params=model.zero_params(2))
    with pytest.raises(ValueError, match="`texture`"): RelightDemo(model, texture=torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="`image_size`"): RelightDemo(model, image_size=0)
    rot = RotateDemo(model, generator=G, image_size=48)
    with pytest.raises(ValueError, match="`yaw`"): rot.render(yaw=70.0)
    with pytest.raises(ValueError, match="`pitch`"): rot.render(pitch=-30.0)
    with pytest.raises(ValueError, match="`method`"): RotateDemo(generator=G, method="magic")
    with pytest.raises(ValueError, match="rig"): RotateDemo(generator=G, method="rig")
    with pytest.raises(ValueError, match="`rig`"): RotateDemo(generator=None, rig=object())
    with pytest.raises(ValueError, match="`generator`"): RotateDemo(generator="stylegan")
    with pytest.raises(ValueError, match="`ws`"): RotateDemo(generator=G, ws=torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="no generator"): RotateDemo(model, generator=None).generated()
    with pytest.raises(ValueError, match="`texture`"): mesh_figure(model, texture=torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="`params`"): mesh_figure(model, params=torch.zeros(1, 257))
