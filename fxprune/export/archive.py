"""What a ``.pt2`` file may hold for :func:`fxprune.export.load` to open it.

``torch.export.load`` trusts its file: payloads marked as pickled are read with
``torch.load(weights_only=False)`` or ``pickle.loads``, AOTInductor folders load shared
libraries, shape expressions go through ``sympy.sympify`` (which calls ``eval``), and
guard code is compiled into the loaded module. A file from elsewhere could run code in
each of these places. fxprune therefore checks the archive before torch reads it, and
the graph after:

    zip entries      only the pt2 layout torch.export.save writes (no aotinductor/, no legacy .pt)
    weights          raw tensor bytes; no payload marked use_pickle
    constants        raw tensor bytes; no pickled tensors, TorchBind or opaque objects
    sample inputs    must load with torch.load(weights_only=True)
    shape exprs      sympy srepr only: allowed function names, numbers, names, no attributes
    guards code      must be empty
    graph            calls PyTorch operators (and operator/math helpers) only

Files fxprune writes pass; anything else raises :class:`UnsafeArchiveError` before a
byte of it is unpickled or evaluated.

Example:
    >>> check_expression("Symbol('s77', positive=True, integer=True)")
    >>> check_expression("__import__('os').getcwd()")
    Traceback (most recent call last):
    ...
    fxprune.export.archive.UnsafeArchiveError: ...
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import zipfile

import torch

from fxprune.errors import FxPruneError


class UnsafeArchiveError(FxPruneError):
    """A ``.pt2`` file holds something that could run code when torch loads it."""


_HINT = "load .pt2 files written by fxprune.export.save (or torch.export.save of a plain model)"

# Paths inside the archive's top folder; \d+ files hold raw bytes.
_ALLOWED = re.compile(r"^(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
                      r"|models/[\w.-]+\.json|data/weights/[\w.-]+_weights_config\.json|data/weights/weight_\d+"
                      r"|data/constants/[\w.-]+_constants_config\.json|data/constants/tensor_\d+"
                      r"|data/sample_inputs/[\w.-]+\.pt|extra/[\w.-]+)$")

_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality", "And",
    "Or", "Not", "Piecewise", "ExprCondPair", "floor", "ceiling", "sqrt", "true", "false", "oo", "zoo", "nan",
    "Infinity", "NegativeInfinity", "BooleanTrue", "BooleanFalse", "True", "False", "None", "Tuple",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity",
}
_GENERATED_NAME = re.compile(r"^(OpaqueUnaryFn|BitwiseFn)_[a-z_]+$|^[a-z]+\d+$")
_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^[-+0-9.eE/]+$")
_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.UnaryOp, ast.USub, ast.UAdd,
          ast.Not, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.Tuple,
          ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.BoolOp, ast.And, ast.Or)


def check_archive(data: bytes) -> None:
    """Check the bytes of a ``.pt2`` file before torch reads them.

    Raises:
        UnsafeArchiveError: the archive holds an entry, payload, expression or guard
            that could run code when ``torch.export.load`` reads it.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise FxPruneError(f"not a .pt2 archive: {e}", hint="pass a file written by fxprune.export.save") from e
    names = [n for n in archive.namelist() if not n.endswith("/")]
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise UnsafeArchiveError(f"unexpected archive layout: top folders {sorted(roots)}", hint=_HINT)
    for name in names:
        inner = name.split("/", 1)[1]
        if not _ALLOWED.match(inner):
            raise UnsafeArchiveError(f"refusing archive entry {inner!r}: torch would load it as pickle or code",
                                     hint=_HINT)
        if inner.endswith("_config.json"):
            _check_payloads(inner, json.loads(archive.read(name)))
        elif inner.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as e:
                raise UnsafeArchiveError(f"sample inputs {inner!r} do not load with weights_only=True",
                                         hint=_HINT) from e
        elif inner.startswith("models/"):
            _check_program(json.loads(archive.read(name)))


def _check_payloads(name: str, config: dict) -> None:
    for fqn, payload in config.get("config", {}).items():
        path = str(payload.get("path_name", ""))
        if payload.get("use_pickle") or not re.match(r"^(weight|tensor)_\d+$", path):
            raise UnsafeArchiveError(f"refusing {fqn!r} in {name}: stored as a pickled object ({path})", hint=_HINT)


def _check_program(program: dict) -> None:
    if program.get("guards_code"):
        raise UnsafeArchiveError("refusing an exported program with guard code (torch compiles it into the module)",
                                 hint=_HINT)
    for expr in _expressions(program):
        check_expression(expr)


def _expressions(value):
    """Every ``expr_str`` in the serialized program (the strings torch hands to sympy)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if key == "expr_str":
                    yield sub
                else:
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def check_expression(expr) -> None:
    """Raise unless ``expr`` is a sympy expression in ``srepr`` form over allowed names.

    Allowed: calls of sympy and ``torch.utils._sympy`` functions by name, numbers, symbol
    names (``s77``), identifier strings, arithmetic and comparisons. Anything else
    (attributes, subscripts, lambdas, dunders) is refused, so ``eval`` can only build
    an expression.
    """
    if not isinstance(expr, str):
        raise UnsafeArchiveError(f"shape expression is not a string: {expr!r}", hint=_HINT)
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise UnsafeArchiveError(f"shape expression does not parse: {expr!r}", hint=_HINT) from e
    for node in ast.walk(tree):
        ok = isinstance(node, _NODES)
        if isinstance(node, ast.Name):
            ok = node.id in _SYMPY_NAMES or bool(_GENERATED_NAME.match(node.id))
        elif isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name)
        elif isinstance(node, ast.Constant):
            ok = isinstance(node.value, (bool, int, float, type(None))) or (
                isinstance(node.value, str) and bool(_STRING.match(node.value)))
        elif isinstance(node, ast.keyword):
            ok = node.arg is not None and not node.arg.startswith("_")
        if not ok:
            raise UnsafeArchiveError(f"refusing shape expression {expr!r}: {type(node).__name__} is not allowed",
                                     hint=_HINT)


# Arithmetic helpers exported graphs use on sizes; not attrgetter, methodcaller or call, which chain into code.
_HELPERS = {getattr(torch, n) for n in dir(torch) if n.startswith("sym_") and callable(getattr(torch, n))}
_HELPERS |= {getattr(operator, n) for n in (
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne", "lt", "le",
    "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "matmul")}
_HELPERS |= {math.floor, math.ceil, math.trunc, math.sqrt}


def check_graph(graph_module: torch.fx.GraphModule) -> None:
    """Raise unless every call in ``graph_module`` (and its subgraphs) is a PyTorch operator.

    Also drops recorded source lines (``stack_trace``), which the loaded module would
    otherwise carry into generated code comments.
    """
    for module in graph_module.modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            node.meta.pop("stack_trace", None)
            if node.op in ("call_method", "call_module"):
                raise UnsafeArchiveError(f"refusing graph node {node.format_node()}: exported graphs call "
                                         "operators only", hint=_HINT)
            if node.op == "call_function" and not _is_operator(node.target):
                raise UnsafeArchiveError(f"refusing graph node {node.format_node()}: {node.target!r} is not a "
                                         "PyTorch operator", hint=_HINT)


def _is_operator(target) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return True
    try:
        return target in _HELPERS
    except TypeError:  # unhashable
        return False
