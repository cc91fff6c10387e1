"""The fast data-movement rules agree with the index-coded probe they shortcut."""


import copy

import pytest
import torch
import torch.nn as nn
from helpers import assert_finalized_equals_masked, randomize, zero_channels

import fxprune
from fxprune.core.rules import indexing, movement, registry, views


class Moves(nn.Module):
    """Feeds the channels of two convolutions through every op with a fast path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(40, 4)
        self.heads = nn.Linear(8, 12)
        self.out = nn.Linear(12, 3)
        self.register_buffer("order", torch.arange(11, -1, -1))

    def forward(self, x):
        a, b = self.a(x), self.b(x)                       # [N, 8, 4, 6], [N, 6, 4, 6]
        y = torch.cat([a, b], dim=1)                      # cat
        y = y[:, 1:13]                                    # slice
        p, q = torch.split(y, [5, 7], dim=1)              # split
        r = torch.cat([q, p], 1).permute(0, 2, 3, 1)      # permute: [N, 4, 6, 12]
        r = r.transpose(1, 2).flip(1).roll(1, 2)           # transpose, flip, roll
        r = r.reshape(r.shape[0], 6, 4, 2, 6)              # reshape splitting the 12 channels
        r = r.flatten(3)                                   # and merging them back
        r = r.unsqueeze(1).squeeze(1)[:, ::3, ::2]         # [N, 2, 2, 12] -> strided spatial slices
        r = r.narrow(1, 0, 2).select(2, 1)                 # [N, 2, 12]
        r = r.index_select(2, self.order)                  # reversed channels
        r = r.expand(r.shape[0], 2, 12).repeat(1, 1, 1)
        s = torch.stack([r, r], dim=1).sum(1)               # stack
        s = torch.nn.functional.pad(s, (0, 0, 1, 0))[:, 1:]
        f = self.fc(torch.cat([s.reshape(s.shape[0], -1), s.reshape(s.shape[0], -1)], 1)[:, 4:44])
        h = self.heads(a.mean((2, 3))).view(-1, 3, 4).transpose(1, 2).reshape(-1, 12)
        return f + self.out(h).sum(1, keepdim=True)


FAST_MODULES = (views.__name__, indexing.__name__)
FAST = {k: v for k, v in {**registry._FUNCTIONS, **registry._METHODS}.items() if type(v).__module__ in FAST_MODULES
        or getattr(getattr(v, "fn", None), "__module__", "") in FAST_MODULES}


def structure(pm):
    """Channel groups and which layer dimensions each group touches."""
    return sorted((g.size, tuple(sorted(str(m) for m in g.members if m.kind == "param")))
                  for g in fxprune.channel_groups(pm))


def _with_flow(handler, flow):
    """The same handler (its resize rules included) with another flow rule."""
    patched = copy.copy(handler)
    patched.flow = flow
    return patched


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_fast_rules_match_the_probe(monkeypatch, capture):
    model = randomize(Moves().eval())
    x = torch.randn(2, 3, 4, 6)
    config = fxprune.PruneConfig(capture=capture)
    fast = fxprune.prepare(model, x, config)
    for key, handler in FAST.items():
        table = registry._METHODS if isinstance(key, str) else registry._FUNCTIONS
        monkeypatch.setitem(table, key, _with_flow(handler, movement.movement))
    probed = fxprune.prepare(model, x, config)
    assert structure(fast) == structure(probed)
    for pm in (fast, probed):
        zero_channels(pm, 0.5)
        assert_finalized_equals_masked(pm)


def test_every_fast_rule_is_exercised(monkeypatch):
    """Every fast flow rule takes its own path on Moves, captured by symbolic tracing or by torch.export, at
    least once (through one of its keys), without handing the node to the probe it shortcuts: a rule
    that always fell back would be untested here."""
    fast, probed = set(), []

    def recording(handler):
        def flow(ctx):
            before = len(probed)
            out = handler.flow(ctx)
            if len(probed) == before:
                fast.add(_rule_of(handler))
            return out
        return flow

    def probe(ctx):
        probed.append(ctx.node.name)
        return movement.movement(ctx)

    for module in (views, indexing):  # the fast rules' fallback, as they call it
        monkeypatch.setattr(module, "movement", probe)
    for key, handler in FAST.items():
        table = registry._METHODS if isinstance(key, str) else registry._FUNCTIONS
        monkeypatch.setitem(table, key, _with_flow(handler, recording(handler)))
    for capture in ("fx", "export"):
        fxprune.prepare(randomize(Moves().eval()), torch.randn(2, 3, 4, 6), fxprune.PruneConfig(capture=capture))
    rules = {_rule_of(h) for h in FAST.values()}
    assert len(rules) > 10
    assert rules - fast == set(), f"fast rules Moves never runs on their fast path: {sorted(rules - fast)}"


def _rule_of(handler) -> str:
    return getattr(getattr(handler, "fn", None), "__qualname__", None) or type(handler).flow.__qualname__
