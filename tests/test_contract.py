"""The heads package builds on embedcache's exported names only, so embedcache's internals can change freely."""

import ast

import pytest
from helpers import ROOT

import embedcache
from embedcache import toolkit


def test_heads_imports_only_names_embedcache_exports():
    """heads uses the user API (``embedcache.__all__``) and the toolkit (``embedcache.toolkit.__all__``), nothing else."""
    allowed = {"embedcache": {*embedcache.__all__, "__version__"}, "embedcache.toolkit": set(toolkit.__all__)}
    used = []
    for path in sorted((ROOT / "heads").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "embedcache":
                used += [(path.name, node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                used += [(path.name, alias.name, "") for alias in node.names if alias.name.startswith("embedcache")]
    assert {m for _, m, _ in used} == set(allowed), "heads builds on both"
    outside = [u for u in used if u[2] not in allowed.get(u[1], ())]
    assert not outside, f"heads reaches past embedcache's API and toolkit: {outside}"


def test_the_top_level_is_the_user_api_and_old_names_still_resolve():
    assert len(embedcache.__all__) <= 25 and not set(embedcache.__all__) & set(toolkit.__all__)
    with pytest.warns(DeprecationWarning, match="embedcache.toolkit.read_table|embedcache.toolkit.writing"):
        assert embedcache.writing is toolkit.writing  # code written against 0.1 keeps working, told where to look


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
    missing += [n for n in toolkit.__all__ if not hasattr(toolkit, n)]
    assert not missing


# Private names of third-party objects we must reach, each for a reason; nothing of our own is here.
THIRD_PARTY_PRIVATE = {
    ("embedcache/encoders/use.py", "self.model._tokenizer"),  # the USE package keeps its tokenizer there
    ("embedcache/encoders/use.py", "tok._unk_id"),  # ... and its unknown token's id
    ("heads/estimator.py", "_check_sample_weight"),  # scikit-learn's own sample-weight check
    ("heads/finetuning/trainer.py", "super()._get_train_sampler"),  # the transformers Trainer hook we override
    ("heads/model.py", "model._own_encoder"),  # HeadModel's own attribute, set by its classmethod
}


def test_no_module_uses_another_modules_private_names():
    """``from x import _y`` and ``thing._y`` (other than ``self``/``cls``) are how one module leans on another's
    internals; the storage package, compaction included, is built from its modules' public names."""
    found = set()
    for package in ("embedcache", "heads"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    found |= {
                        (rel, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                    }
                elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                        found.add((rel, ast.unparse(node)))
    assert found - THIRD_PARTY_PRIVATE == set(), "private names used across modules"
    assert THIRD_PARTY_PRIVATE <= found, "an allowed use is gone: take it off the list"


def _module_imports() -> dict[str, set[str]]:
    """Each module of ours -> the modules of ours it imports at module level (what runs on import)."""
    files = {}
    for package in ("embedcache", "heads"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".")
                base = base if node.level else node.module or ""
                edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def test_no_import_cycles():
    graph = _module_imports()
    assert graph["embedcache.cache.store"] >= {"embedcache.cache.reader", "embedcache.encoders"}  # the graph is read

    def cycle_from(start):
        path, seen = [start], set()

        def walk(node):
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    found = walk(nxt)
                    if found:
                        return found
                    path.pop()
            return None

        return walk(start)

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
