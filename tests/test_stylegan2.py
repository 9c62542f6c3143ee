"""StyleGAN2 loaders: fixtures in the NVlabs (PyTorch and TensorFlow era), rosinality and facetex formats are written
at run time from small random networks, then loaded back; corrupt, truncated and unexpected pickles must be refused.

The NVlabs fixtures reproduce the pickle structure of the real files without any NVlabs code: a module named
`torch_utils.persistence` (created here, in `sys.modules`, only while writing) provides `_reconstruct_persistent_obj`,
and each network pickles as `_reconstruct_persistent_obj(meta)` with `meta = {type, version, module_src, class_name,
state}` where `state` is the module's `__dict__` (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`, ...)."""
import argparse
import contextlib
import pickle
import pickletools
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

import facetex.stylegan2 as sg

torch.set_num_threads(1)

# ----------------------------------------------------------------------------------------------- small networks
TINY_G = dict(z_dim=32, w_dim=32, resolution=32, channel_base=1024, channel_max=32, mapping_layers=2)
TINY_D = dict(resolution=32, channel_base=1024, channel_max=32)


def _randomise(net, seed):
    "Perturb every tensor (biases, noise strengths, w_avg are zero at init) so a swapped or dropped tensor shows."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not name.endswith("resample_filter"):
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
    return net.eval()


def tiny_g(seed=0):
    torch.manual_seed(seed)
    return _randomise(sg.Generator(**TINY_G), seed)


def tiny_d(seed=1):
    torch.manual_seed(seed)
    return _randomise(sg.Discriminator(**TINY_D), seed)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_same_function(G1, G2):
    z = torch.randn(3, G1.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(G1(z, 0.7, noise_mode="const"), G2(z, 0.7, noise_mode="const"), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- fake modules
@contextlib.contextmanager
def fake_modules(**attrs_by_module):
    "Temporarily register modules (e.g. 'torch_utils.persistence') so pickle can name globals there."
    added = []
    try:
        for modname, attrs in attrs_by_module.items():
            parts = modname.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name); added.append(name)
            for k, v in attrs.items():
                v.__module__ = modname
                setattr(sys.modules[modname], k, v)
        yield
    finally:
        for name in reversed(added):
            del sys.modules[name]


def _reconstruct_persistent_obj(meta):  # noqa: ARG001 - only its name is pickled
    raise AssertionError("fixture writer only")


class EasyDict(dict):
    "Stand-in for dnnlib.util.EasyDict (pickled under that name)."


class Persistent:
    "Pickles like an NVlabs persistent object: `_reconstruct_persistent_obj(meta)`."
    def __init__(self, class_name, state):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="# the pickled module source would be here\n",
                    class_name=self.class_name, state=self.state)
        return (_reconstruct_persistent_obj, (meta,))


def to_persistent(module, init_kwargs=None):
    "An NVlabs-style persistent object for a facetex module (same class names, same `__dict__` layout)."
    state = {
        "training": False,
        "_parameters": OrderedDict((k, v) for k, v in module._parameters.items()),
        "_buffers": OrderedDict((k, v) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(), "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(), "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": OrderedDict((k, to_persistent(c)) for k, c in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": EasyDict(init_kwargs or {}),
        "weight_gain": np.float64(0.125),
        "activation": "lrelu",
    }
    return Persistent(type(module).__name__, state)


def nvlabs_g_kwargs():
    return EasyDict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                    mapping_kwargs=EasyDict(num_layers=2), synthesis_kwargs=EasyDict(channel_base=1024, channel_max=32, num_fp16_res=0, conv_clamp=None))


def nvlabs_d_kwargs():
    return EasyDict(c_dim=0, img_resolution=32, img_channels=3, architecture="resnet", channel_base=1024, channel_max=32,
                    num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs=EasyDict(), mapping_kwargs=EasyDict(),
                    epilogue_kwargs=EasyDict(mbstd_group_size=4))


