"""facetex.morphable: coefficient layout, shape formation, loaders on tiny files in the real formats, errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from facetex.morphable import (FaceParams, MorphableModel, FitResult, embedded_model, load_bfm_front, convert_bfm09,
                               load_bfm09, read_exp_pca, render, write_bfm09_like)


@pytest.fixture(scope="module")
def model():
    return embedded_model(24)


def test_face_params_round_trip_and_errors():
    v = torch.randn(3, 257, requires_grad=True)
    p = FaceParams.from_vector(v)
    assert torch.equal(p.to_vector(), v)
    p.to_vector().sum().backward()                       # the split keeps the graph
    assert torch.equal(v.grad, torch.ones_like(v))
    with pytest.raises(ValueError, match="`v` must have shape"):
        FaceParams.from_vector(torch.zeros(3, 258))
    with pytest.raises(ValueError, match="gamma"):
        FaceParams(torch.zeros(2, 80), torch.zeros(2, 64), torch.zeros(2, 80), torch.zeros(2, 3), torch.zeros(2, 26), torch.zeros(2, 3))
    assert FaceParams.zeros(4).batch_size == 4 and FaceParams.vector_length() == 257


def test_shape_batching_matches_loop(model):
    p = model.sample(5, generator=1)
    S = model.shape(p)
    for b in range(5):
        ref = model.mean_shape + (model.id_base * p.id[b]).sum(-1) + (model.exp_base * p.exp[b]).sum(-1)
        assert torch.allclose(S[b], ref, atol=1e-5)
    A = model.albedo(p, clamp=False)
    assert torch.allclose(A[2], model.tex_mean + (model.tex_base * p.tex[2]).sum(-1), atol=1e-5)


def test_shape_gradient_and_expression_separation(model):
    idc = torch.zeros(1, 80, requires_grad=True)
    model.shape(idc).sum().backward()
    assert torch.allclose(idc.grad[0], model.id_base.sum((0, 1)), atol=1e-4)
    p = model.sample(2, generator=2)
    neutral = model.shape(p.id)
    # the identity part is the same whatever the expression: S(id, e) - U_e e is independent of e
    e = torch.randn(2, 64)
    assert torch.allclose(model.shape(p.id, e) - torch.einsum("vck,bk->bvc", model.exp_base, e), neutral, atol=1e-5)


def test_embedded_model_properties():
    m = embedded_model(40, seed=3)
    assert m.sizes == (80, 64, 80)
    assert torch.equal(m.id_base, embedded_model(40, seed=3).id_base)
    assert not torch.equal(m.id_base[..., 20], embedded_model(40, seed=4).id_base[..., 20])   # seed changes random fields
    assert 0 < float(m.skin_mask.sum()) < float(m.face_mask.sum()) < m.n_verts
    assert bool((m.skin_mask <= m.face_mask).all())
    with pytest.raises(ValueError, match="`n` must be an int"):
        embedded_model(5)


def test_render_is_differentiable_and_checks_sizes(model):
    p = model.zero_params(1)
    p.id.requires_grad_(True); p.gamma.requires_grad_(True)
    out = render(model, p, image_size=64)
    assert out.image.shape == (1, 3, 64, 64)
    out.image.mean().backward()
    assert float(p.gamma.grad.abs().sum()) > 0 and float(p.id.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="sizes"):
        render(model, FaceParams.zeros(1, sizes=(10, 64, 80)))


def test_screen_vertices_match_deep3dfacerecon_projection(model):
    "Pose + camera against a hand computation: R = Rz(roll) Ry(yaw) Rx(pitch) (scipy), Deep3DFaceRecon's pinhole."
    from scipy.spatial.transform import Rotation
    from facetex.camera import Camera
    from facetex.morphable import screen_vertices
    p = model.sample(2, generator=5).replace(angle=torch.tensor([[0.3, -0.5, 0.1], [-0.2, 0.6, -0.15]]),
                                             trans=torch.tensor([[0.1, -0.2, 0.3], [-0.05, 0.1, -0.4]]))
    scr = screen_vertices(model, p, Camera())                          # focal 1015, centre 112, distance 10, 224²
    S = model.shape(p).double().numpy()
    for b in range(2):
        a = p.angle[b].double().numpy()
        R = Rotation.from_euler("ZYX", [a[2], a[1], a[0]]).as_matrix()    # intrinsic z-y-x = Rz @ Ry @ Rx
        X = S[b] @ R.T + p.trans[b].double().numpy()
        zc = 10.0 - X[:, 2]
        ref = np.stack([1015 * X[:, 0] / zc + 112, 224 - (1015 * X[:, 1] / zc + 112), zc], -1)
        assert np.allclose(scr[b].double().numpy(), ref, atol=1e-3)


def test_render_shading_uses_posed_normals(model):
    "The shading pass equals SH irradiance of the normals of the posed mesh (rotating normals the right way round)."
    from facetex.camera import Camera, project
    from facetex.lighting import irradiance, sh_preset
    from facetex.render import render_mesh
    p = model.sample(2, generator=4).replace(angle=torch.tensor([[0.3, -0.5, 0.1], [-0.2, 0.6, -0.15]]),
                                             gamma=sh_preset("left", batch=2))
    out = render(model, p, image_size=64)
    v = model.vertices(p)
    ref = render_mesh(project(v, Camera().scaled(64)), model.faces, 64, vertex_colors=model.albedo(p),
                      vertex_shading=irradiance(model.normals(v), p.gamma))
    assert torch.equal(out.mask, ref.mask) and float(out.mask.mean()) > 0.1
    assert torch.allclose(out.image, ref.image, atol=1e-5)
    # and it is not the unrotated shading: the light stays put while the head turns
    flat = render_mesh(project(v, Camera().scaled(64)), model.faces, 64, vertex_colors=model.albedo(p),
                       vertex_shading=irradiance(model.normals(model.shape(p)), p.gamma))
    assert float((flat.image - out.image).abs().max()) > 0.05


def test_fit_result():
    fr = FitResult(FaceParams.zeros(3), torch.zeros(3, 1, 8, 8), torch.zeros(3, 68, 2))
    assert fr.ok.all() and fr[1:].batch_size == 2
    with pytest.raises(ValueError, match="landmarks"):
        FitResult(FaceParams.zeros(3), torch.zeros(3, 1, 8, 8), torch.zeros(2, 68, 2))


# ---------------------------------------------------------------- loaders on tiny files in the real formats
def _grid_mesh(rows, cols):
    idx = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    f = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    yy, xx = np.meshgrid(np.linspace(1, -1, rows), np.linspace(-1, 1, cols), indexing="ij")
    return np.stack([xx, yy, 0.2 * np.exp(-xx ** 2 - yy ** 2)], -1).reshape(-1, 3), f


def _write_front(path, rng, n_rows=7, n_cols=10, k=(80, 64, 80), **override):
    pts, f = _grid_mesh(n_rows, n_cols)
    n = len(pts)
    d = dict(meanshape=(pts + rng.normal(0, 0.01, pts.shape) + [0.3, -0.1, 2.0]).reshape(1, -1),
             idBase=rng.normal(size=(3 * n, k[0])), exBase=rng.normal(size=(3 * n, k[1])),
             meantex=rng.uniform(0, 255, (1, 3 * n)), texBase=rng.normal(size=(3 * n, k[2])) * 10,
             tri=(f + 1).astype(np.float64), point_buf=np.zeros((n, 8)),
             keypoints=rng.choice(n, 68, replace=False)[None] + 1.0, frontmask2_idx=np.arange(1, n // 2 + 1)[:, None] * 1.0,
             tri_mask2=(f[:5] + 1).astype(np.float64), skinmask=(rng.uniform(size=(1, n)) > 0.5).astype(np.float64))
    d.update(override)
    savemat(str(path), d)
    return d


def test_load_bfm_front_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    d = _write_front(tmp_path / "BFM_model_front.mat", rng)
    m = load_bfm_front(tmp_path / "BFM_model_front.mat")
    n = d["meanshape"].size // 3
    ms = d["meanshape"].reshape(n, 3)
    assert np.allclose(m.mean_shape.numpy(), ms - ms.mean(0), atol=1e-5)
    v, c, k = 17, 2, 33
    assert np.isclose(float(m.id_base[v, c, k]), d["idBase"][3 * v + c, k], atol=1e-5)
    assert np.isclose(float(m.exp_base[v, c, 5]), d["exBase"][3 * v + c, 5], atol=1e-5)
    assert np.isclose(float(m.tex_base[v, c, k]), d["texBase"][3 * v + c, k] / 255, atol=1e-6)
    assert np.isclose(float(m.tex_mean[v, c]), d["meantex"][0, 3 * v + c] / 255, atol=1e-6)
    assert np.array_equal(m.faces.numpy(), d["tri"] - 1) and np.array_equal(m.landmarks68.numpy(), d["keypoints"][0] - 1)
    assert float(m.face_mask.sum()) == n // 2 and float(m.face_mask[: n // 2].min()) == 1
    assert np.array_equal(m.skin_mask.numpy(), d["skinmask"][0])
    assert np.array_equal(m.front_faces.numpy(), d["tri_mask2"] - 1)
    assert m.uv.shape == (n, 2) and float(m.uv.min()) >= 0 and float(m.uv.max()) <= 1
    from facetex.uv import uv_signed_areas
    assert bool((uv_signed_areas(m.uv, m.faces) > 0).all())


def test_uv_cache_file(tmp_path):
    rng = np.random.default_rng(1)
    d = _write_front(tmp_path / "a.mat", rng)
    cache = tmp_path / "cache" / "a_uv.npy"
    m1 = load_bfm_front(tmp_path / "a.mat", uv_cache=cache)
    assert cache.is_file() and np.allclose(np.load(cache), m1.uv.numpy())
    fake = np.full((d["meanshape"].size // 3, 2), 0.25, np.float32)
    np.save(tmp_path / "b_uv.npy", fake)
    _write_front(tmp_path / "b.mat", rng)
    assert np.allclose(load_bfm_front(tmp_path / "b.mat", uv_cache=tmp_path / "b_uv.npy").uv.numpy(), 0.25)


def _tiny_bfm09(folder, rng, N=14, n_e=11, n=9, K=199, KE=79):
    "Random BFM09-format files (not derived from a model): returns paths and the raw arrays for a hand computation."
    folder.mkdir(parents=True, exist_ok=True)
    raw = dict(shapeMU=rng.normal(size=(3 * N, 1)) * 1e5, shapePC=rng.normal(size=(3 * N, K)), shapeEV=rng.uniform(1, 3, (K, 1)),
               texMU=rng.uniform(0, 255, (3 * N, 1)), texPC=rng.normal(size=(3 * N, K)), texEV=rng.uniform(1, 3, (K, 1)),
               tl=np.ones((3, 3)))
    savemat(str(folder / "01_MorphableModel.mat"), raw)
    expMU, expPC = rng.normal(size=3 * n_e).astype("<f4"), rng.normal(size=(KE, 3 * n_e)).astype("<f4")
    (folder / "Exp_Pca.bin").write_bytes(np.int32(KE).tobytes() + expMU.tobytes() + expPC.tobytes())
    std = rng.uniform(0.5, 2, KE); np.savetxt(folder / "std_exp.txt", std)
    trim = rng.choice(N, n_e, replace=False) + 1; front = rng.choice(n_e, n, replace=False) + 1
    savemat(str(folder / "BFM_exp_idx.mat"), dict(trimIndex=trim[:, None].astype(np.float64)))
    savemat(str(folder / "BFM_front_idx.mat"), dict(idx=front[:, None].astype(np.float64)))
    pts, f = _grid_mesh(3, 3)
    savemat(str(folder / "facemodel_info.mat"), dict(tri=f + 1.0, point_buf=np.zeros((n, 8)), keypoints=rng.integers(1, n + 1, (1, 68)) * 1.0,
                                                    frontmask2_idx=np.arange(1, 6)[:, None] * 1.0, tri_mask2=f[:2] + 1.0, skinmask=np.ones((1, n))))
    paths = dict(model_path=folder / "01_MorphableModel.mat", exp_pca_path=folder / "Exp_Pca.bin", std_exp_path=folder / "std_exp.txt",
                 exp_idx_path=folder / "BFM_exp_idx.mat", front_idx_path=folder / "BFM_front_idx.mat", info_path=folder / "facemodel_info.mat")
    return paths, raw, expPC, std, trim, front


def test_convert_bfm09_equals_hand_computation(tmp_path):
    rng = np.random.default_rng(2)
    paths, raw, expPC, std, trim, front = _tiny_bfm09(tmp_path / "BFM", rng)
    d = convert_bfm09(**paths, out_path=tmp_path / "out" / "BFM_model_front.mat")
    n = len(front)
    assert d["idBase"].shape == (3 * n, 80) and d["exBase"].shape == (3 * n, 64) and d["texBase"].shape == (3 * n, 80)
    for i in range(n):                                   # output vertex i
        e = front[i] - 1                                 # its expression-model vertex
        s = trim[e] - 1                                  # its BFM vertex
        for c in range(3):
            assert np.isclose(d["meanshape"][0, 3 * i + c], raw["shapeMU"][3 * s + c, 0] / 1e5)
            assert np.isclose(d["meantex"][0, 3 * i + c], raw["texMU"][3 * s + c, 0])
            for k in (0, 7, 79):
                assert np.isclose(d["idBase"][3 * i + c, k], raw["shapePC"][3 * s + c, k] * raw["shapeEV"][k, 0] / 1e5)
                assert np.isclose(d["texBase"][3 * i + c, k], raw["texPC"][3 * s + c, k] * raw["texEV"][k, 0])
            for k in (0, 63):
                assert np.isclose(d["exBase"][3 * i + c, k], float(expPC[k, 3 * e + c]) * std[k] / 1e5, rtol=1e-6)
    # the written file loads, and load_bfm09 gives the same model without writing
    m1 = load_bfm_front(tmp_path / "out" / "BFM_model_front.mat")
    m2 = load_bfm09(**paths)
    assert torch.allclose(m1.exp_base, m2.exp_base) and torch.allclose(m1.mean_shape, m2.mean_shape)


def test_read_exp_pca(tmp_path):
    p = tmp_path / "Exp_Pca.bin"
    mu, pc = np.arange(6, dtype="<f4"), np.arange(12, dtype="<f4").reshape(2, 6)
    p.write_bytes(np.int32(2).tobytes() + mu.tobytes() + pc.tobytes())
    m, P = read_exp_pca(p)
    assert np.array_equal(m, mu) and P.shape == (6, 2) and np.array_equal(P[:, 1], pc[1])
    with pytest.raises(ValueError, match="Exp_Pca.bin: 18 floats.*need 27"):
        read_exp_pca(p, n_verts=3)
    p.write_bytes(np.int32(2).tobytes() + mu.tobytes() + pc.tobytes()[:-4])
    with pytest.raises(ValueError, match="do not split"):
        read_exp_pca(p)
    p.write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match=str(p.name)):
        read_exp_pca(p)


def test_missing_and_malformed_files(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(FileNotFoundError, match="BFM_model_front.mat.*Deep3DFaceRecon"):
        load_bfm_front(tmp_path / "BFM_model_front.mat")
    _write_front(tmp_path / "wrong_rows.mat", rng, idBase=np.zeros((12, 80)))
    with pytest.raises(ValueError, match="wrong_rows.mat: variable 'idBase' has shape"):
        load_bfm_front(tmp_path / "wrong_rows.mat")
    _write_front(tmp_path / "kp.mat", rng, keypoints=np.full((1, 68), 10_000.0))
    with pytest.raises(ValueError, match="'keypoints' holds indices outside"):
        load_bfm_front(tmp_path / "kp.mat")
    _write_front(tmp_path / "fm.mat", rng, frontmask2_idx=np.array([[1.0], [10_000.0]]))
    with pytest.raises(ValueError, match="fm.mat: 'frontmask2_idx' holds indices outside"):
        load_bfm_front(tmp_path / "fm.mat")
    _write_front(tmp_path / "kp67.mat", rng, keypoints=np.ones((1, 67)))
    with pytest.raises(ValueError, match="expected 68"):
        load_bfm_front(tmp_path / "kp67.mat")
    paths, *_ = _tiny_bfm09(tmp_path / "BFM", rng)
    for key, needle in [("model_path", "University of Basel"), ("exp_pca_path", "Guo et al"),
                        ("std_exp_path", "std_exp.txt ships in the BFM/ folder of Deep3DFaceRecon"),
                        ("exp_idx_path", "BFM_exp_idx.mat ships"), ("front_idx_path", "BFM_front_idx.mat ships")]:
        with pytest.raises(FileNotFoundError, match=needle):
            convert_bfm09(**{**paths, key: tmp_path / "absent" / Path(paths[key]).name})
    np.savetxt(tmp_path / "BFM" / "std_exp.txt", np.ones(10))
    with pytest.raises(ValueError, match="10 standard deviations"):
        convert_bfm09(**paths)


def test_write_bfm09_like_round_trip(tmp_path):
    small = embedded_model(16)
    m = load_bfm09(**write_bfm09_like(small, tmp_path / "BFM", seed=5))
    assert torch.allclose(m.mean_shape, small.mean_shape, atol=1e-5)
    assert torch.allclose(m.id_base, small.id_base, atol=1e-6) and torch.allclose(m.tex_base, small.tex_base, atol=1e-6)
