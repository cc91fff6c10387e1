"""A hypothesis strategy for random CNN architectures.

An architecture is a small program over a list of tensors: each step reads earlier
tensors and appends one. Steps are convolutions (plain, grouped, depthwise) with
optional BatchNorm and activation, residual adds, concats, splits, slices, channel
shuffles, squeeze-excitation, pooling, and finally a head (global pooling or flatten)
into a Linear layer. ``RandomNet`` interprets the program in ``forward``; the loop is
over a static list, so torch.fx unrolls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st
from networkx.utils import UnionFind

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "none": nn.Identity, "hardswish": nn.Hardswish}


@dataclass(frozen=True)
class Arch:
    steps: tuple          # ("conv", src, out, k, groups, bn, act) | ("add", a, b) | ...
    in_channels: int
    size: int
    head: str             # "pool" or "flatten"
    classes: int
    second_input: int = 0  # channels of a second image input (tensor 1), or 0 for none

    @property
    def input_shapes(self) -> list:
        """(channels, size) of each input: the first tensors the steps read."""
        return [(self.in_channels, self.size)] + ([(self.second_input, self.size)] if self.second_input else [])

    def inputs(self, seed: int, batch: int = 2) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(batch, c, s, s, generator=gen) for c, s in self.input_shapes)


class RandomNet(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleDict()
        shapes = arch.input_shapes
        first = len(shapes)  # step i makes tensor first + i
        for i, step in enumerate(arch.steps):
            kind = step[0]
            if kind == "conv":
                _, src, out, k, groups, bn, act = step
                c = shapes[src][0]
                layers = [nn.Conv2d(c, out, k, padding=k // 2, groups=groups, bias=not bn)]
                if bn:
                    layers.append(nn.BatchNorm2d(out))
                if act != "none":  # so that a step can end in its BatchNorm or convolution
                    layers.append(ACTS[act]())
                self.layers[str(i)] = nn.Sequential(*layers)
                shapes.append((out, shapes[src][1]))
            elif kind == "se":
                _, src, hidden = step
                c = shapes[src][0]
                self.layers[str(i)] = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c, 1),
                                                    nn.Sigmoid())
                shapes.append(shapes[src])
            else:
                shapes.append(_shape_after(step, shapes))
        last_c, last_s = shapes[-1]
        features = last_c if arch.head == "pool" else last_c * last_s * last_s
        self.fc = nn.Linear(features, arch.classes)
        # residual adds written 'a += b', as ResNets do, wherever nothing reads a afterwards, nor
        # anything that may share a's memory (chunks, slices and shuffles are views of their
        # source, as prepare sees them); otherwise the eager model would see the sum there and
        # prepare refuses it. Nor into a chunk's output or what shares its memory: PyTorch's autograd
        # refuses to modify in place a view made by an op that returns several (the fuzzing of
        # issue 32 drew chunk, conv, chunk, then 'a += b' into that chunk: the model itself raised)
        read = [{s for s in step[1:3] if isinstance(s, int)} if step[0] in ("add", "cat") else {step[1]}
                for step in arch.steps]
        memory = UnionFind()  # tensor indices that may share memory
        for i, step in enumerate(arch.steps):
            if step[0] in ("chunk", "slice", "shuffle"):
                memory.union(first + i, step[1])
        chunked = {memory[first + i] for i, step in enumerate(arch.steps) if step[0] == "chunk"}
        self.in_place = {i for i, step in enumerate(arch.steps) if step[0] == "add"
                         and memory[step[1]] not in chunked
                         and not any(memory[t] == memory[step[1]] for r in read[i + 1:] for t in r)}

    def forward(self, x, y=None):
        ts = [x, y][:len(self.arch.input_shapes)]
        for i, step in enumerate(self.arch.steps):
            kind = step[0]
            if kind == "conv":
                ts.append(self.layers[str(i)](ts[step[1]]))
            elif kind == "se":
                src = ts[step[1]]
                ts.append(src * self.layers[str(i)](F.adaptive_avg_pool2d(src, 1)))
            elif kind == "add" and i in self.in_place:
                t = ts[step[1]]
                t += ts[step[2]]
                ts.append(t)
            elif kind == "add":
                ts.append(ts[step[1]] + ts[step[2]])
            elif kind == "cat":
                ts.append(torch.cat([ts[step[1]], ts[step[2]]], dim=1))
            elif kind == "chunk":
                ts.append(torch.chunk(ts[step[1]], 2, dim=1)[step[2]])
            elif kind == "slice":
                ts.append(ts[step[1]][:, step[2]:step[3]])
            elif kind == "shuffle":
                t = ts[step[1]]
                n, c, h, w = t.shape
                ts.append(t.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))
            elif kind == "pool":
                ts.append(F.max_pool2d(ts[step[1]], 2) if step[2] == "max" else F.avg_pool2d(ts[step[1]], 2))
        y = ts[-1]
        y = F.adaptive_avg_pool2d(y, 1).flatten(1) if self.arch.head == "pool" else torch.flatten(y, 1)
        return self.fc(y)


def _shape_after(step, shapes):
    kind = step[0]
    c, s = shapes[step[1]]
    if kind == "add":
        return (c, s)
    if kind == "cat":
        return (c + shapes[step[2]][0], s)
    if kind == "chunk":
        return (c // 2, s)
    if kind == "slice":
        return (step[3] - step[2], s)
    if kind == "shuffle":
        return (c, s)
    if kind == "pool":
        return (c, s // 2)
    raise ValueError(kind)


@st.composite
def architectures(draw, max_steps: int = 8):
    in_channels = draw(st.integers(1, 4))
    size = draw(st.sampled_from([4, 6, 8]))
    second_input = draw(st.sampled_from([0, 0, 0, 1, 3]))
    shapes = [(in_channels, size)] + ([(second_input, size)] if second_input else [])
    # a stem convolution of at least two channels, and sources drawn (and shrunk) towards the latest
    # tensor: without them about half the draws had nothing to prune (one channel, or every channel
    # tied to an input, which is never pruned)
    steps = [("conv", 0, draw(st.integers(2, 12)), draw(st.sampled_from([1, 3])), 1, draw(st.booleans()),
              draw(st.sampled_from(sorted(ACTS))))]
    shapes.append((steps[0][2], size))
    for _ in range(draw(st.integers(0, max_steps - 1))):
        kind = draw(st.sampled_from(["conv", "conv", "conv", "add", "cat", "chunk", "slice", "shuffle", "se", "pool"]))
        src = len(shapes) - 1 - draw(st.integers(0, len(shapes) - 1))
        c, s = shapes[src]
        step = None
        if kind == "conv":
            out = draw(st.integers(1, 12))
            common = [g for g in range(2, 5) if c % g == 0 and out % g == 0]
            groups = draw(st.sampled_from([1] + common + ([c] if out % c == 0 and c > 1 else [])))
            step = ("conv", src, out, draw(st.sampled_from([1, 3])), groups, draw(st.booleans()),
                    draw(st.sampled_from(sorted(ACTS))))
        elif kind == "add":
            partners = [j for j, sh in enumerate(shapes) if sh == (c, s) and j != src]
            if partners:
                step = ("add", src, draw(st.sampled_from(partners)))
        elif kind == "cat":
            partners = [j for j, sh in enumerate(shapes) if sh[1] == s]
            step = ("cat", src, draw(st.sampled_from(partners)))
        elif kind == "chunk" and c >= 2 and c % 2 == 0:
            step = ("chunk", src, draw(st.integers(0, 1)))
        elif kind == "slice" and c >= 2:
            start = draw(st.integers(0, c - 2))
            step = ("slice", src, start, draw(st.integers(start + 1, c)))
        elif kind == "shuffle" and c % 2 == 0 and c >= 2:
            step = ("shuffle", src)
        elif kind == "se" and src > 0:
            step = ("se", src, draw(st.integers(1, 4)))
        elif kind == "pool" and s >= 2:
            step = ("pool", src, draw(st.sampled_from(["max", "avg"])))
        if step is None:
            continue
        steps.append(step)
        shapes.append(_shape_after(step, shapes) if step[0] not in ("conv", "se") else
                      ((step[2], s) if step[0] == "conv" else (c, s)))
    head = draw(st.sampled_from(["pool", "flatten"]))
    return Arch(tuple(steps), in_channels, size, head, draw(st.integers(1, 5)), second_input)


@dataclass(frozen=True)
class TokenArch:
    """A random transformer-like model over ``[N, L, dim]`` tokens."""

    blocks: tuple   # per block: ("attn", heads, head_dim, kind) | ("mlp", hidden, act) with kind in sdpa|matmul|mha
    dim: int
    tokens: int
    norm: bool
    classes: int


class TokenNet(nn.Module):
    def __init__(self, arch: TokenArch):
        super().__init__()
        self.arch = arch
        self.embed = nn.Linear(3, arch.dim)
        self.layers = nn.ModuleList()
        for block in arch.blocks:
            layer = nn.Module()
            layer.norm = nn.LayerNorm(arch.dim) if arch.norm else nn.Identity()
            if block[0] == "attn":
                _, heads, head_dim, kind = block
                if kind == "mha":
                    embed = heads * head_dim
                    layer.mha = nn.MultiheadAttention(embed, heads, batch_first=True) if embed == arch.dim \
                        else nn.MultiheadAttention(embed, heads, batch_first=True, kdim=arch.dim, vdim=arch.dim)
                    layer.proj = nn.Linear(layer.mha.embed_dim, arch.dim)
                else:
                    layer.qkv = nn.Linear(arch.dim, 3 * heads * head_dim)
                    layer.proj = nn.Linear(heads * head_dim, arch.dim)
            else:
                _, hidden, act = block
                layer.fc1 = nn.Linear(arch.dim, hidden)
                layer.act = ACTS[act]()
                layer.fc2 = nn.Linear(hidden, arch.dim)
            self.layers.append(layer)
        self.head = nn.Linear(arch.dim, arch.classes)

    def forward(self, x):
        x = self.embed(x)
        for block, layer in zip(self.arch.blocks, self.layers):
            y = layer.norm(x)
            if block[0] == "mlp":
                x = x + layer.fc2(layer.act(layer.fc1(y)))
                continue
            _, heads, head_dim, kind = block
            if kind == "mha":
                q = y if layer.mha.embed_dim == self.arch.dim else y[..., : layer.mha.embed_dim]
                out, _ = layer.mha(q, y, y, need_weights=False)
                x = x + layer.proj(out)
                continue
            n, t, _ = y.shape
            q, k, v = layer.qkv(y).reshape(n, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            if kind == "sdpa":
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = torch.softmax(q @ k.transpose(-2, -1) * head_dim ** -0.5, dim=-1) @ v
            x = x + layer.proj(o.transpose(1, 2).reshape(n, t, heads * head_dim))
        return self.head(x.mean(dim=1))


@st.composite
def token_architectures(draw, max_blocks: int = 4):
    dim = draw(st.sampled_from([4, 6, 8, 12]))
    blocks = []
    for _ in range(draw(st.integers(1, max_blocks))):
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["sdpa", "matmul", "mha"]))
            if kind == "mha":  # heads x head_dim == dim: self-attention; narrower: kdim = vdim = dim
                heads = draw(st.integers(1, 4))
                head_dim = dim // heads if dim % heads == 0 and draw(st.booleans()) else \
                    draw(st.integers(1, dim // heads))
            else:
                heads, head_dim = draw(st.sampled_from([h for h in (1, 2, 3, 4) if dim % h == 0])), \
                    draw(st.integers(1, 4))
            blocks.append(("attn", heads, head_dim, kind))
        else:
            blocks.append(("mlp", draw(st.integers(2, 12)), draw(st.sampled_from(sorted(ACTS)))))
    return TokenArch(tuple(blocks), dim, draw(st.integers(2, 5)), draw(st.booleans()), draw(st.integers(1, 4)))
