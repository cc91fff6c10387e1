"""The fxprune command: model specs, inspect, prune (l1, epfs, oicsr) to a saved model, the demo."""

import importlib.metadata
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune import export
from fxprune.cli import main
from fxprune.cli.model_names import build_model
from fxprune.demo.cifar_resnet import CifarResNet
from fxprune.demo.shapes import CLASSES, make_shapes
from fxprune.training.data import write_image_folder

SMALL = ["fxprune.demo.cifar_resnet:small_resnet", "--input-shape", "3,32,32"]
TINY = ["test_cli:tiny", "--input-shape", "3,16,16"]  # a user's own model: this module's function


def tiny(num_classes=10):
    return CifarResNet(1, num_classes, widths=(8, 12, 16), strides=(2, 2, 2))


def test_inspect_prints_the_groups_and_why_channels_are_frozen(capsys):
    assert main(["inspect", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "10 channel groups (352 channels), 6 removable branches" in out
    header = next(line for line in out.splitlines() if line.startswith("group"))
    assert header.split() == ["group", "channels", "producers", "consumers", "MACs", "share"]
    assert "layer1.0.downsample.0.weight, layer1.0.conv2.weight" in out  # the first stage's residual group
    assert "fc.weight" in out and "reaches the model output" in out


def test_inspect_reads_torchvision_specs(capsys):
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "3,32,32", "--num-classes", "10",
                 "--format", "github"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("torchvision:resnet18: ") and "| g0 " in out and "layer4.1.conv2.weight" in out


@pytest.mark.parametrize("spec, message", [
    ("resnet18", "write it as torchvision:NAME, timm:NAME, hf:CLASS, yolo:YAML or package.module:function"),
    ("torchvision:resnet_nope", "torchvision.models.list_models()"),
    ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
    ("fxprune.demo.cifar_resnet:no_such_function", "has no 'no_such_function'"),
])
def test_bad_model_specs_say_what_to_write(spec, message, capsys):
    assert main(["inspect", spec]) == 2
    assert message in capsys.readouterr().err


LLAMA = ["--config", "hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,"
                     "num_key_value_heads=2,vocab_size=100"]


def test_inspect_builds_hugging_face_models_from_a_config_and_captures_them_with_export(capsys):
    pytest.importorskip("transformers")
    assert main(["inspect", "hf:LlamaForCausalLM", *LLAMA, "--tokens", "1,8"]) == 0
    out = capsys.readouterr().out
    assert "at input (1, 8), captured with torch.export" in out
    assert "model.layers.0.self_attn.k_proj.weight" in out and "model.layers.1.mlp.down_proj.weight" in out


def test_prune_saves_a_token_model_that_loads_and_takes_other_lengths(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "llama.pt2"
    assert main(["prune", "hf:LlamaForCausalLM", *LLAMA, "--tokens", "1,8", "--out", str(out), "--no-progress"]) == 0
    assert "pruned 5" in capsys.readouterr().out  # about half of the MACs
    model = export.load(out)
    logits = model(input_ids=torch.randint(0, 100, (3, 11)), attention_mask=torch.ones(3, 11, dtype=torch.long),
                   use_cache=False).logits
    assert logits.shape == (3, 11, 100)


def test_inspect_builds_yolo_from_its_bundled_yaml(capsys):
    pytest.importorskip("ultralytics")
    assert main(["inspect", "yolo:yolov8n.yaml", "--input-shape", "3,64,64"]) == 0
    assert "captured with torch.export" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_specs_without_timm_name_the_fix():
    with pytest.raises(fxprune.FxPruneError, match="pip install timm"):
        build_model("timm:resnet18")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_load_with_weights_only(tmp_path):
    model = build_model("fxprune.demo.cifar_resnet:small_resnet")
    torch.save({"model": model.state_dict()}, tmp_path / "trainer_style.pt")
    again = build_model("fxprune.demo.cifar_resnet:small_resnet", checkpoint=tmp_path / "trainer_style.pt")
    assert torch.equal(again.fc.weight, model.fc.weight)
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(fxprune.FxPruneError, match="weights_only=True"):
        build_model("fxprune.demo.cifar_resnet:small_resnet", checkpoint=tmp_path / "evil.pt")
    assert not marker.exists()


def test_prune_l1_writes_a_smaller_model_that_loads_and_a_report(tmp_path, capsys):
    out = tmp_path / "small.pt2"
    assert main(["prune", *TINY, "--method", "l1", "--target-macs", "0.5", "--out", str(out),
                 "--report", str(tmp_path / "report.html"), "--no-progress"]) == 0
    x = torch.randn(1, 3, 16, 16)
    before = fxprune.count(tiny(), x).macs
    after = fxprune.count(export.load(out), x).macs
    assert 0.49 <= 1 - after / before <= 0.52
    assert export.read_metadata(out)["method"] == "l1"
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.png").exists()
    assert "pruned" in capsys.readouterr().out


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_image_folder(root, "train", *make_shapes(100, seed=1), CLASSES)
    write_image_folder(root, "test", *make_shapes(50, seed=2), CLASSES)
    return root


def test_prune_epfs_trains_on_a_folder_and_exports_onnx(tmp_path, shapes_folder, capsys):
    """The ONNX export is part of the test, not skipped quietly: onnxscript and onnxruntime are the
    ``export`` extra, which ``make test`` installs."""
    for extra in ("onnxscript", "onnxruntime"):
        assert importlib.util.find_spec(extra), f"{extra} is missing: pip install -e '.[export]'"
    import onnxruntime

    onnx = tmp_path / "small.onnx"
    args = ["prune", *TINY, "--method", "epfs", "--target-macs", "0.4", "--data", str(shapes_folder),
            "--per-class", "10", "--epochs", "1", "--finetune-epochs", "1", "--out", str(tmp_path / "small.pt2"),
            "--no-progress", "--onnx", str(onnx)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "100 training, 20 test images, 10 classes" in out and "pruned + fine-tuned" in out
    assert export.read_metadata(tmp_path / "small.pt2")["method"] == "epfs"
    small = export.load(tmp_path / "small.pt2")
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 16, 16)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), small(x), rtol=1e-4, atol=1e-4)


def test_prune_oicsr_without_data_ranks_by_weights(tmp_path):
    """Without data, oicsr is greedy pruning by the weights' OICSR importance, untrained: the saved model is
    the one greedy_prune makes from the same weights, and its MACs fell by the target."""
    from fxprune.methods.oicsr import greedy_prune

    torch.manual_seed(0)
    assert main(["prune", *TINY, "--method", "oicsr", "--target-macs", "0.3", "--out", str(tmp_path / "o.pt2"),
                 "--no-progress"]) == 0
    assert export.read_metadata(tmp_path / "o.pt2")["method"] == "oicsr"
    torch.manual_seed(0)  # the same weights as the command's model
    model = tiny().eval()
    x = torch.randn(4, 3, 16, 16)
    pm = fxprune.prepare(model, x)
    greedy_prune(pm, 0.3)
    expected = fxprune.finalize(pm)
    saved = export.load(tmp_path / "o.pt2")
    before, after = fxprune.count(model, x).macs, fxprune.count(saved, x).macs
    assert after == fxprune.count(expected, x).macs and 0.25 < 1 - after / before < 0.4
    with torch.no_grad():
        torch.testing.assert_close(saved(x), expected(x))


def test_epfs_without_data_names_the_fix(tmp_path, capsys):
    assert main(["prune", *TINY, "--method", "epfs", "--out", str(tmp_path / "x.pt2")]) == 2
    assert "pass --data DIR" in capsys.readouterr().err


def test_demo_quick_writes_the_table_plot_report_and_model(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "latency (ms)" in out and "pruned + fine-tuned" in out
    assert {"demo.png", "report.html", "small.pt2", "table.md"} <= {p.name for p in tmp_path.iterdir()}
    x = torch.randn(2, 3, 32, 32)
    assert fxprune.count(export.load(tmp_path / "small.pt2"), x).macs < fxprune.count(
        build_model("fxprune.demo.cifar_resnet:small_resnet"), x).macs * 0.55


def test_console_script_is_installed():
    """Installing fxprune puts an ``fxprune`` script beside the interpreter that runs ``fxprune.cli:main``.

    It skips only where fxprune is imported from a source tree without being installed (no
    distribution metadata); an installed fxprune without its script fails.
    """
    try:
        dist = importlib.metadata.distribution("fxprune")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fxprune is not installed, only imported from a source tree: pip install -e . installs the script")
    scripts = [e.value for e in dist.entry_points if e.group == "console_scripts" and e.name == "fxprune"]
    assert scripts == ["fxprune.cli:main"]
    script = shutil.which("fxprune", path=os.path.dirname(sys.executable))
    assert script is not None, f"fxprune is installed but its script is not beside {sys.executable}"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "{inspect,prune,demo}" in result.stdout
