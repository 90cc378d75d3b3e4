"""The code's layout promises (README "Layout"): dependencies point one way, one module builds
models and stores, no module grows past 500 lines. Read from the source, so a wrong import fails
here even when it sits inside a function."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "segsearch": "segsearch",
    "indexer": "segsearch.indexer",
    "api": "segsearch.api",
    "cli": "segsearch.cli",
    "migrations": "segsearch.migrations",
}

# layer -> packages it must never import
FORBIDDEN = {
    "core": ("segsearch.indexer", "segsearch.api", "segsearch.cli", "segsearch.library", "segsearch.eval"),
    "indexer": ("segsearch.api", "segsearch.cli", "segsearch.library", "segsearch.eval"),
    "library": ("segsearch.api", "segsearch.cli", "segsearch.eval"),
    "eval": ("segsearch.api", "segsearch.cli"),
    "api": ("segsearch.indexer", "segsearch.cli", "segsearch.eval"),
    "cli": ("segsearch.indexer",),
}


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            name = ".".join([package, *rel.parts]).removesuffix(".__init__")
            yield name, path


def layer(name: str) -> str | None:
    if name == "segsearch.__main__":  # `python -m segsearch` is the command line
        return "cli"
    for prefix, lay in (
        ("segsearch.indexer", "indexer"),
        ("segsearch.api", "api"),
        ("segsearch.cli", "cli"),
        ("segsearch.eval", "eval"),
        ("segsearch.library", "library"),
        ("segsearch.migrations", None),
    ):
        if name == prefix or name.startswith(prefix + "."):
            return lay
    return "core"


def imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_dependencies_point_one_way():
    """core <- indexer <- library <- (cli, api); the API reaches the indexer only through the library."""
    wrong = []
    for name, path in modules():
        lay = layer(name)
        if lay is None or name == "segsearch":  # the package root re-exports Library lazily
            continue
        for imp in imported(path):
            if any(imp == f or imp.startswith(f + ".") for f in FORBIDDEN[lay]):
                wrong.append(f"{name} ({lay}) imports {imp}")
    assert not wrong, "\n".join(wrong)


def test_one_place_builds_models_and_stores():
    """Only segsearch.runtime loads models and opens stores for the product's code."""
    builders = (
        "ClipEmbedder.from_spec",
        "load_sam(",
        "Catalog.open(",
        "open_vector_index(",
        "EdgeVectorIndex(",
        "ServerVectorIndex(",
    )
    allowed = {
        "segsearch.runtime",
        "segsearch.models.clip",
        "segsearch.models.sam",
        "segsearch.store.vectors",
        "segsearch.store.sql",
        "segsearch.store.edge",
        "segsearch.store.server",
    }
    found = []
    for name, path in modules():
        if name in allowed:
            continue
        text = path.read_text()
        found += [f"{name}: {b}" for b in builders if b in text and f"runtime.{b}" not in text]
    assert not found, "\n".join(found)


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for _, p in modules() if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long


def test_the_layout_checks_see_a_wrong_import(tmp_path):
    """The checks above read real imports (a function-level one too), so they can fail."""
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from segsearch.indexer.run import index_paths\n")
    assert "segsearch.indexer.run" in imported(p)
    assert layer("segsearch.api.routes") == "api" and layer("segsearch.search") == "core"


def test_settings_is_a_leaf():
    """settings imported the model registry and the registry imported settings: a leaf now, so
    any module can read the settings without pulling the models in (or a cycle)."""
    ours = {m for m in imported(ROOT / "segsearch" / "settings.py") if m == "segsearch" or m.startswith("segsearch.")}
    assert not ours, ours
