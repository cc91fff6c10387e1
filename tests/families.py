"""Tiny models of the families torch.export lets fxprune take, built from configs or bundled yaml.

Nothing is downloaded: every model has random weights. Each builder returns a
:class:`Family`: the model, the example inputs to prepare with, and inputs of another
batch size (and, for token models, another length) that the finalized model must accept.
A family whose package is missing is skipped with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from fxprune.core.ir import ExampleInputs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")


@dataclass
class Family:
    """A model with its example inputs and the other shapes it must still take once pruned."""

    model: torch.nn.Module
    example: object
    others: list = field(default_factory=list)


def _tokens(batch: int, length: int, vocab: int = 100, cache: bool = False) -> dict:
    gen = torch.Generator().manual_seed(batch * 100 + length)
    inputs = {"input_ids": torch.randint(0, vocab, (batch, length), generator=gen),
              "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    if cache:
        inputs["use_cache"] = False
    return inputs


def _images(*shape) -> tuple:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))),)


def hf_bert() -> Family:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=3)
    return Family(transformers.BertForSequenceClassification(config).eval(), _tokens(2, 8),
                  [_tokens(3, 13), _tokens(1, 5)])


def _causal_lm(make_config, model_class: str, **sizes) -> Family:
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, make_config)(vocab_size=100, **sizes)
    return Family(getattr(transformers, model_class)(config).eval(), _tokens(2, 8, cache=True),
                  [_tokens(3, 13, cache=True), _tokens(1, 5, cache=True)])


def hf_gpt2() -> Family:
    return _causal_lm("GPT2Config", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, n_positions=64)


def hf_llama() -> Family:
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    return _causal_lm("LlamaConfig", "LlamaForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def hf_vit() -> Family:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128, num_labels=10)
    return Family(transformers.ViTForImageClassification(config).eval(), _images(2, 3, 32, 32),
                  [_images(3, 3, 32, 32)])


def hf_resnet() -> Family:
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                       num_labels=10)
    return Family(transformers.ResNetForImageClassification(config).eval(), _images(2, 3, 64, 64),
                  [_images(3, 3, 64, 64)])


def _yolo(yaml: str) -> Family:
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(yaml, verbose=False).eval()
    model.model[-1].dynamic = True  # as ultralytics' own exporter does for dynamic shapes
    return Family(model, _images(2, 3, 64, 64), [_images(3, 3, 64, 64)])


def yolov8n() -> Family:
    return _yolo("yolov8n.yaml")


def yolo11n() -> Family:
    return _yolo("yolo11n.yaml")


def _timm(name: str) -> Family:
    timm = pytest.importorskip("timm")
    return Family(timm.create_model(name, pretrained=False, num_classes=10).eval(), _images(2, 3, 64, 64),
                  [_images(3, 3, 64, 64)])


def timm_mobilevit_s() -> Family:
    return _timm("mobilevit_s")


def timm_tf_efficientnetv2_s() -> Family:
    return _timm("tf_efficientnetv2_s")


def raft_small() -> Family:
    """Optical flow between two images, two refinement steps."""
    import torchvision

    model = torchvision.models.optical_flow.raft_small(weights=None).eval()

    def pair(batch):
        first = _images(batch, 3, 128, 128)[0]
        return ExampleInputs((first, first.roll(3, dims=3)), {"num_flow_updates": 2})

    return Family(model, pair(2), [pair(3)])


def swin3d_t() -> Family:
    import torchvision

    return Family(torchvision.models.video.swin3d_t(weights=None).eval(), _images(2, 3, 8, 64, 64),
                  [_images(3, 3, 8, 64, 64)])


def smp_fpn() -> Family:
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.FPN(encoder_name="efficientnet-b0", encoder_weights=None, classes=2).eval()
    return Family(model, _images(2, 3, 64, 64), [_images(3, 3, 64, 64)])


FAMILIES: dict[str, Callable[[], Family]] = {
    "hf_bert": hf_bert, "hf_gpt2": hf_gpt2, "hf_llama": hf_llama, "hf_vit": hf_vit, "hf_resnet": hf_resnet,
    "yolov8n": yolov8n, "yolo11n": yolo11n, "timm_mobilevit_s": timm_mobilevit_s,
    "timm_tf_efficientnetv2_s": timm_tf_efficientnetv2_s, "raft_small": raft_small, "swin3d_t": swin3d_t,
    "smp_fpn": smp_fpn,
}
