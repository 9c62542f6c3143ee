"""Benchmark of the synthetic world (not a test): images per second of `SyntheticFaces` (through a DataLoader,
batched via `__getitems__`) and of `SyntheticStyleGenerator.synthesis` (no grad, and forward+backward) at 64², 128²
and 256² on this machine's CPU.  Run: `python tests/bench_synthetic.py [--threads N] [--sizes 64 128 256]`."""
import argparse
import time

import torch

from facetex.synthetic import SyntheticFaces, SyntheticStyleGenerator


def rate(fn, n_images, repeats=3):
    fn()                                                   # warm-up (caches, allocator)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return n_images / best, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads={a.threads} batch={a.batch}")
    print(f"{'size':>5} {'dataset img/s':>14} {'synthesis img/s':>16} {'fwd+bwd img/s':>14} {'ms/img (data)':>14}")
    for s in a.sizes:
        G = SyntheticStyleGenerator(s)
        ds = SyntheticFaces(10_000, s, generator=G)
        dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        it = iter(dl)
        r_ds, t = rate(lambda: next(it), a.batch)
        ws = G.sample_ws(a.batch, seed=0)
        with torch.no_grad(): r_g, _ = rate(lambda: G.synthesis(ws), a.batch)
        def fb():
            w = ws.clone().requires_grad_(True); G.synthesis(w).mean().backward()
        r_b, _ = rate(fb, a.batch, repeats=2)
        print(f"{s:>5} {r_ds:>14.1f} {r_g:>16.1f} {r_b:>14.1f} {1000 / r_ds:>14.2f}")


if __name__ == "__main__":
    main()
