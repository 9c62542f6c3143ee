"""facetex.uv: Floater parametrisation invariants, boundary handling, bake/sample round trips and bad input."""
import math

import numpy as np
import pytest
import torch

from facetex.core import uv_sphere
from facetex.uv import (boundary_loop, boundary_loops, floater_parametrize, uv_signed_areas, uv_distortion,
                        bake_vertex_colors, sample_uv_texture, uv_mask, wavy_disk, hemisphere, mean_value_weights)


def _rot(a, b, c):
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    Rx = torch.tensor([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    Ry = torch.tensor([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    Rz = torch.tensor([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return (Rz @ Ry @ Rx).float()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("boundary", ["circle", "square"])
def test_no_flips_and_boundary_on_curve(seed, boundary):
    v, f = wavy_disk(8, 32, jitter=0.3, seed=seed) if boundary == "circle" else hemisphere(6, 24)
    uv = floater_parametrize(v, f, boundary)
    assert bool((uv_signed_areas(uv, f) > 0).all())
    L = boundary_loop(f)
    r = (uv[L] - 0.5).norm(dim=1) if boundary == "circle" else (uv[L] - 0.5).abs().max(1).values
    assert torch.allclose(r, torch.full_like(r, 0.5), atol=1e-6)
    assert float(uv.min()) >= -1e-6 and float(uv.max()) <= 1 + 1e-6


def test_rigid_motion_invariance():
    v, f = wavy_disk(seed=4)
    start = int(boundary_loop(f)[3])
    uv1 = floater_parametrize(v, f, start=start)
    uv2 = floater_parametrize(v @ _rot(0.3, -1.1, 2.0).T * 2.5 + torch.tensor([1.0, -2, 3]), f, start=start)
    assert torch.allclose(uv1, uv2, atol=1e-5)


def test_mean_value_weights_positive_and_sparse_structure():
    v, f = wavy_disk(seed=5)
    W = mean_value_weights(v, f)
    assert W.data.min() > 0
    edges = {tuple(sorted(e)) for t in f.tolist() for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    r, c = W.nonzero()
    assert {tuple(sorted(e)) for e in zip(r.tolist(), c.tolist())} == edges


def test_hole_is_handled():
    v, f = wavy_disk(10, 40, seed=6)
    centre = v[f].mean(1)[:, :2].norm(dim=1)
    keep = centre > 0.25                                   # cut a hole around the centre
    f2 = f[keep]
    used = torch.unique(f2)
    remap = -torch.ones(len(v), dtype=torch.long); remap[used] = torch.arange(len(used))
    v2, f2 = v[used], remap[f2]
    loops = boundary_loops(f2)
    assert len(loops) == 2 and len(loops[0]) > len(loops[1])
    uv = floater_parametrize(v2, f2)
    assert bool((uv_signed_areas(uv, f2) > 0).all())


def test_bad_meshes():
    with pytest.raises(ValueError, match="no boundary"):
        floater_parametrize(*uv_sphere(6, 8))
    bowtie = torch.tensor([[0, 1, 2], [0, 3, 4]])               # two triangles touching at vertex 0 only
    with pytest.raises(ValueError, match="pinched"):
        boundary_loops(bowtie)
    v, f = wavy_disk()
    with pytest.raises(ValueError, match="`faces` holds vertex index"):
        floater_parametrize(v[:10], f)
    with pytest.raises(ValueError, match="`start` must be a vertex of the outer boundary"):
        floater_parametrize(v, f, start=0)                      # vertex 0 is the disk centre


def test_bake_sample_round_trip_batched():
    v, f = hemisphere(8, 32)
    uv = floater_parametrize(v, f)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 2, 2, generator=g)
    cols = (uv[None] - 0.5) @ A + 0.5                          # B=3 fields, C=2 channels, linear in (u, v)
    tex = bake_vertex_colors(uv, f, cols, 256, pad=3)
    assert tex.shape == (3, 2, 256, 256)
    back = sample_uv_texture(tex, uv)
    rim = torch.zeros(len(uv), dtype=torch.bool); rim[boundary_loop(f)] = True
    assert torch.allclose(back[:, ~rim], cols[:, ~rim], atol=1e-5)     # interior: bilinear reproduces linear fields
    assert torch.allclose(back[:, rim], cols[:, rim], atol=0.02)       # rim: padding extrapolates by local averages
    # batch rows are baked independently
    assert torch.allclose(bake_vertex_colors(uv, f, cols[1], 64), bake_vertex_colors(uv, f, cols, 64)[1:2])


def test_uv_mask_brute_force():
    v, f = wavy_disk(5, 16, seed=7)
    uv = floater_parametrize(v, f)
    S = 20
    m = uv_mask(uv, f, S)[0, 0]
    c = (torch.arange(S) + 0.5) / S
    P = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2).double()
    A, B, C = (uv.double()[f[:, k]] for k in range(3))
    def cross(o, a, p): return (a[..., 0] - o[..., 0]) * (p[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (p[..., 0] - o[..., 0])
    p = P[:, None]
    s1, s2, s3 = cross(A, B, p), cross(B, C, p), cross(C, A, p)
    inside = ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))
    assert torch.equal(m.flatten().bool(), inside.any(1))


def test_distortion_analytic_scaling():
    v, f = wavy_disk(seed=8)
    flat = v.clone(); flat[:, 2] = 0
    uv = torch.stack([0.5 + 0.4 * flat[:, 0], 0.5 - 0.2 * flat[:, 1]], -1)     # u stretched 2× relative to v
    d = uv_distortion(flat, f, uv)
    assert torch.allclose(d.conformal, torch.full_like(d.conformal, 2.0), atol=1e-4)
    assert torch.allclose(d.area_ratio, torch.ones_like(d.area_ratio), atol=1e-4)
    assert not bool(d.flipped.any())


def test_sample_uv_texture_per_batch_uv_and_errors():
    tex = torch.arange(16.).view(1, 1, 4, 4).expand(2, 1, 4, 4).contiguous()
    uv = torch.tensor([[[0.125, 0.125]], [[0.875, 0.625]]])              # texel centres (0,0) and (2,3)
    out = sample_uv_texture(tex, uv)
    assert out.shape == (2, 1, 1) and out[0, 0, 0] == 0 and out[1, 0, 0] == 11
    with pytest.raises(ValueError, match="`uv` must have shape"):
        sample_uv_texture(tex, torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        uv_mask(torch.rand(3, 2), torch.tensor([[0, 1, 2]]), 0)


def test_sample_uv_texture_bilinear_reference_and_shared_texture():
    "Between texel centres the value is the bilinear blend written out by hand; a 1×C texture serves a batch of UVs."
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(1, 2, 5, 7, generator=g)
    uv = torch.rand(3, 40, 2, generator=g) * 0.7 + 0.15            # inside the texel-centre hull
    out = sample_uv_texture(tex, uv)
    assert out.shape == (3, 40, 2)
    x, y = uv[..., 0] * 7 - 0.5, uv[..., 1] * 5 - 0.5              # continuous texel index (centres at integers)
    x0, y0 = x.floor().long(), y.floor().long(); fx, fy = x - x0, y - y0
    T = tex[0].permute(1, 2, 0)                                    # Ht×Wt×C
    ref = (T[y0, x0] * ((1 - fx) * (1 - fy))[..., None] + T[y0, x0 + 1] * (fx * (1 - fy))[..., None]
           + T[y0 + 1, x0] * ((1 - fx) * fy)[..., None] + T[y0 + 1, x0 + 1] * (fx * fy)[..., None])
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="`pad` must be an int"):
        bake_vertex_colors(torch.rand(3, 2), torch.tensor([[0, 1, 2]]), torch.rand(3, 3), 8, pad=-1)
    with pytest.raises(ValueError, match="`texture` must have shape"):
        sample_uv_texture(torch.rand(2, 5, 7), uv[0])