def write_nvlabs_pkl(path, G, D, G_ema, extra=None):
    data = dict(G=to_persistent(G, nvlabs_g_kwargs()), D=to_persistent(D, nvlabs_d_kwargs()),
                G_ema=to_persistent(G_ema, nvlabs_g_kwargs()), augment_pipe=Persistent("AugmentPipe", {"_parameters": OrderedDict()}),
                training_set_kwargs=EasyDict(path="ffhq.zip", resolution=32))
    data.update(extra or {})
    with fake_modules(**{"torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
                         "dnnlib.util": {"EasyDict": EasyDict}}):
        path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def pickle_strings(b):
    "Every string argument in a pickle's opcodes (module and class names of the globals among them)."
    return {arg for _, arg, _ in pickletools.genops(b) if isinstance(arg, str)}


# ----------------------------------------------------------------------------------------------- NVlabs pickles
def test_nvlabs_pkl_round_trip(tmp_path):
    G, D, G_ema = tiny_g(0), tiny_d(1), tiny_g(2)
    p = write_nvlabs_pkl(tmp_path / "network-snapshot-000000.pkl", G, D, G_ema)
    names = pickle_strings(p.read_bytes())
    assert {"torch_utils.persistence", "_reconstruct_persistent_obj", "dnnlib.util", "EasyDict", "Generator"} <= names
    nets = sg.load_networks(p)
    assert set(nets) == {"G", "D", "G_ema"}
    assert isinstance(nets["G"], sg.Generator) and isinstance(nets["D"], sg.Discriminator)
    assert_same_state(nets["G"], G); assert_same_state(nets["D"], D); assert_same_state(nets["G_ema"], G_ema)
    assert_same_function(nets["G_ema"], G_ema)
    img = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nets["D"](img), D(img), rtol=0, atol=0)
    G1 = sg.load_generator(p)
    assert_same_state(G1, G_ema)


def test_nvlabs_pkl_wrong_class_in_slot(tmp_path):
    G, D = tiny_g(0), tiny_d(1)
    p = write_nvlabs_pkl(tmp_path / "swapped.pkl", G, D, G, extra=dict(G=Persistent("AugmentPipe", {"_parameters": OrderedDict()})))
    with pytest.raises(ValueError, match="expected an NVlabs Generator, got a persistent object of class 'AugmentPipe'"):
        sg.load_nvlabs_pkl(p)
    p2 = write_nvlabs_pkl(tmp_path / "dg.pkl", G, D, G, extra=dict(D=to_persistent(G, nvlabs_g_kwargs())))
    with pytest.raises(ValueError, match="expected an NVlabs Discriminator"):
        sg.load_nvlabs_pkl(p2)


def test_nvlabs_pkl_state_mismatch(tmp_path):
    "A snapshot whose kwargs do not match its tensors (here: a dropped parameter) is refused, naming the tensor."
    G, D = tiny_g(0), tiny_d(1)
    stub = to_persistent(G, nvlabs_g_kwargs())
    del stub.state["_modules"]["mapping"].state["_modules"]["fc1"].state["_parameters"]["bias"]
    p = write_nvlabs_pkl(tmp_path / "broken.pkl", G, D, G, extra=dict(G_ema=stub))
    with pytest.raises(ValueError, match="mapping.fc1.bias"):
        sg.load_nvlabs_pkl(p)


class Evil:
    def __init__(self, target): self.target = target
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.target}",))


class NotAllowed:
    "A class that is not one of the allowed globals (pickled under NVlabs' training.networks module name)."
    def __init__(self): self.x = 1


