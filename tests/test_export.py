"""Shipping a finalized model: .pt2 round trip without pickles, ONNX equal to onnxruntime, torch.compile."""

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize, zero_channels

import fxprune
from fxprune import export
from fxprune.demo.cifar_resnet import CifarResNet
from fxprune.export.archive import UnsafeArchiveError


def tiny_resnet():
    return CifarResNet(2, 4, widths=(8, 12, 16), strides=(2, 2, 2))


def pruned():
    """A prepared tiny ResNet with half its channels and one branch switched off, and its finalized model."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    pm = fxprune.prepare(randomize(tiny_resnet()), x)
    zero_channels(pm, 0.5)
    with torch.no_grad():
        pm.fxprune.gates[next(iter(pm.fxprune.gates))].zero_()
    return pm, fxprune.finalize(pm).eval(), x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pm, small, x = pruned()
    path = export.save(small, tmp_path_factory.mktemp("pt2") / "small.pt2", x, metadata={"method": "test"})
    return small, x, path


def test_saved_model_loads_and_computes_the_same_for_any_batch_size(saved):
    small, x, path = saved
    loaded = export.load(path)
    for batch in (1, 5):
        inputs = torch.randn(batch, *x.shape[1:])
        torch.testing.assert_close(loaded(inputs), small(inputs))
    assert export.read_metadata(path)["method"] == "test"
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
    assert not any(type(m).__module__.startswith("fxprune") for m in loaded.modules())


def test_loading_unpickles_nothing_beyond_weights_only(saved, monkeypatch):
    _, x, path = saved
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads called while loading")

    monkeypatch.setattr(torch, "load", spy_load)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    export.load(path)(x)
    assert calls and all(flag is True for flag in calls), f"torch.load called with weights_only={calls}"


class Payload:
    """Unpickling this creates a marker file: it stands for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def rewrite(src: Path, dst: Path, edit=None, add=None) -> Path:
    """Copy a zip archive, passing every entry through ``edit(inner_name, bytes)`` and adding ``add``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, edit(name.split("/", 1)[1], data) if edit else data)
        for inner, data in (add or {}).items():
            zout.writestr(f"{root}/{inner}", data)
    return dst


def test_load_refuses_a_pickled_weight_and_runs_none_of_it(saved, tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)

    def edit(inner, data):
        if inner.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        return buffer.getvalue() if inner == "data/weights/weight_0" else data

    evil = rewrite(saved[2], tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeArchiveError, match="pickled object"):
        export.load(evil)
    assert not marker.exists()


def test_load_refuses_code_in_a_shape_expression(saved, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path('{marker}').touch()"
    replaced = []

    def inject(value):
        if isinstance(value, dict):
            for key, sub in value.items():
                if key == "expr_str" and not replaced:
                    value[key] = f"{code} or {sub}"
                    replaced.append(sub)
                else:
                    inject(sub)
        elif isinstance(value, list):
            for sub in value:
                inject(sub)

    def edit(inner, data):
        if inner.startswith("models/"):
            program = json.loads(data)
            inject(program)
            return json.dumps(program).encode()
        return data

    evil = rewrite(saved[2], tmp_path / "evil.pt2", edit)
    assert replaced, "the saved program should carry the dynamic batch as a shape expression"
    with pytest.raises(UnsafeArchiveError, match="shape expression"):
        export.load(evil)
    assert not marker.exists()


@pytest.mark.parametrize("change", ["aotinductor", "guards"])
def test_load_refuses_compiled_code_and_guard_code(saved, tmp_path, change):
    if change == "aotinductor":
        evil = rewrite(saved[2], tmp_path / "evil.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF"})
        match = "aotinductor"
    else:
        def edit(inner, data):
            if inner.startswith("models/"):
                program = json.loads(data)
                program["guards_code"] = ["__import__('os').getcwd()"]
                return json.dumps(program).encode()
            return data
        evil = rewrite(saved[2], tmp_path / "evil.pt2", edit)
        match = "guard code"
    with pytest.raises(UnsafeArchiveError, match=match):
        export.load(evil)


def test_save_wants_a_pt2_name(tmp_path):
    _, small, x = pruned()
    with pytest.raises(fxprune.FxPruneError, match="end in .pt2"):
        export.save(small, tmp_path / "small.pt", x)


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    _, small, x = pruned()
    path = export.to_onnx(small, tmp_path / "small.onnx", x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"], "one self-contained file"
    inputs = torch.randn(3, *x.shape[1:])  # another batch size: the batch dimension is dynamic
    (got,) = export.run_onnx(path, inputs)
    torch.testing.assert_close(got, small(inputs).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_finalized_model_runs_under_torch_compile():
    torch._inductor.config.compile_threads = 1
    _, small, x = pruned()
    compiled = torch.compile(small)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small(x), rtol=1e-4, atol=1e-5)


def epfs_steps(compile_backend, steps=3):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    pm = fxprune.prepare(tiny_resnet(), x[:2])
    epfs = fxprune.EPFS(pm, lr=0.1, l1=0.05, center=0.01, num_classes=4)
    opt = torch.optim.SGD(fxprune.weight_parameters(pm), lr=0.05, momentum=0.9)
    model = torch.compile(pm, backend=compile_backend) if compile_backend else pm
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y) + epfs.loss(y)
        opt.zero_grad()
        epfs.zero_grad()
        loss.backward()
        opt.step()
        epfs.step()
        losses.append(loss.item())
    epfs.finish()
    return losses, [m.detach().clone() for m in fxprune.mask_parameters(pm)]


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_prepared_model_trains_under_torch_compile(backend):
    torch._inductor.config.compile_threads = 1
    eager_losses, eager_masks = epfs_steps(None)
    losses, masks = epfs_steps(backend)
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    for got, expected in zip(masks, eager_masks):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert any(bool((m != 1).any()) for m in masks), "the masks should have moved"
