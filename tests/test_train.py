"""facetex.train: the CLI end to end (subprocess), exact resume, image folder/zip datasets, bad arguments, and a
2-process CPU run under `accelerate launch` whose processes must end with bitwise-identical networks."""
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facetex.synthetic import SyntheticFaces, write_image_folder
from facetex.train import (ImageFolderDataset, TrainConfig, latest_checkpoint, list_checkpoints, main, parse_args,
                           read_log, train)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img_resolution", "32", "--tex_resolution", "32", "--channel_base", "256", "--channel_max", "32",
        "--z_dim", "32", "--w_dim", "32", "--synthetic_n", "32", "--n_samples", "4", "--progress", "false"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _tiny_cfg(out_dir, **kw):
    d = dict(out_dir=str(out_dir), steps=4, batch_size=2, img_resolution=32, tex_resolution=32, channel_base=256,
             channel_max=32, z_dim=32, w_dim=32, synthetic_n=32, n_samples=4, progress=False, r1_every=2,
             sample_every=0, checkpoint_every=2, log_every=1)
    d.update(kw)
    return TrainConfig.from_dict(d)


def _load(ck, name):
    from safetensors.torch import load_file
    return load_file(str(Path(ck) / f"{name}.safetensors"))


def test_cli_subprocess_writes_checkpoint_samples_logs(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "facetex.train", "--out_dir", str(out), "--steps", "4", "--batch_size", "2",
           "--sample_every", "2", "--checkpoint_every", "2", "--log_every", "2", *TINY]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # checkpoints: both intervals, complete, step recorded, weights loadable into a fresh pipeline
    cks = list_checkpoints(out)
    assert [c.name for c in cks] == ["step-0000002", "step-0000004"]
    st = json.loads((cks[-1] / "state.json").read_text())
    assert st["step"] == 4 and st["world_size"] == 1 and st["images_seen"] == 8
    cfg = TrainConfig.load(out / "config.json")
    assert cfg.steps == 4 and cfg.pipeline.img_resolution == 32 and cfg.pipeline.channel_max == 32
    from facetex.pipeline import TexturePipeline
    pipe = TexturePipeline(cfg.pipeline)
    pipe.G_T.load_state_dict(_load(cks[-1], "G_T"))
    pipe.D.load_state_dict(_load(cks[-1], "D"))
    fresh = TexturePipeline(cfg.pipeline)
    moved = [k for k, v in fresh.G_T.state_dict().items() if not torch.equal(v, pipe.G_T.state_dict()[k])]
    assert moved, "training did not change G_T"
    opt = torch.load(cks[-1] / "optim.pt", weights_only=True)
    assert set(opt) >= {"G", "D"} and opt["G"]["state"]
    # samples: PNG grids of 4 composites (32²) and 4 textures (32²) in a 2×2 grid with 1-px padding
    from PIL import Image
    for kind in ("composite", "texture"):
        for step in (0, 2, 4):
            im = Image.open(out / "samples" / f"{kind}-{step:07d}.png")
            assert im.size == (2 * 33 + 1, 2 * 33 + 1), (kind, step, im.size)
    assert (out / "samples" / "reals.png").is_file()
    # logs: one record per log interval, finite losses from both phases
    log = read_log(out)
    assert [r["step"] for r in log] == [2, 4]
    for rec in log:
        keys = [k for k in rec if k.startswith(("G/", "D/"))]
        assert any(k.startswith("G/") for k in keys) and any(k.startswith("D/") for k in keys)
        assert all(np.isfinite(rec[k]) for k in keys)
    assert "done: 4 steps" in r.stdout


