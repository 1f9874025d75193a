"""Every .pyi stub of _wgcore names exactly the public API of its compiled module (STYLE §10)."""
from __future__ import annotations

import ast
import enum
import importlib
import inspect
from pathlib import Path

import pytest

import _wgcore

STUB_DIR = Path(_wgcore.__file__).parent
MODULES = ["sodium", "replay", "checksum", "keypair", "datapath", "udpio", "constants",
           "tcpip.wire", "tcpip.storage", "tcpip.congestion", "tcpip.conn", "tcpip.stack"]


def _stub_names(tree: ast.Module) -> tuple[set[str], dict[str, set[str]]]:
    top: set[str] = set()
    members: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            top.add(node.name)
            members[node.name] = {
                n.name if isinstance(n, ast.FunctionDef) else n.target.id  # type: ignore[union-attr]
                for n in node.body
                if isinstance(n, ast.FunctionDef) or (isinstance(n, ast.AnnAssign)
                                                      and isinstance(n.target, ast.Name))}
            # enum members are plain assignments in a stub (`CLOSED = 0`)
            members[node.name] |= {t.id for n in node.body if isinstance(n, ast.Assign)
                                   for t in n.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
    return top, members


@pytest.mark.parametrize("name", MODULES)
def test_stub_matches_module(name: str) -> None:
    stub = STUB_DIR / f"{name.replace('.', '/')}.pyi"
    assert stub.exists(), f"{stub} is missing"
    module = importlib.import_module(f"_wgcore.{name}")
    top, members = _stub_names(ast.parse(stub.read_text()))
    public = {n for n in vars(module) if not n.startswith("_")
              and getattr(vars(module)[n], "__module__", f"_wgcore.{name}") == f"_wgcore.{name}"
              and not inspect.ismodule(vars(module)[n])}
    public -= {"cython"}
    assert top == public, f"stub {name}.pyi: missing {public - top}, extra {top - public}"
    for cls_name, names in members.items():
        cls = getattr(module, cls_name)
        real = {n for n in dir(cls) if not n.startswith("_")}
        if issubclass(cls, enum.Enum):
            real = set(cls.__members__)      # not the int methods an IntEnum inherits
        stubbed = {n for n in names if not n.startswith("_")}
        assert stubbed == real, (f"{name}.{cls_name}: missing {real - stubbed}, "
                                 f"extra {stubbed - real}")
