"""Models through a real server: TorchScript and checkpoint models made here
with PyTorch, loaded with the client contract's calls, their outputs compared
with PyTorch's own on the same inputs.

The server loads its model loaders from the `mymps-models` plugin in the
plugins folder beside its binary (scripts/setup.sh puts it there).
"""

import numpy as np
import pytest
import torch
from torch import nn

from mymps import ModelError, ModelNotFoundError, BadArgumentError

torch.manual_seed(0)


class MLP(nn.Module):
    """The documented equivalent of mymps's `mlp` class."""

    def __init__(self, sizes, activation="relu"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "tanh": nn.Tanh(),
                    "silu": nn.SiLU(), "sigmoid": nn.Sigmoid()}[activation]

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class SmallCNN(nn.Module):
    """The documented equivalent of mymps's `cnn` class."""

    def __init__(self, in_channels=3, num_classes=10, channels=(8, 16), kernel_size=3):
        super().__init__()
        layers, c = [], in_channels
        for h in channels:
            layers += [nn.Conv2d(c, h, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
            c = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 2)

    def forward(self, x, y):
        return self.a(x), self.b(y).softmax(-1)


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return {"last_hidden_state": h, "pooler_output": h.tanh().mean(0)}


def reference(model, *xs):
    with torch.no_grad():
        return model(*[torch.from_numpy(x) for x in xs])


def test_torchscript_single_tuple_and_dict_outputs(client, tmp_path):
    x = np.random.rand(5, 4).astype(np.float32)
    y = np.random.rand(5, 4).astype(np.float32)

    mlp = MLP([4, 16, 3]).eval()
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(path))
    info = client.load_model("ts/mlp", model_type="torchscript", model_path=str(path))
    assert info["status"] == "ok" and info["name"] == "ts/mlp"
    assert info["metadata"]["parameters"] == str(sum(p.numel() for p in mlp.parameters()))
    out = client.infer("ts/mlp", {"0": x})
    assert list(out) == ["output"]
    np.testing.assert_allclose(out["output"], reference(mlp, x).numpy(), atol=1e-5)

    two = TwoHeads().eval()
    torch.jit.save(torch.jit.script(two), str(tmp_path / "two.pt"))
    client.load_model("two", model_type="torchscript", model_path=str(tmp_path / "two.pt"))
    out = client.infer("two", {"0": x, "1": y})
    want = reference(two, x, y)
    assert sorted(out) == ["0", "1"]
    for i in range(2):
        np.testing.assert_allclose(out[str(i)], want[i].numpy(), atol=1e-5)

    named = Named().eval()
    torch.jit.save(torch.jit.script(named), str(tmp_path / "named.pt"))
    client.load_model("named", model_type="torchscript", model_path=str(tmp_path / "named.pt"))
    out = client.infer("named", {"0": x})
    want = reference(named, x)
    assert sorted(out) == ["last_hidden_state", "pooler_output"]
    for k in out:
        np.testing.assert_allclose(out[k], want[k].numpy(), atol=1e-5)

    # dtype is honoured: the module and float inputs become float64.
    client.load_model("mlp64", model_type="torchscript", model_path=str(path), dtype="float64")
    out = client.infer("mlp64", {"0": x})["output"]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, reference(mlp.double(), x.astype(np.float64)).numpy(), atol=1e-10)

    with pytest.raises(BadArgumentError, match="positional inputs"):
        client.infer("ts/mlp", {"input": x})
    with pytest.raises(ModelError, match="mat1 and mat2 shapes cannot be multiplied"):
        client.infer("ts/mlp", {"0": np.zeros((2, 7), np.float32)})
    with pytest.raises(ModelError, match="missing.pt' cannot be opened"):
        client.load_model("x", model_type="torchscript", model_path=str(tmp_path / "missing.pt"))
    for name in ["ts/mlp", "two", "named", "mlp64"]:
        client.unload_model(name)


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_checkpoint_mlp_and_cnn_match_pytorch(client, tmp_path, suffix):
    mlp = MLP([6, 32, 16, 4], activation="tanh").eval()
    path = tmp_path / f"mlp{suffix}"
    torch.save(mlp.state_dict(), str(path))
    info = client.load_model("ck/mlp", model_type="checkpoint", model_path=str(path),
                             model_class="mlp", config={"activation": "tanh"})
    assert info["metadata"]["architecture"] == "mlp"
    x = np.random.rand(8, 6).astype(np.float32)
    np.testing.assert_allclose(client.infer("ck/mlp", {"0": x})["output"], reference(mlp, x).numpy(), atol=1e-5)

    cnn = SmallCNN().eval()
    cpath = tmp_path / f"cnn{suffix}"
    torch.save(cnn.state_dict(), str(cpath))
    client.load_model("ck/cnn", model_type="checkpoint", model_path=str(cpath), model_class="cnn")
    img = np.random.rand(2, 3, 32, 32).astype(np.float32)
    out = client.infer("ck/cnn", {"0": img})["output"]
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out, reference(cnn, img).numpy(), atol=1e-5)

    lin = nn.Linear(5, 2).eval()
    lpath = tmp_path / f"lin{suffix}"
    torch.save(lin.state_dict(), str(lpath))
    client.load_model("ck/lin", model_type="checkpoint", model_path=str(lpath), model_class="linear")
    z = np.random.rand(3, 5).astype(np.float32)
    np.testing.assert_allclose(client.infer("ck/lin", z)["output"], reference(lin, z).numpy(), atol=1e-6)

    names = [m["name"] for m in client.list_models()]
    assert {"ck/mlp", "ck/cnn", "ck/lin"} <= set(names)
    assert names == sorted(names)
    for n in ["ck/mlp", "ck/cnn", "ck/lin"]:
        assert client.unload_model(n) == {"status": "ok", "name": n}