def test_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    a = train(_tiny_cfg(tmp_path / "a", steps=4))                       # straight through
    b1 = train(_tiny_cfg(tmp_path / "b", steps=2))                      # half ...
    assert b1.step == 2 and b1.resumed_from is None
    b2 = train(_tiny_cfg(tmp_path / "b", steps=4))                      # ... then resume the other half
    assert b2.resumed_from is not None and b2.resumed_from.name == "step-0000002" and b2.step == 4
    ca, cb = latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b")
    for name in ("G_T", "G_T_ema", "D"):
        sa, sb = _load(ca, name), _load(cb, name)
        assert sa.keys() == sb.keys()
        for k in sa: torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7, msg=f"{name}.{k}")
    # the logged losses of steps 3-4 agree too, and the optimiser states
    la, lb = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    for ra, rb in zip(la[2:], lb[2:]):
        for k in ra:
            if "/" in k: assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), k
    oa, ob = (torch.load(c / "optim.pt", weights_only=True) for c in (ca, cb))
    for ph in ("G", "D"):
        for i, s in oa[ph]["state"].items():
            torch.testing.assert_close(s["exp_avg_sq"], ob[ph]["state"][i]["exp_avg_sq"], rtol=1e-6, atol=1e-9)
    # not vacuous: another seed gives other weights
    c = train(_tiny_cfg(tmp_path / "c", steps=2, seed=1))
    sc, s1 = _load(latest_checkpoint(tmp_path / "c"), "G_T"), _load(tmp_path / "b" / "checkpoints" / "step-0000002", "G_T")
    assert any(not torch.equal(sc[k], s1[k]) for k in sc)
    # a finished run resumed with the same steps does nothing more; a different pipeline config is refused
    again = train(_tiny_cfg(tmp_path / "a", steps=4))
    assert again.step == 4 and again.resumed_from.name == "step-0000004"
    with pytest.raises(ValueError, match="different pipeline config"):
        train(_tiny_cfg(tmp_path / "a", steps=6, relight=False))


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    src = SyntheticFaces(n=5, resolution=32, seed=3)
    write_image_folder(src, root / "ffhq", n=5, zip=True)
    return root, torch.stack([src[i] for i in range(5)])


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_image_datasets(image_dirs, kind):
    root, ref = image_dirs
    path = root / "ffhq" if kind == "folder" else root / "ffhq.zip"
    ds = ImageFolderDataset(path, 32)
    assert len(ds) == 5 and ds.files[0] == "00000/00000.png" and ds.files[-1] == "00000/00004.png"
    x = torch.stack([ds[i] for i in range(5)])
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x, ref, rtol=0, atol=0.5 / 255 + 1e-5)          # 8-bit PNG round trip only
    y = torch.stack([ImageFolderDataset(path, 16)[i] for i in range(5)])
    assert y.shape == (5, 3, 16, 16)
    assert (F.avg_pool2d(ref, 2) - y).abs().mean() < 0.03                       # resized ≈ 2×2 box average
    # a DataLoader with workers reads the zip from every worker
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)
    torch.testing.assert_close(next(iter(dl)), x)


def test_non_square_jpeg_is_centre_cropped(tmp_path):
    from PIL import Image
    a = np.zeros((20, 40, 3), np.uint8); a[:, 10:30] = 200                   # a bright centre square 20×20
    (tmp_path / "d").mkdir(); Image.fromarray(a).save(tmp_path / "d" / "x.JPG", quality=100)
    x = ImageFolderDataset(tmp_path / "d", 20)[0]
    assert x.shape == (3, 20, 20) and (x - 200 / 255).abs().max() < 0.05


