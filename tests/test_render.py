"""Renderer tests beyond the notebook: the fast rasteriser against the brute-force reference on more random meshes
(float32 and float64, square and non-square, culling), bad input for every public function, batching/chunking
invariance, gradients, and the optional backends (skipped where not installed / no CUDA)."""
import pytest
import torch

from facetex.core import make_generator, uv_sphere
from facetex.render import (Fragments, RenderOutput, available_backends, composite, interpolate, rasterize,
                            rasterize_reference, render_mesh, sample_texture)

torch.set_num_threads(1)


def soup(seed, B=2, V=30, F=40, H=11, W=19, dtype=torch.float32):
    g = make_generator(seed)
    v = torch.rand(B, V, 3, generator=g, dtype=torch.float64) * torch.tensor([W + 6., H + 6., 4.], dtype=torch.float64)
    v = v + torch.tensor([-3., -3., 0.5], dtype=torch.float64)
    return v.to(dtype), torch.randint(0, V, (F, 3), generator=g), (H, W)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cull", [False, True])
def test_fast_matches_reference(seed, dtype, cull):
    v, f, size = soup(seed, dtype=dtype)
    a = rasterize(v, f, size, cull_backfaces=cull)
    r = rasterize_reference(v, f, size, cull_backfaces=cull)
    assert a.bary.dtype == dtype and a.zbuf.dtype == dtype and a.pix_to_face.dtype == torch.int64
    assert ((a.pix_to_face >= 0) != (r.pix_to_face >= 0)).float().mean() < 0.01
    same = (a.pix_to_face == r.pix_to_face)
    assert same.float().mean() > 0.99
    cov = same & (a.pix_to_face >= 0)
    assert cov.sum() > 50
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert (a.bary - r.bary)[same].abs().max() < tol
    assert (a.zbuf - r.zbuf)[same].abs().max() < tol


def test_screen_space_barycentrics_match_reference():
    v, f, size = soup(3)
    a = rasterize(v, f, size, perspective_correct=False)
    r = rasterize_reference(v, f, size, perspective_correct=False)
    same = a.pix_to_face == r.pix_to_face
    assert same.float().mean() > 0.99
    assert (a.bary - r.bary)[same].abs().max() < 1e-4 and (a.zbuf - r.zbuf)[same].abs().max() < 1e-4


def test_batch_and_chunk_invariance():
    v, f, size = soup(8, B=4)
    full = rasterize(v, f, size)
    one = torch.cat([rasterize(v[i:i + 1], f, size).pix_to_face for i in range(4)])
    assert torch.equal(full.pix_to_face, one)
    assert torch.equal(rasterize(v, f, size, chunk_size=3).pix_to_face, full.pix_to_face)


def test_offscreen_and_behind_camera():
    f = torch.tensor([[0, 1, 2]])
    off = torch.tensor([[[100., 100, 1], [120, 100, 1], [100, 130, 1]]])
    assert rasterize(off, f, 16).pix_to_face.max() == -1
    behind = torch.tensor([[[1., 1, -1], [12, 1, -1], [1, 12, -1]]])
    assert rasterize(behind, f, 16).pix_to_face.max() == -1
    huge = torch.tensor([[[-1e6, -1e6, 1], [1e6, -1e6, 1], [0, 1e6, 1]]])   # covers everything
    assert bool((rasterize(huge, f, 8).pix_to_face == 0).all())


def test_sphere_covers_disk_and_grad_reaches_everything():
    sv, sf = uv_sphere(10, 20)
    vs = torch.stack([sv[:, 0] * 12 + 16, 16 - sv[:, 1] * 12, 5 - sv[:, 2]], -1)[None].requires_grad_(True)
    col = torch.rand(1, sv.shape[0], 3, requires_grad=True)
    shade = torch.rand(1, sv.shape[0], 3, requires_grad=True)
    out = render_mesh(vs, sf, 32, vertex_colors=col, vertex_shading=shade, cull_backfaces=True)
    assert isinstance(out, RenderOutput) and "Fragments" in repr(out)
    assert abs(out.mask.sum().item() - 3.1416 * 144) < 0.06 * 3.1416 * 144
    out.image.sum().backward()
    for t in (vs, col, shade): assert t.grad.abs().sum() > 0
    assert torch.equal(out.image, out.albedo * out.shading)


