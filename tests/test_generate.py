"""facetex.generate: Fig. 2 (left) inference, the OBJ/MTL/PNG and binary glTF exporters parsed back independently
(PIL decodes the PNGs; the .glb is read with struct/json here, not with facetex.generate.read_glb), determinism,
the oracle geometry against the synthetic ground truth, and bad input."""
import io
import json
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facetex.core import make_generator
from facetex.generate import TexturedMesh, generate, render_views, save_gltf, save_obj, default_background_generator
from facetex.morphable import FaceParams
from facetex.stylegan2 import Generator
from facetex.synthetic import SyntheticStyleGenerator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G_T():
    torch.manual_seed(0)
    return Generator(z_dim=32, w_dim=32, resolution=32, channel_base=256, channel_max=16, mapping_layers=2).eval()


@pytest.fixture(scope="module")
def meshes(G_T):
    return generate(G_T, n=3, seed=5)


def _random_mesh():
    "A small mesh with a random texture whose texels sit between 8-bit levels (so rounding is exercised)."
    g = make_generator(3)
    verts = torch.randn(6, 3, generator=g)
    faces = torch.tensor([[0, 1, 2], [2, 3, 4], [4, 5, 0], [1, 3, 5]])
    uv = torch.rand(6, 2, generator=g)
    normals = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=-1)
    tex = torch.rand(3, 8, 8, generator=g)
    return TexturedMesh(verts, faces, uv, tex, normals)


# ---------------------------------------------------------------------------------------------- generate
def test_determinism_and_batching(G_T, meshes):
    again = generate(G_T, n=3, seed=5, batch_size=2)
    for a, b in zip(meshes, again):
        torch.testing.assert_close(a.verts, b.verts, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.texture, b.texture, atol=1e-5, rtol=0)
    other = generate(G_T, n=1, seed=6)[0]
    assert not torch.allclose(other.texture, meshes[0].texture)
    assert not torch.allclose(other.verts, meshes[0].verts)
    z = torch.randn(3, 32, generator=make_generator(5))
    explicit = generate(G_T, z=z)
    torch.testing.assert_close(explicit[2].verts, meshes[2].verts, atol=1e-6, rtol=0)


def test_oracle_geometry_is_ground_truth(G_T, meshes):
    G_bg = default_background_generator(G_T)
    z = torch.randn(3, 32, generator=make_generator(5))
    truth = G_bg.ground_truth(G_bg.mapping(z))
    gt_shape = G_bg.model.mean_shape + torch.einsum("vck,bk->bvc", G_bg.model.id_base, truth.params.id) \
        + torch.einsum("vck,bk->bvc", G_bg.model.exp_base, truth.params.exp)          # S = M + U_s p_s + U_e p_e
    torch.testing.assert_close(torch.stack([m.verts for m in meshes]), gt_shape, atol=1e-4, rtol=0)
    for m in meshes:
        torch.testing.assert_close(m.params.angle, torch.zeros(1, 3))
        assert m.faces.dtype == torch.int64 and m.texture.shape == (3, 32, 32)
        assert 0 <= float(m.texture.min()) and float(m.texture.max()) <= 1
    posed = generate(G_T, z=z[:1], keep_pose=True)[0]
    R = posed.params.angle
    assert float(R.abs().max()) > 0
    torch.testing.assert_close(posed.params.angle, truth.params.angle[:1], atol=1e-5, rtol=0)


def test_truncation_psi_zero_gives_mean_geometry(G_T):
    a, b = generate(G_T, n=2, seed=0, truncation_psi=0.0)
    torch.testing.assert_close(a.verts, b.verts, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.texture, b.texture, atol=1e-5, rtol=0)