def _cli_error(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, err.getvalue()


def test_bad_arguments(tmp_path):
    code, msg = _cli_error(["--steps", "2", "--no_such_option", "3"])
    assert code == 2 and "unrecognized arguments: --no_such_option" in msg
    code, msg = _cli_error(["--data", str(tmp_path / "missing")])
    assert code == 2 and "`data`" in msg and "missing does not exist" in msg
    code, msg = _cli_error(["--batch_size", "0"])
    assert code == 2 and "`batch_size` must be an integer >= 1, got 0" in msg
    code, msg = _cli_error(["--steps", "many"])
    assert code == 2 and "--steps" in msg and "invalid int value" in msg
    code, msg = _cli_error(["--mixed_precision", "fp8"])
    assert code == 2 and "mixed_precision" in msg
    code, msg = _cli_error(["--img_resolution", "48"])
    assert code == 2 and "img_resolution" in msg
    (tmp_path / "notzip.txt").write_text("x")
    code, msg = _cli_error(["--data", str(tmp_path / "notzip.txt")])
    assert code == 2 and "not a .zip" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG images found"):
        ImageFolderDataset(tmp_path / "empty", 32)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        ImageFolderDataset(tmp_path / "bad.zip", 32)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_tiny_cfg(tmp_path / "r", synthetic_n=1, steps=1))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16.*needs a GPU"):
            train(_tiny_cfg(tmp_path / "h", mixed_precision="fp16"))
    from facetex.pipeline import TexturePipeline
    other = _tiny_cfg(tmp_path / "p", relight=False)
    with pytest.raises(ValueError, match="differs from `cfg.pipeline`"):
        train(_tiny_cfg(tmp_path / "p"), pipeline=TexturePipeline(other.pipeline))
    assert not (tmp_path / "p").exists()                                         # refused before writing anything
    # --help lists the trainer's and the pipeline's fields
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e: main(["--help"])
    assert e.value.code == 0
    for opt in ("--steps", "--batch_size", "--data", "--ema_kimg", "--mixed_precision", "--img_resolution", "--r1_every",
                "--pipeline.seed", "--resume"):
        assert opt in out.getvalue(), opt
    # JSON config + overrides
    cfg = _tiny_cfg(tmp_path / "x", steps=3)
    cfg.save(tmp_path / "c.json")
    got = parse_args(["--config", str(tmp_path / "c.json"), "--steps", "5"])
    assert got.steps == 5 and got.pipeline.channel_max == 32 and got.out_dir == str(tmp_path / "x")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_two_processes_cpu_stay_in_sync(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "facetex.train", "--cpu", "true", "--out_dir", str(out), "--steps", "2", "--batch_size", "1",
           "--r1_every", "1", "--log_every", "1", "--sample_every", "0", "--checkpoint_every", "1", *TINY]
    env = _env(); env["HF_HOME"] = str(tmp_path / "hf")                      # no user accelerate config
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for ck in list_checkpoints(out):
        st = json.loads((ck / "state.json").read_text())
        assert st["world_size"] == 2 and len(st["digests"]) == 2
        assert st["digests"][0] == st["digests"][1]                           # bitwise-identical networks
        assert len(st["rng"]) == 2 and st["rng"][0]["torch"] != st["rng"][1]["torch"]   # but per-process streams
    assert st["step"] == 2 and st["images_seen"] == 4
    assert [rec["step"] for rec in read_log(out)] == [1, 2]                   # main process logs once per step


def test_bf16_autocast_runs(tmp_path):
    res = train(_tiny_cfg(tmp_path / "bf16", steps=2, mixed_precision="bf16", checkpoint_every=0))
    assert res.step == 2
    assert all(np.isfinite(v) for r in res.log for k, v in r.items() if "/" in k)
    st = json.loads((latest_checkpoint(tmp_path / "bf16") / "state.json").read_text())
    assert st["config"]["mixed_precision"] == "bf16"
    # after bf16 training the weights are still float32 (autocast changes the compute, not the parameters)
    assert all(v.dtype == torch.float32 for v in _load(latest_checkpoint(tmp_path / "bf16"), "G_T").values())


def test_all_reduce_gradients_gives_the_global_batch_gradient():
    from facetex.train import all_reduce_gradients
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    params, x = list(net.parameters()), torch.randn(6, 3)

    def grads(batch):
        net.zero_grad(set_to_none=True); net(batch).pow(2).mean().backward()
        return [p.grad.clone() for p in params]
    ref = grads(x)                                                  # the gradient of the global batch
    g0 = torch.cat([g.reshape(-1) for g in grads(x[:3])])           # process 0's half
    grads(x[3:])                                                    # net now holds process 1's half

    class TwoProcesses:                                             # process 1's view of a 2-process all-reduce
        num_processes = 2
        def reduce(self, t, reduction):
            assert reduction == "mean"
            return (t + g0) / 2
    all_reduce_gradients(params, TwoProcesses())
    for p, r in zip(params, ref): torch.testing.assert_close(p.grad, r)