def test_non_square_and_tuple_size():
    v, f, _ = soup(2, H=7, W=23)
    a = rasterize(v, f, (7, 23))
    assert a.pix_to_face.shape == (2, 7, 23) and a.bary.shape == (2, 7, 23, 3) and a.zbuf.shape == (2, 7, 23)
    r = rasterize_reference(v, f, (7, 23))
    assert (a.pix_to_face == r.pix_to_face).float().mean() > 0.99


@pytest.mark.parametrize("call, msg", [
    (lambda v, f: rasterize(v[0], f, 8), "`verts_screen` must have shape (B, V, 3)"),
    (lambda v, f: rasterize(v.double().mul(float("inf")), f, 8), "non-finite"),
    (lambda v, f: rasterize(v, f - 1, 8), "`faces` holds vertex index -1"),
    (lambda v, f: rasterize(v, f[:0], 8), "`faces` is empty"),
    (lambda v, f: rasterize(v, f[:, :2], 8), "`faces` must have shape (F, 3)"),
    (lambda v, f: rasterize(v.long(), f, 8), "`verts_screen` must be a floating-point tensor"),
    (lambda v, f: rasterize(v, f, (8, 0)), "`image_size` must be positive"),
    (lambda v, f: rasterize(v, f, (8, 8, 8)), "`image_size`"),
    (lambda v, f: rasterize(v, f, 8, backend="cuda"), "`backend` must be one of"),
    (lambda v, f: interpolate(torch.rand(2, 30), f, rasterize(v, f, 8)), "`attrs` must have shape"),
    (lambda v, f: interpolate(torch.rand(3, 30, 2), f, rasterize(v, f, 8)), "with B=2"),
    (lambda v, f: sample_texture(torch.rand(3, 8, 8), torch.rand(2, 2, 8, 8)), "`texture` must have shape"),
    (lambda v, f: sample_texture(torch.rand(1, 3, 8, 8), torch.rand(2, 8, 8, 2)), "`uv_image` must have shape (B, 2, H, W)"),
    (lambda v, f: render_mesh(v, f, 8, uv=torch.rand(29, 2), texture=torch.rand(1, 3, 8, 8)), "`uv` must have shape"),
    (lambda v, f: render_mesh(v, f, 8, uv=torch.rand(30, 2), texture=torch.rand(1, 3, 8)), "`texture` must have shape"),
    (lambda v, f: render_mesh(v, f, 8, vertex_shading=torch.rand(2, 30, 4)), "`vertex_shading` must have shape"),
    (lambda v, f: composite(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)), "`mask` must have shape"),
    (lambda v, f: composite(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(3, 3, 8, 8)), "`background`"),
    (lambda v, f: composite(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 3, 4, 8)), "`background` must have shape"),
])
def test_bad_input(call, msg):
    v, f, _ = soup(0)
    with pytest.raises(ValueError, match=None) as e: call(v, f)
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("backend", ["nvdiffrast", "pytorch3d"])
def test_missing_backend_names_package(backend):
    if backend in available_backends(): pytest.skip(f"{backend} is installed here")
    v, f, _ = soup(0)
    with pytest.raises(ImportError, match=backend): rasterize(v, f, 8, backend=backend)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "nvdiffrast", "pytorch3d"])
def test_backends_agree_on_cuda(backend):
    if backend not in available_backends(): pytest.skip(f"{backend} not installed")
    v, f, size = soup(4, V=300, F=400, H=64, W=80)
    ref = rasterize(v, f, size)
    out = rasterize(v.cuda(), f.cuda(), size, backend=backend)
    assert isinstance(out, Fragments)
    assert (out.pix_to_face.cpu() != ref.pix_to_face).float().mean() < 0.005


