"""The heads package builds on embedcache's exported names only, so embedcache's internals can change freely."""

import ast
from pathlib import Path

import embedcache

ROOT = Path(__file__).resolve().parents[1]


def test_heads_imports_only_names_embedcache_exports():
    used = []
    for path in sorted((ROOT / "heads").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "embedcache":
                used += [(path.name, node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                used += [(path.name, alias.name, "") for alias in node.names if alias.name.startswith("embedcache.")]
    assert used, "heads builds on embedcache"
    outside = [u for u in used if u[1] != "embedcache" or (u[2] not in embedcache.__all__ and u[2] != "__version__")]
    assert not outside, f"heads reaches past embedcache.__all__: {outside}"


def test_embedcache_never_imports_heads():
    for path in sorted((ROOT / "embedcache").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert not any(n.split(".")[0] == "heads" for n in names), f"{path.name} imports heads"


def test_every_exported_name_exists():
    missing = [n for n in embedcache.__all__ if not hasattr(embedcache, n)]
    assert not missing