def test_checkpoint_errors_list_what_differs(client, tmp_path):
    mlp = MLP([6, 8, 3])
    path = tmp_path / "mlp.pt"
    torch.save(mlp.state_dict(), str(path))
    with pytest.raises(ModelError, match=r"unknown model_class 'resnet999' for model_type 'checkpoint'; available: cnn, linear, mlp"):
        client.load_model("e", model_type="checkpoint", model_path=str(path), model_class="resnet999")
    with pytest.raises(ModelError, match=r"shape mismatches: layers\.0\.bias: checkpoint \[8\], model \[9\]"):
        client.load_model("e", model_type="checkpoint", model_path=str(path), model_class="mlp",
                          config={"sizes": [6, 9, 3]})
    with pytest.raises(ModelError, match=r"missing keys: layers\.2\.bias, layers\.2\.weight"):
        client.load_model("e", model_type="checkpoint", model_path=str(path), model_class="mlp",
                          config={"sizes": [6, 8, 3, 2]})
    cnn_sd = SmallCNN().state_dict()
    cnn_sd["extra.weight"] = torch.zeros(1)
    torch.save(cnn_sd, str(tmp_path / "cnn.pt"))
    with pytest.raises(ModelError, match=r"unexpected keys: extra\.weight"):
        client.load_model("e", model_type="checkpoint", model_path=str(tmp_path / "cnn.pt"), model_class="cnn")
    with pytest.raises(BadArgumentError, match="need model_class"):
        client.load_model("e", model_type="checkpoint", model_path=str(path))
    with pytest.raises(ModelError, match="unknown model_type 'onnx'"):
        client.load_model("e", model_type="onnx", model_path=str(path))
    with pytest.raises(ModelNotFoundError, match="'nope' is not loaded"):
        client.infer("nope", {"0": np.zeros(3, np.float32)})
    with pytest.raises(ModelNotFoundError):
        client.model_info("nope")
    with pytest.raises(ModelNotFoundError):
        client.unload_model("nope")
    # The client and server keep working.
    assert client.health()["status"] == "ok"