# --- The adapters' coordinate conventions, checked against stand-ins that follow each library's documented
# conventions (brute force in the library's own clip/NDC space). The real libraries are compared in `#| gpu` cells.

def _bary2(px, py, x, y):
    "Screen-space barycentrics of points (px, py) (N) in triangles x, y (F×3) → N×F×3, and the signed area F."
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    def E(i, j): return (x[:, j] - x[:, i]) * (py[:, None] - y[:, i]) - (y[:, j] - y[:, i]) * (px[:, None] - x[:, i])
    return torch.stack([E(1, 2), E(2, 0), E(0, 1)], -1) / area[:, None], area


class _FakeDR:
    "nvdiffrast.torch stand-in: clip-space input, row 0 = NDC y=-1, output (u, v, z/w, triangle_id+1)."
    class RasterizeCudaContext:
        def __init__(self, device=None): pass

    @staticmethod
    def rasterize(ctx, pos, tri, resolution):
        H, W = resolution
        B = pos.shape[0]
        out = torch.zeros(B, H, W, 4)
        r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        px, py = (2 * (c.flatten() + 0.5) / W - 1).double(), (2 * (r.flatten() + 0.5) / H - 1).double()
        for b in range(B):
            p = pos[b].double()[tri.long()]                                   # F×3×4
            w = p[..., 3]
            x, y, zn = p[..., 0] / w, p[..., 1] / w, p[..., 2] / w
            bs, area = _bary2(px, py, x, y)
            inside = (bs >= 0).all(-1) & (area != 0) & (w > 0).all(-1)
            depth = (bs * zn[None]).sum(-1).masked_fill(~inside, float("inf"))  # z/w is affine in screen space
            d, f = depth.min(1)
            hit = torch.isfinite(d)
            out[b, ..., 3] = torch.where(hit, f + 1, 0).view(H, W).float()
        return out, None


def test_nvdiffrast_adapter_conventions(monkeypatch):
    import sys, types
    import facetex.render as R
    mod = types.ModuleType("nvdiffrast.torch")
    for k in ("RasterizeCudaContext", "rasterize"): setattr(mod, k, getattr(_FakeDR, k))
    pkg = types.ModuleType("nvdiffrast"); pkg.torch = mod
    monkeypatch.setitem(sys.modules, "nvdiffrast", pkg); monkeypatch.setitem(sys.modules, "nvdiffrast.torch", mod)
    monkeypatch.setattr(R, "_require_cuda", lambda *a: None)
    monkeypatch.setattr(R, "_NVDR_CTX", {})
    for seed in range(3):
        v, f, size = soup(seed, H=12, W=17)
        for cull in (False, True):
            a = rasterize(v, f, size, cull_backfaces=cull)
            b = rasterize(v, f, size, backend="nvdiffrast", cull_backfaces=cull)
            ok = (a.pix_to_face == b.pix_to_face) | ((a.zbuf - b.zbuf).abs() < 1e-5)   # coincident faces may tie
            assert ok.float().mean() > 0.99 and (a.pix_to_face == b.pix_to_face).float().mean() > 0.95
    behind = v.clone(); behind[:, :5, 2] = -1.0                               # faces behind the camera are skipped
    assert (rasterize(behind, f, size).pix_to_face == rasterize(behind, f, size, backend="nvdiffrast").pix_to_face).float().mean() > 0.99