def test_unexpected_classes_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"G": Evil(sentinel)}))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl.*refusing to load global 'posix\.system'"):
        sg.load_nvlabs_pkl(p)
    assert not sentinel.exists()
    with fake_modules(**{"training.networks": {"Generator": NotAllowed}}):
        NotAllowed.__qualname__ = "Generator"
        (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"G": NotAllowed(), "D": None, "G_ema": None}))
    with pytest.raises(pickle.UnpicklingError, match="training.networks.Generator"):
        sg.load_networks(tmp_path / "plain.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="expected an NVlabs snapshot dict"):
        sg.load_networks(tmp_path / "list.pkl")
    (tmp_path / "counter.pkl").write_bytes(pickle.dumps({"G": __import__("collections").Counter("ab")}))
    with pytest.raises(pickle.UnpicklingError, match="collections.Counter"):
        sg.load_networks(tmp_path / "counter.pkl")


def _build_on_global(glob: bytes, attr: str, value_ops: bytes = b"cbuiltins\nset\n") -> bytes:
    "Hand-written pickle: look up an allowed global, then BUILD `{attr: value}` into it as slot state (setattr)."
    key = attr.encode()
    return b"\x80\x02c" + glob + b"\nN}X" + len(key).to_bytes(4, "little") + key + value_ops + b"s\x86b."


def test_build_cannot_tamper_with_allowed_globals():
    "Allowed names are not enough: BUILD on a looked-up global must not rewrite torch's functions or the stand-ins."
    import torch._utils
    before = torch._utils._rebuild_tensor_v2.__defaults__
    for fn in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        sg.safe_unpickle(_build_on_global(b"torch._utils\n" + fn.encode(), "__defaults__", b"X\x03\x00\x00\x00bad\x85"))
    assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    for glob in (b"torch_utils.persistence\n_reconstruct_persistent_obj", b"dnnlib.util\nEasyDict"):
        with pytest.raises(pickle.UnpicklingError, match="refusing to set attribute '__getattr__'"):
            sg.safe_unpickle(_build_on_global(glob, "__getattr__"))
    with pytest.raises(ValueError, match="corrupt"):   # its own __setstate__, called unbound on the class, fails
        sg.safe_unpickle(_build_on_global(b"dnnlib.tflib.network\nNetwork", "__getattr__"))
    assert sg.AttrDict(a=1).a == 1 and sg.TFNetworkStub(b=2).b == 2 and "__getattr__" not in sg.TFNetworkStub.__dict__
    for glob in (b"collections\nOrderedDict", b"numpy\nndarray", b"numpy\ndtype", b"builtins\nset"):   # immutable types
        with pytest.raises(ValueError, match="corrupt"):
            sg.safe_unpickle(_build_on_global(glob, "__len__"))
    with pytest.raises(pickle.UnpicklingError, match="torch.FloatStorage"):    # storages live inside torch.save blobs only
        sg.safe_unpickle(_build_on_global(b"torch\nFloatStorage", "__len__"))


@pytest.mark.parametrize("cut", [0.5, 0.95, 0.999])
def test_truncated_pkl(tmp_path, cut):
    p = write_nvlabs_pkl(tmp_path / "full.pkl", tiny_g(0), tiny_d(1), tiny_g(2))
    b = p.read_bytes()
    q = tmp_path / "truncated.pkl"
    q.write_bytes(b[: int(len(b) * cut)])
    with pytest.raises(ValueError, match=r"truncated\.pkl: corrupt or truncated pickle"):
        sg.load_networks(q)


def test_corrupt_pkl(tmp_path):
    for name, data in [("empty.pkl", b""), ("noise.pkl", np.random.default_rng(0).bytes(4096)), ("text.pkl", b"hello world\n" * 10)]:
        q = tmp_path / name
        q.write_bytes(data)
        with pytest.raises((ValueError, pickle.UnpicklingError), match=name.replace(".", r"\.")):
            sg.load_networks(q)
    # flip bytes inside a tensor's storage blob: the storage loader must fail cleanly, not crash
    p = write_nvlabs_pkl(tmp_path / "full.pkl", tiny_g(0), tiny_d(1), tiny_g(2))
    b = bytearray(p.read_bytes())
    i = b.find(b"PK\x03\x04") if b.find(b"PK\x03\x04") > 0 else b.find(b"\x80\x02\x8a\n")  # start of a torch.save blob
    assert i > 0
    b[i: i + 64] = b"\x00" * 64
    (tmp_path / "garbled.pkl").write_bytes(bytes(b))
    with pytest.raises(ValueError, match="garbled.pkl: corrupt or truncated"):
        sg.load_networks(tmp_path / "garbled.pkl")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        sg.load_networks(tmp_path / "nope.pkl")


# ----------------------------------------------------------------------------------------------- TensorFlow-era pickles
class Network:
    "Pickles like dnnlib.tflib.network.Network: its state dict via __getstate__."
    def __init__(self, **state): self._state = state
    def __getstate__(self): return self._state
    def __setstate__(self, s): self._state = s


def _kkio(w, flip=False):
    a = w.detach().numpy().transpose(2, 3, 1, 0)
    return np.ascontiguousarray(a[::-1, ::-1] if flip else a)


def tf_generator(G):
    "TensorFlow variables of a facetex Generator, in the layout of NVlabs' TF StyleGAN2 (the inverse of legacy.py)."
    sd = {k: v.detach() for k, v in G.state_dict().items()}
    n = lambda k: sd[k].numpy()
    mapping = [(f"Dense{i}/{leaf}", n(f"mapping.fc{i}.weight").T if leaf == "weight" else n(f"mapping.fc{i}.bias"))
               for i in range(G.mapping.num_layers) for leaf in ("weight", "bias")]
    syn = [("4x4/Const/const", n("synthesis.b4.const")[None])]

    def layer(tfname, nv, flip=False, noise_idx=None):
        out = [(f"{tfname}/weight", _kkio(sd[f"{nv}.weight"], flip)), (f"{tfname}/bias", n(f"{nv}.bias")),
               (f"{tfname}/mod_weight", n(f"{nv}.affine.weight").T), (f"{tfname}/mod_bias", n(f"{nv}.affine.bias") - 1)]
        if noise_idx is not None:
            out += [(f"{tfname}/noise_strength", np.float32(n(f"{nv}.noise_strength"))), (f"noise{noise_idx}", n(f"{nv}.noise_const")[None, None])]
        return out
    syn += layer("4x4/Conv", "synthesis.b4.conv1", noise_idx=0) + layer("4x4/ToRGB", "synthesis.b4.torgb")
    for r in G.synthesis.block_resolutions[1:]:
        l2 = int(np.log2(r))
        syn += layer(f"{r}x{r}/Conv0_up", f"synthesis.b{r}.conv0", flip=True, noise_idx=2 * l2 - 5)
        syn += layer(f"{r}x{r}/Conv1", f"synthesis.b{r}.conv1", noise_idx=2 * l2 - 4)
        syn += layer(f"{r}x{r}/ToRGB", f"synthesis.b{r}.torgb")
    kw = dict(latent_size=G.z_dim, dlatent_size=G.w_dim, label_size=0, resolution=G.img_resolution, num_channels=3,
              mapping_layers=G.mapping.num_layers, fmap_base=1024 // 2, fmap_max=32, truncation_psi=0.5)
    comp = dict(mapping=Network(version=4, name="G_mapping", static_kwargs=kw, components={}, variables=mapping,
                                build_module_src="# TF source", build_func_name="G_mapping"),
                synthesis=Network(version=4, name="G_synthesis", static_kwargs=kw, components={}, variables=syn,
                                  build_module_src="# TF source", build_func_name="G_synthesis_stylegan2"))
    return Network(version=4, name="G", static_kwargs=kw, components=comp, variables=[("dlatent_avg", n("mapping.w_avg")), ("lod", np.float32(0))],
                   build_module_src="# TF source", build_func_name="G_main")


def tf_discriminator(D):
    sd = {k: v.detach().numpy() for k, v in D.state_dict().items()}
    v = []
    top = D.img_resolution
    v += [(f"{top}x{top}/FromRGB/weight", _kkio(torch.from_numpy(sd[f"b{top}.fromrgb.weight"]))), (f"{top}x{top}/FromRGB/bias", sd[f"b{top}.fromrgb.bias"])]
    for r in D.block_resolutions:
        for nv, tf in (("conv0", "Conv0"), ("conv1", "Conv1_down")):
            v += [(f"{r}x{r}/{tf}/weight", _kkio(torch.from_numpy(sd[f"b{r}.{nv}.weight"]))), (f"{r}x{r}/{tf}/bias", sd[f"b{r}.{nv}.bias"])]
        v += [(f"{r}x{r}/Skip/weight", _kkio(torch.from_numpy(sd[f"b{r}.skip.weight"])))]
    v += [("4x4/Conv/weight", _kkio(torch.from_numpy(sd["b4.conv.weight"]))), ("4x4/Conv/bias", sd["b4.conv.bias"]),
          ("4x4/Dense0/weight", sd["b4.fc.weight"].T), ("4x4/Dense0/bias", sd["b4.fc.bias"]),
          ("Output/weight", sd["b4.out.weight"].T), ("Output/bias", sd["b4.out.bias"])]
    kw = dict(num_channels=3, resolution=top, label_size=0, fmap_base=512, fmap_max=32, mbstd_group_size=4)
    return Network(version=4, name="D", static_kwargs=kw, components={}, variables=v, build_module_src="#", build_func_name="D_stylegan2")


def write_tf_pkl(path, G, D, Gs):
    with fake_modules(**{"dnnlib.tflib.network": {"Network": Network}}):
        path.write_bytes(pickle.dumps((tf_generator(G), tf_discriminator(D), tf_generator(Gs)), protocol=3))
    return path


def test_tf_pkl_round_trip(tmp_path):
    G, D, Gs = tiny_g(0), tiny_d(1), tiny_g(2)
    p = write_tf_pkl(tmp_path / "stylegan2-tiny-config-f.pkl", G, D, Gs)
    assert "dnnlib.tflib.network Network" in pickle_strings(p.read_bytes())  # protocol 3: a GLOBAL opcode
    nets = sg.load_networks(p)
    assert_same_state(nets["G"], G); assert_same_state(nets["G_ema"], Gs); assert_same_state(nets["D"], D)
    assert_same_function(nets["G_ema"], Gs)


def test_tf_pkl_unknown_kwarg(tmp_path):
    G = tiny_g(0)
    tg = tf_generator(G); tg._state["static_kwargs"] = dict(tg._state["static_kwargs"], fancy_new_option=3)
    with fake_modules(**{"dnnlib.tflib.network": {"Network": Network}}):
        (tmp_path / "odd.pkl").write_bytes(pickle.dumps((tg, tf_discriminator(tiny_d(1)), tg)))
    with pytest.raises(ValueError, match="fancy_new_option"):
        sg.load_networks(tmp_path / "odd.pkl", which=("G",))
    # run-time options that NVlabs' legacy.py accepts (StyleGAN2-ADA TF pickles) do not block loading
    tg._state["static_kwargs"] = dict(tf_generator(G)._state["static_kwargs"], conditioning="label", fused_modconv=True,
                                      truncation_psi=0.5)
    td = tf_discriminator(tiny_d(1)); td._state["static_kwargs"] = dict(td._state["static_kwargs"], conditioning="label")
    with fake_modules(**{"dnnlib.tflib.network": {"Network": Network}}):
        (tmp_path / "ada.pkl").write_bytes(pickle.dumps((tg, td, tg)))
    nets = sg.load_networks(tmp_path / "ada.pkl")
    assert_same_state(nets["G_ema"], G)


def test_tf_flip_matters():
    "The Conv0_up weights are stored flipped in TF: reading them unflipped must give a different network."
    G = tiny_g(0)
    tg = tf_generator(G)
    syn = tg._state["components"]["synthesis"]._state
    syn["variables"] = [(k, np.ascontiguousarray(v[::-1, ::-1]) if k.endswith("Conv0_up/weight") else v) for k, v in syn["variables"]]
    G2 = sg.convert_tf_generator(sg.TFNetworkStub(tg._state | {"components": {k: sg.TFNetworkStub(c._state) for k, c in tg._state["components"].items()}}))
    assert not torch.equal(G2.state_dict()["synthesis.b8.conv0.weight"], G.state_dict()["synthesis.b8.conv0.weight"])
    torch.testing.assert_close(G2.state_dict()["synthesis.b8.conv0.weight"], G.state_dict()["synthesis.b8.conv0.weight"].flip([2, 3]))


# ----------------------------------------------------------------------------------------------- rosinality
def rosinality_g(G):
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    out = OrderedDict()
    for i in range(G.mapping.num_layers):
        out[f"style.{i + 1}.weight"], out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"][None]

    def styled(nv, ros, up=False):
        out[f"{ros}.conv.weight"] = sd[f"{nv}.weight"][None]
        out[f"{ros}.conv.modulation.weight"], out[f"{ros}.conv.modulation.bias"] = sd[f"{nv}.affine.weight"], sd[f"{nv}.affine.bias"]
        if up: out[f"{ros}.conv.blur.kernel"] = torch.ones(4, 4) / 4
        out[f"{ros}.noise.weight"] = sd[f"{nv}.noise_strength"].reshape(1)
        out[f"{ros}.activate.bias"] = sd[f"{nv}.bias"]

    def torgb(nv, ros, up=False):
        if up: out[f"{ros}.upsample.kernel"] = torch.ones(4, 4) / 4
        out[f"{ros}.bias"] = sd[f"{nv}.bias"].reshape(1, -1, 1, 1)
        out[f"{ros}.conv.weight"] = sd[f"{nv}.weight"][None]
        out[f"{ros}.conv.modulation.weight"], out[f"{ros}.conv.modulation.bias"] = sd[f"{nv}.affine.weight"], sd[f"{nv}.affine.bias"]
    styled("synthesis.b4.conv1", "conv1"); torgb("synthesis.b4.torgb", "to_rgb1")
    out["noises.noise_0"] = sd["synthesis.b4.conv1.noise_const"][None, None]
    for k, r in enumerate(G.synthesis.block_resolutions[1:]):
        styled(f"synthesis.b{r}.conv0", f"convs.{2 * k}", up=True); styled(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}")
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}", up=True)
        out[f"noises.noise_{2 * k + 1}"] = sd[f"synthesis.b{r}.conv0.noise_const"][None, None]
        out[f"noises.noise_{2 * k + 2}"] = sd[f"synthesis.b{r}.conv1.noise_const"][None, None]
    return out


def rosinality_d(D):
    sd = {k: v.detach().clone() for k, v in D.state_dict().items()}
    top = D.img_resolution
    out = OrderedDict({"convs.0.0.weight": sd[f"b{top}.fromrgb.weight"], "convs.0.1.bias": sd[f"b{top}.fromrgb.bias"]})
    for i, r in enumerate(D.block_resolutions, start=1):
        out[f"convs.{i}.conv1.0.weight"], out[f"convs.{i}.conv1.1.bias"] = sd[f"b{r}.conv0.weight"], sd[f"b{r}.conv0.bias"]
        out[f"convs.{i}.conv2.0.kernel"] = torch.ones(4, 4) / 16
        out[f"convs.{i}.conv2.1.weight"], out[f"convs.{i}.conv2.2.bias"] = sd[f"b{r}.conv1.weight"], sd[f"b{r}.conv1.bias"]
        out[f"convs.{i}.skip.0.kernel"] = torch.ones(4, 4) / 16
        out[f"convs.{i}.skip.1.weight"] = sd[f"b{r}.skip.weight"]
    out["final_conv.0.weight"], out["final_conv.1.bias"] = sd["b4.conv.weight"], sd["b4.conv.bias"]
    out["final_linear.0.weight"], out["final_linear.0.bias"] = sd["b4.fc.weight"], sd["b4.fc.bias"]
    out["final_linear.1.weight"], out["final_linear.1.bias"] = sd["b4.out.weight"], sd["b4.out.bias"]
    return out


def test_rosinality_round_trip(tmp_path):
    G, D, G_ema = tiny_g(0), tiny_d(1), tiny_g(2)
    ck = {"g": rosinality_g(G), "d": rosinality_d(D), "g_ema": rosinality_g(G_ema), "latent_avg": G_ema.mapping.w_avg.clone(),
          "g_optim": {"state": {}, "param_groups": []}, "args": argparse.Namespace(size=32, channel_multiplier=2), "ada_aug_p": 0.0}
    torch.save(ck, tmp_path / "010000.pt")
    nets = sg.load_networks(tmp_path / "010000.pt")
    assert_same_state(nets["G_ema"], G_ema); assert_same_state(nets["D"], D)
    assert_same_function(nets["G_ema"], G_ema)
    # without latent_avg (a checkpoint from training): w_avg is estimated from mapped z, not left at zero
    del ck["latent_avg"]
    torch.save(ck, tmp_path / "no_avg.pt")
    Gl = sg.load_generator(tmp_path / "no_avg.pt")
    with torch.no_grad():
        ref = G_ema.mapping(torch.randn(20000, 32, generator=torch.Generator().manual_seed(123)))[:, 0].mean(0)
    assert (Gl.mapping.w_avg - ref).abs().max() < 0.1 * ref.abs().max()
    for k, v in G_ema.state_dict().items():
        if k != "mapping.w_avg": assert torch.equal(Gl.state_dict()[k], v), k


def test_rosinality_refuses_code(tmp_path):
    torch.save({"g_ema": rosinality_g(tiny_g(0)), "evil": Evil(tmp_path / "pwned")}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="evil.pt"):
        sg.load_networks(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    b = (tmp_path / "evil.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(b[: len(b) // 2])
    with pytest.raises(ValueError, match="cut.pt: corrupt or truncated"):
        sg.load_networks(tmp_path / "cut.pt")


# ----------------------------------------------------------------------------------------------- facetex format
def test_facetex_checkpoint(tmp_path):
    G, D = tiny_g(0), tiny_d(1)
    Gm = sg.Generator(z_dim=16, w_dim=24, resolution=32, channel_multiplier=1 / 16, mapping_layers=3).eval()
    f = sg.save_checkpoint(tmp_path / "ckpt" / "step100", G=G, D=D, G_ema=Gm)
    assert f.name == "step100.safetensors" and (tmp_path / "ckpt" / "step100.json").exists()
    nets = sg.load_networks(tmp_path / "ckpt" / "step100.json")
    assert_same_state(nets["G"], G); assert_same_state(nets["D"], D); assert_same_state(nets["G_ema"], Gm)
    assert nets["G_ema"].num_ws == 8 and nets["G_ema"].w_dim == 24
    b = f.read_bytes(); f.write_bytes(b[: len(b) // 3])
    with pytest.raises(ValueError, match="corrupt or truncated safetensors"):
        sg.load_networks(f)
    (tmp_path / "ckpt" / "step100.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a facetex StyleGAN2 config"):
        sg.load_networks(f)


# ----------------------------------------------------------------------------------------------- transfer learning
def test_init_from_pretrained_other_sizes():
    src = tiny_g(0)
    torch.manual_seed(9)
    big = sg.Generator(z_dim=32, w_dim=32, resolution=128, channel_base=1024, channel_max=32, mapping_layers=2)
    before = {k: v.clone() for k, v in big.state_dict().items()}
    rep = sg.init_from_pretrained(big, src)
    for k, v in src.state_dict().items():                    # every shared layer equals the source
        assert torch.equal(big.state_dict()[k], v), k
    # new blocks: channels at 64/128 are 16/8 (1024/r), so conv weights cannot be repeated and stay initialised
    assert "synthesis.b64.conv0.weight" in rep["initialised"]
    assert torch.equal(big.state_dict()["synthesis.b128.conv1.weight"], before["synthesis.b128.conv1.weight"])
    assert "synthesis.b64.conv1.noise_const" in rep["resized"] and big.state_dict()["synthesis.b64.conv1.noise_const"].shape == (64, 64)
    # the discriminator transfers the same way; the new top block (with its fromRGB) repeats the old top block
    d_src = tiny_d(1)
    torch.manual_seed(10)
    d_big = sg.Discriminator(resolution=64, channel_base=2048, channel_max=32)
    rep_d = sg.init_from_pretrained(d_big, d_src)
    for k, v in d_src.state_dict().items():
        if not k.startswith("b32.fromrgb"):
            assert torch.equal(d_big.state_dict()[k], v), k
    assert {"b64.fromrgb.weight", "b64.conv0.weight", "b64.skip.weight"} <= set(rep_d["repeated"]) and not rep_d["initialised"]
    assert torch.equal(d_big.state_dict()["b64.fromrgb.weight"], d_src.state_dict()["b32.fromrgb.weight"])
    with pytest.raises(ValueError, match="`extend` must be"):
        sg.init_from_pretrained(big, src, extend="zeros")