def test_infer_on_remote_tensors_gives_the_bytes_of_infer_on_arrays(client, mymps_server, tmp_path):
    """Inputs given as RemoteTensors (this client's handles, and a tensor
    another client shared by name) give the bytes that shipped arrays give;
    kept results are RemoteTensors that a following exec uses in place."""
    import os

    import mymps

    x = np.random.rand(5, 4).astype(np.float32)
    y = np.random.rand(5, 4).astype(np.float32)
    two = TwoHeads().eval()
    torch.jit.save(torch.jit.script(two), str(tmp_path / "two.pt"))
    client.load_model("two-h", model_type="torchscript", model_path=str(tmp_path / "two.pt"))
    base = client.health()["resident_tensors"]
    shipped = client.infer("two-h", {"0": x, "1": y})

    other = mymps.MympsClient(mymps_server.host, mymps_server.port)
    try:
        name = f"infer-y-{os.getpid()}"
        other.share(other.put(y), name)
        tx, ty = client.put(x), client.remote(name)
        # Handles in, arrays out: the same bytes; a mix of both too.
        for inputs in ({"0": tx, "1": ty}, {"0": x, "1": ty}, {"0": tx, "1": y}):
            out = client.infer("two-h", inputs)
            assert sorted(out) == ["0", "1"]
            for k in out:
                assert isinstance(out[k], np.ndarray)
                assert out[k].dtype == shipped[k].dtype and out[k].tobytes() == shipped[k].tobytes()
        # Kept: handles with their shapes; a following exec uses them.
        kept = client.infer("two-h", {"0": tx, "1": ty}, keep=True)
        assert all(isinstance(kept[k], mymps.RemoteTensor) for k in ("0", "1"))
        assert (kept["0"].shape, kept["1"].shape) == ((5, 3), (5, 2))
        assert kept["0"].dtype == np.float32 and kept["0"].device == client.device
        assert client.get(kept["0"]).tobytes() == shipped["0"].tobytes()
        neg = client.exec("neg", {"0": kept["1"]}, keep=True)["output"]
        assert client.get(neg).tobytes() == (-shipped["1"]).tobytes()
        some = client.infer("two-h", {"0": tx, "1": y}, keep="1")
        assert isinstance(some["0"], np.ndarray) and isinstance(some["1"], mymps.RemoteTensor)
        assert some["0"].tobytes() == shipped["0"].tobytes()
        # A name the model does not return, a freed handle: typed errors, nothing kept.
        held = client.health()["resident_tensors"]
        with pytest.raises(BadArgumentError, match="keep names 'nope'"):
            client.infer("two-h", {"0": tx, "1": ty}, keep=["nope"])
        gone = client.put(x)
        client.free(gone)
        with pytest.raises(mymps.UnknownTensorError):
            client.infer("two-h", {"0": gone, "1": ty})
        assert client.health()["resident_tensors"] == held
        client.free([tx, neg, some["1"], kept["0"], kept["1"]])
        assert other.free(other.remote(name)) == 1
        assert client.health()["resident_tensors"] == base
    finally:
        other.close()
        client.unload_model("two-h")


def test_model_registry_calls(client, tmp_path):
    lin = nn.Linear(3, 3)
    path = tmp_path / "lin.pt"
    torch.save(lin.state_dict(), str(path))
    before = client.health()["models_loaded"]
    client.load_model("org/lin", model_type="checkpoint", model_path=str(path), model_class="linear")
    info = client.model_info("org/lin")
    assert set(info) == {"name", "model_type", "device", "loaded_at", "metadata"}
    assert info["model_type"] == "checkpoint" and info["device"] == client.device
    assert info["loaded_at"].endswith("Z")
    assert client.health()["models_loaded"] == before + 1
    client.unload_model("org/lin")
    assert client.health()["models_loaded"] == before


def test_loading_a_loaded_name_is_an_error(client, tmp_path):
    lin = nn.Linear(2, 2)
    torch.save(lin.state_dict(), str(tmp_path / "l.pt"))
    kw = dict(model_type="checkpoint", model_path=str(tmp_path / "l.pt"), model_class="linear")
    client.load_model("dup", **kw)
    with pytest.raises(ModelError, match="already loaded; unload it first"):
        client.load_model("dup", **kw)
    client.unload_model("dup")
    client.load_model("dup", **kw)  # fine once unloaded
    client.unload_model("dup")