def test_pytorch3d_adapter_conventions(monkeypatch):
    import sys, types
    class Meshes:
        def __init__(self, verts, faces): self.verts, self.faces = verts, faces
    def rasterize_meshes(meshes, image_size, blur_radius=0.0, faces_per_pixel=1, perspective_correct=False, **kw):
        H, W = image_size
        S = min(H, W)
        r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        # pytorch3d NDC: +x left, +y up, the shorter side spans [-1, 1], pixel centres at (2i+1)/S offsets
        px = ((W - 2 * c.flatten() - 1) / S).double(); py = ((H - 2 * r.flatten() - 1) / S).double()
        B = len(meshes.verts); Fn = meshes.faces[0].shape[0]
        p2f = torch.full((B, H, W, 1), -1, dtype=torch.long)
        for b in range(B):
            t = meshes.verts[b].double()[meshes.faces[b]]
            bs, area = _bary2(px, py, t[..., 0], t[..., 1])
            inside = (bs >= 0).all(-1) & (area != 0)
            lam = bs / t[..., 2][None]; lam = lam / lam.sum(-1, keepdim=True)
            z = (lam * t[..., 2][None]).sum(-1).masked_fill(~inside, float("inf"))
            d, f = z.min(1)
            p2f[b, ..., 0] = torch.where(torch.isfinite(d), f + b * Fn, -1).view(H, W)   # packed face index
        return p2f, None, None, None
    m1 = types.ModuleType("pytorch3d.renderer.mesh.rasterize_meshes"); m1.rasterize_meshes = rasterize_meshes
    m2 = types.ModuleType("pytorch3d.structures"); m2.Meshes = Meshes
    for name in ("pytorch3d", "pytorch3d.renderer", "pytorch3d.renderer.mesh"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "pytorch3d.renderer.mesh.rasterize_meshes", m1)
    monkeypatch.setitem(sys.modules, "pytorch3d.structures", m2)
    for seed, (H, W) in zip(range(3), [(12, 17), (17, 12), (10, 10)]):
        v, f, size = soup(seed, H=H, W=W)
        for cull in (False, True):
            a = rasterize(v, f, size, cull_backfaces=cull)
            b = rasterize(v, f, size, backend="pytorch3d", cull_backfaces=cull)
            ok = (a.pix_to_face == b.pix_to_face) | ((a.zbuf - b.zbuf).abs() < 1e-5)   # coincident faces may tie
            assert ok.float().mean() > 0.99 and (a.pix_to_face == b.pix_to_face).float().mean() > 0.95
            same = a.pix_to_face == b.pix_to_face
            assert (a.bary - b.bary)[same].abs().max() < 1e-5


def test_render_mesh_batch_sharing_and_errors():
    "Batch-1 uv / colours / shading / texture are shared across the batch; mismatched batches name the argument."
    v, f, size = soup(1, B=3)
    g = make_generator(9)
    uv1, col1, sh1 = torch.rand(1, 30, 2, generator=g), torch.rand(1, 30, 3, generator=g), torch.rand(1, 30, 3, generator=g)
    tex1 = torch.rand(1, 3, 6, 5, generator=g)
    shared = render_mesh(v, f, size, uv=uv1[0], texture=tex1, vertex_shading=sh1)
    full = render_mesh(v, f, size, uv=uv1.expand(3, -1, -1), texture=tex1.expand(3, -1, -1, -1), vertex_shading=sh1.expand(3, -1, -1))
    assert torch.allclose(shared.image, full.image, atol=1e-6) and shared.mask.sum() > 100
    # per-image rendering equals the batch
    one = torch.cat([render_mesh(v[i:i + 1], f, size, vertex_colors=col1).image for i in range(3)])
    assert torch.allclose(render_mesh(v, f, size, vertex_colors=col1).image, one, atol=1e-6)
    cases = [(dict(vertex_colors=torch.rand(2, 30, 3)), "`vertex_colors` must have shape (B, V, 3) with B=3"),
             (dict(vertex_shading=torch.rand(2, 30, 3)), "`vertex_shading` must have shape (B, V, 3) with B=3"),
             (dict(uv=torch.rand(2, 30, 2), texture=tex1), "`uv` must have shape (B, V, 2) with B=3"),
             (dict(uv=uv1, texture=torch.rand(2, 3, 6, 5)), "`texture` must have shape (B, C, Ht, Wt) with B=3"),
             (dict(uv=uv1, texture=torch.rand(3, 1, 6, 5)), "`texture` must have shape (B, 3, Ht, Wt)"),
             (dict(fragments=rasterize(v[:1], f, size)), "`fragments` hold 1 images")]
    for kw, msg in cases:
        with pytest.raises(ValueError) as e: render_mesh(v, f, size, **kw)
        assert msg in str(e.value), str(e.value)