def test_bad_input(G_T):
    with pytest.raises(ValueError, match="`z`"): generate(G_T, z=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="`n`"): generate(G_T, n=-1)
    with pytest.raises(ValueError, match="`G_T`"): generate(object())
    with pytest.raises(ValueError, match="`G_bg`"): generate(G_T, G_bg=SyntheticStyleGenerator(32, z_dim=16))
    with pytest.raises(ValueError, match="`batch_size`"): generate(G_T, batch_size=0)
    with pytest.raises(ValueError, match="`truncation_psi`"): generate(G_T, truncation_psi="1")
    with pytest.raises(ValueError, match="`model`"): generate(G_T, model="bfm")
    with pytest.raises(ValueError, match="`verts`"):
        TexturedMesh(torch.zeros(4, 2), torch.tensor([[0, 1, 2]]), torch.zeros(4, 2), torch.zeros(3, 4, 4), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="`faces`"):
        TexturedMesh(torch.zeros(4, 3), torch.tensor([[0, 1, 9]]), torch.zeros(4, 2), torch.zeros(3, 4, 4), torch.zeros(4, 3))
    m = _random_mesh()
    with pytest.raises(ValueError, match="`path`"): save_obj(m, "/tmp/x.stl")
    with pytest.raises(ValueError, match="`path`"): save_gltf(m, "/tmp/x.gltf")
    with pytest.raises(ValueError, match="`mesh`"): save_gltf("mesh", "/tmp/x.glb")
    with pytest.raises(ValueError, match="`lights"): render_views(m, lights=[torch.zeros(5)])
    with pytest.raises(ValueError, match="`image_size`"): render_views(m, image_size=0)
    with pytest.raises(ValueError, match="`yaws`"): render_views(m, yaws=["left"])
    np.testing.assert_array_equal(render_views(m, yaws=np.array([10.0]), image_size=32).numpy(),
                                  render_views(m, yaws=[10.0], image_size=32).numpy())


def test_render_views_rotation(meshes):
    v = render_views(meshes[0], yaws=(-30, 0, 30), lights=["front", "ambient"], image_size=48)
    assert v.shape == (2, 3, 3, 48, 48)
    # a mirror-symmetric light and mesh are not guaranteed, but the yaw-0 view's silhouette is centred and the ±30°
    # silhouettes shift in opposite directions
    cols = [(img.sum(0) < 2.999).float().sum(0) for img in v[1]]
    centre = [float((c * torch.arange(48)).sum() / c.sum()) for c in cols]
    assert abs(centre[1] - 23.5) < 3
    assert (centre[0] - centre[1]) * (centre[2] - centre[1]) < 0


