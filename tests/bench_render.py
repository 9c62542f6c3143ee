"""Renderer benchmark (not a pytest test): a ~70k-triangle face-sized mesh rendered with a 1024² UV texture,
forward and forward+backward (to the texture), for every available backend.

    python tests/bench_render.py                      # CPU: 224² batch 1 and 256² batch 8
    python tests/bench_render.py --sizes 256 512 1024 --batch 8   # the issue's table (GPU)
    python tests/bench_render.py --reference          # also time the brute-force reference on a tiny case
"""
import argparse
import math
import time

import torch

from facetex.camera import Camera, rigid_transform
from facetex.render import available_backends, rasterize, rasterize_reference, render_mesh


def face_mesh(n: int = 188, device="cpu"):
    "A face-sized curved grid (n×n vertices, 2(n-1)² triangles ≈ 70k for n=188) in world space, with UVs."
    u = torch.linspace(0, 1, n, device=device)
    vv, uu = torch.meshgrid(u, u, indexing="ij")
    x, y = (uu - 0.5) * 1.5, (0.5 - vv) * 1.9                    # ~1.5 wide, 1.9 tall, centred
    z = 0.6 * torch.cos(x * 1.6) * torch.cos(y * 1.2) + 0.1 * torch.exp(-(x ** 2 + (y + 0.05) ** 2) / 0.02)  # nose bump
    verts = torch.stack([x, y, z], -1).reshape(-1, 3)
    uv = torch.stack([uu, vv], -1).reshape(-1, 2)
    i, j = torch.meshgrid(torch.arange(n - 1, device=device), torch.arange(n - 1, device=device), indexing="ij")
    a = (i * n + j).flatten(); b, c, d = a + 1, a + n, a + n + 1
    faces = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)])   # CCW seen from +z (y up)
    return verts, faces, uv


def project(verts, size, B):
    "Screen coordinates through Deep3DFaceRecon's camera scaled to `size`, with a small per-image yaw."
    yaw = torch.linspace(-0.3, 0.3, B, device=verts.device)
    angles = torch.stack([torch.zeros_like(yaw), yaw, torch.zeros_like(yaw)], -1)
    return Camera().scaled(size).project(rigid_transform(verts.expand(B, -1, -1), angles))


CPU_MS = {}


def timeit(fn, device, reps):
    "Wall ms per call (after a warm-up); the process CPU ms per call goes to CPU_MS[fn] (robust to a shared CPU)."
    fn()                                                        # warm-up (JIT, caches)
    if device.type == "cuda": torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps): fn()
    if device.type == "cuda": torch.cuda.synchronize()
    CPU_MS[fn] = (time.process_time() - c) / reps * 1000
    return (time.perf_counter() - t) / reps * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tex", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reference", action="store_true")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    verts, faces, uv = face_mesh(device=device)
    cases = ([(s, args.batch) for s in args.sizes] if args.sizes else
             ([(224, 1), (256, 8)] if device.type == "cpu" else [(256, 8), (512, 8), (1024, 8)]))
    reps = args.reps or (2 if device.type == "cpu" else 10)
    tex = torch.rand(1, 3, args.tex, args.tex, device=device)
    backends = available_backends()
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"threads={torch.get_num_threads()}, mesh V={verts.shape[0]} F={faces.shape[0]}, texture {args.tex}², "
          f"backends={backends}")
    print(f"{'backend':>10} {'size':>5} {'batch':>5} {'ms raster':>10} {'ms fwd':>9} {'ms fwd+bwd':>11} "
          f"{'cpu-ms fwd+bwd':>15} {'coverage':>9}")
    res = {}
    for size, B in cases:
        vs = project(verts, size, B)
        for be in backends:
            t_r = timeit(lambda: rasterize(vs, faces, size, backend=be), device, reps)
            def fwd():
                return render_mesh(vs, faces, size, uv=uv, texture=tex, backend=be).image
            def fwdbwd():
                t = tex.clone().requires_grad_(True)
                render_mesh(vs, faces, size, uv=uv, texture=t, backend=be).image.sum().backward()
            t_f = timeit(fwd, device, reps); t_b = timeit(fwdbwd, device, reps)
            cov = float(rasterize(vs, faces, size, backend=be).mask.mean())
            res[be, size, B] = t_b
            print(f"{be:>10} {size:>5} {B:>5} {t_r:>10.1f} {t_f:>9.1f} {t_b:>11.1f} {CPU_MS[fwdbwd]:>15.1f} {cov:>9.3f}",
                  flush=True)
        if ("nvdiffrast", size, B) in res:
            print(f"{'':>10} ratio torch/nvdiffrast (fwd+bwd) at {size}²×{B}: {res['torch', size, B] / res['nvdiffrast', size, B]:.2f}")
    if args.reference:                                          # the brute-force reference is only usable tiny
        small, _, _ = face_mesh(12, device="cpu")
        f12 = face_mesh(12)[1].cpu()
        vs = project(small, 32, 1).cpu()
        t_ref = timeit(lambda: rasterize_reference(vs, f12, 32), torch.device("cpu"), 1)
        t_fast = timeit(lambda: rasterize(vs, f12, 32), torch.device("cpu"), 5)
        print(f"reference vs torch on 32², {f12.shape[0]} triangles: {t_ref:.0f} ms vs {t_fast:.1f} ms "
              f"(ratio {t_ref / t_fast:.0f}×)")


if __name__ == "__main__":
    main()