def test_model_paths_stay_under_the_model_root(server_factory, tmp_path):
    from mymps import MympsClient

    root = tmp_path / "root"
    root.mkdir()
    lin = nn.Linear(2, 2)
    torch.save(lin.state_dict(), str(root / "ok.pt"))
    torch.save(lin.state_dict(), str(tmp_path / "outside.pt"))
    (root / "link.pt").symlink_to(tmp_path / "outside.pt")
    server = server_factory("--model-root", str(root))
    with MympsClient(server.host, server.port) as c:
        kw = dict(model_type="checkpoint", model_class="linear")
        c.load_model("rel", model_path="ok.pt", **kw)  # relative to the root
        for bad in [str(tmp_path / "outside.pt"), "../outside.pt", "link.pt"]:
            with pytest.raises(ModelError, match="outside the model root"):
                c.load_model("bad", model_path=bad, **kw)
        with pytest.raises(ModelError, match="cannot be opened"):
            c.load_model("bad", model_path="missing.pt", **kw)
        assert [m["name"] for m in c.list_models()] == ["rel"]


def test_unload_frees_memory_and_models_serve_while_others_load(server_factory, tmp_path):
    import threading
    from mymps import MympsClient

    server = server_factory(device="cpu")  # process RSS is the measure
    big = nn.Linear(4096, 4096)  # 64 MiB of float32 weights
    torch.save(big.state_dict(), str(tmp_path / "big.pt"))
    small = MLP([4, 8, 2]).eval()
    torch.save(small.state_dict(), str(tmp_path / "small.pt"))
    with MympsClient(server.host, server.port) as c:
        c.load_model("small", model_type="checkpoint", model_path=str(tmp_path / "small.pt"), model_class="mlp")
        rss = lambda: c.stats()["process_rss_mb"]  # noqa: E731
        before = rss()
        c.load_model("big", model_type="checkpoint", model_path=str(tmp_path / "big.pt"), model_class="linear")
        loaded = rss()
        assert loaded - before > 48, (before, loaded)
        c.unload_model("big")
        after = rss()
        assert after - before < 24, f"RSS {before:.0f} MB before, {loaded:.0f} loaded, {after:.0f} after unload"

        # Inference on one model goes on while another loads and unloads.
        x = np.random.rand(3, 4).astype(np.float32)
        want = reference(small, x).numpy()
        errors, done = [], threading.Event()

        def infer_loop():
            n = 0
            while not done.is_set() and n < 2000:
                n += 1
                try:
                    np.testing.assert_allclose(c.infer("small", {"0": x})["output"], want, atol=1e-6)
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
                    return

        t = threading.Thread(target=infer_loop)
        t.start()
        try:
            for _ in range(3):
                c.load_model("big", model_type="checkpoint", model_path=str(tmp_path / "big.pt"), model_class="linear")
                c.unload_model("big")
        finally:
            done.set()
            t.join(60)
        assert not errors, errors


@pytest.mark.skipif(not __import__("os").environ.get("MYMPS_TEST_DEVICE", "cpu").startswith("cuda"),
                    reason="accelerator memory: needs MYMPS_TEST_DEVICE=cuda:N")
def test_unload_returns_accelerator_memory(server_factory, tmp_path):
    from mymps import MympsClient

    server = server_factory()  # on MYMPS_TEST_DEVICE
    big = nn.Linear(8192, 8192)  # 256 MiB of float32 weights
    torch.save(big.state_dict(), str(tmp_path / "big.pt"))
    with MympsClient(server.host, server.port) as c:
        # CUDA context and cuBLAS workspaces up first: they stay, and are
        # not the model's.
        c.exec("linear", {"0": np.ones((2, 8192), np.float32), "1": np.ones((64, 8192), np.float32)})
        used = lambda: c.stats()["accelerator_memory_used_mb"]  # noqa: E731
        before = used()
        c.load_model("big", model_type="checkpoint", model_path=str(tmp_path / "big.pt"), model_class="linear")
        c.infer("big", {"0": np.ones((2, 8192), np.float32)})
        loaded = used()
        assert loaded - before > 200, (before, loaded)
        c.unload_model("big")
        after = used()
        assert after - before < 64, f"device memory {before:.0f} MB before, {loaded:.0f} loaded, {after:.0f} after unload"