# ---------------------------------------------------------------------------------------------- OBJ
def test_obj_round_trip(tmp_path):
    m = _random_mesh()
    p = save_obj(m, tmp_path / "sub" / "head.obj")
    lines = p.read_text().splitlines()
    v = np.array([l.split()[1:] for l in lines if l.startswith("v ")], float)
    vt = np.array([l.split()[1:] for l in lines if l.startswith("vt ")], float)
    vn = np.array([l.split()[1:] for l in lines if l.startswith("vn ")], float)
    f = [l.split()[1:] for l in lines if l.startswith("f ")]
    assert v.shape == (6, 3) and vt.shape == (6, 2) and vn.shape == (6, 3) and len(f) == 4
    np.testing.assert_allclose(v, m.verts.numpy(), atol=1e-6)
    np.testing.assert_allclose(vt[:, 0], m.uv[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(vt[:, 1], 1 - m.uv[:, 1].numpy(), atol=1e-6)       # OBJ's v is bottom-up
    idx = np.array([[[int(x) for x in c.split("/")] for c in face] for face in f])
    assert idx.min() == 1 and idx.max() == 6                                        # 1-based
    np.testing.assert_array_equal(idx[..., 0] - 1, m.faces.numpy())
    np.testing.assert_array_equal(idx[..., 1], idx[..., 0]); np.testing.assert_array_equal(idx[..., 2], idx[..., 0])
    mtllib = [l.split(maxsplit=1)[1] for l in lines if l.startswith("mtllib ")]
    assert mtllib == ["head.mtl"]
    mtl = (tmp_path / "sub" / "head.mtl").read_text().splitlines()
    usemtl = [l.split()[1] for l in lines if l.startswith("usemtl ")]
    assert f"newmtl {usemtl[0]}" in mtl
    tex_name = [l.split(maxsplit=1)[1] for l in mtl if l.startswith("map_Kd ")]
    assert tex_name == ["head.png"]
    img = np.asarray(Image.open(tmp_path / "sub" / tex_name[0]).convert("RGB")).astype(float) / 255
    assert img.shape == (8, 8, 3)
    assert np.abs(img - m.texture.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_obj_texture_orientation(tmp_path):
    "The texel a vertex's (u, v) points at in facetex is the pixel its OBJ (u, 1-v) points at in the saved PNG."
    m = _random_mesh()
    tex = torch.zeros(3, 4, 4); tex[0, 0, 3] = 1.0                      # red in the top-right texel (row 0, col 3)
    uv = m.uv.clone(); uv[0] = torch.tensor([0.875, 0.125])             # its centre in facetex UV
    m = TexturedMesh(m.verts, m.faces, uv, tex, m.normals)
    p = save_obj(m, tmp_path / "o.obj")
    vt = [l.split()[1:] for l in p.read_text().splitlines() if l.startswith("vt ")][0]
    u, v_obj = map(float, vt)
    img = np.asarray(Image.open(tmp_path / "o.png"))
    H, W, _ = img.shape
    row, col = int((1 - v_obj) * H), int(u * W)                         # OBJ v = 0 is the bottom row
    assert tuple(img[row, col]) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------- GLB
COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}
DTYPES = {5126: "<f4", 5125: "<u4"}


def _parse_glb(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data) and length % 4 == 0
    jlen, jtype = struct.unpack("<I4s", data[12:20])
    assert jtype == b"JSON" and jlen % 4 == 0
    doc = json.loads(data[20:20 + jlen].decode("utf-8"))
    off = 20 + jlen
    blen, btype = struct.unpack("<I4s", data[off:off + 8])
    assert btype == b"BIN\x00" and blen % 4 == 0 and off + 8 + blen == len(data)
    return doc, data[off + 8:off + 8 + blen]


def _accessor(doc, binary, i):
    a = doc["accessors"][i]
    bv = doc["bufferViews"][a["bufferView"]]
    n = a["count"] * COMPONENTS[a["type"]]
    start = bv["byteOffset"] + a.get("byteOffset", 0)
    assert start % 4 == 0 and start + n * 4 <= bv["byteOffset"] + bv["byteLength"]
    return np.frombuffer(binary, DTYPES[a["componentType"]], n, start).reshape(a["count"], -1)


def test_glb_structure(tmp_path, meshes):
    for m in (_random_mesh(), meshes[0]):
        p = save_gltf(m, tmp_path / "face.glb")
        doc, binary = _parse_glb(p)
        assert doc["asset"]["version"] == "2.0"
        assert doc["buffers"][0]["byteLength"] == len(binary)
        for bv in doc["bufferViews"]:
            assert bv["buffer"] == 0 and bv["byteOffset"] % 4 == 0 and bv["byteOffset"] + bv["byteLength"] <= len(binary)
        prim = doc["meshes"][0]["primitives"][0]
        assert prim.get("mode", 4) == 4
        att = prim["attributes"]
        pos, nrm, uv = (_accessor(doc, binary, att[k]) for k in ("POSITION", "NORMAL", "TEXCOORD_0"))
        ind = _accessor(doc, binary, prim["indices"])
        assert doc["accessors"][prim["indices"]]["componentType"] == 5125                     # uint32
        assert pos.shape == (m.n_verts, 3) and nrm.shape == (m.n_verts, 3) and uv.shape == (m.n_verts, 2)
        np.testing.assert_array_equal(pos, m.verts.numpy())
        np.testing.assert_allclose(uv, m.uv.numpy(), atol=0)                                    # glTF's UV origin is top-left too
        np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1, atol=1e-5)
        np.testing.assert_array_equal(ind.reshape(-1, 3), m.faces.numpy())
        pa = doc["accessors"][att["POSITION"]]
        np.testing.assert_allclose(pa["min"], pos.min(0), atol=0); np.testing.assert_allclose(pa["max"], pos.max(0), atol=0)
        # material → texture → image → bufferView → PNG that decodes to the texture
        mat = doc["materials"][prim["material"]]
        tex = doc["textures"][mat["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
        im = doc["images"][tex["source"]]
        assert im["mimeType"] == "image/png"
        bv = doc["bufferViews"][im["bufferView"]]
        png = binary[bv["byteOffset"]:bv["byteOffset"] + bv["byteLength"]]
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float) / 255
        assert np.abs(img - m.texture.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
