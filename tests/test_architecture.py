"""The import picture of ``dense/`` and ``probes/``, parsed with ``ast``: no cycle, no arrow back up the documented
layers, and every module in README.md's module table.

:data:`LAYERS` is the one statement of the architecture: the test checks it against the real imports, and the picture
in README.md ("Modules, one job each") and in ``dense/__init__.py``'s docstring is :func:`layer_picture` of it
(``python tests/test_architecture.py`` prints it)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The layers, bottom first: a module imports only modules of its own layer or of layers below it. A module is placed
# by its longest listed prefix.
LAYERS = [
    ("foundations", ["dense.errors", "dense._atomic", "dense._progress", "dense.labels", "dense.device",
                     "dense.preprocess", "dense.refine", "dense.upsample.guided"]),
    ("data and geometry", ["dense.features", "dense.head", "dense.compiled", "dense.batching", "dense.checkpoint",
                           "dense.distributed", "dense.metrics", "dense.coco", "dense.segdata", "dense.datasets",
                           "dense.viz"]),
    ("encoder", ["dense.encoder", "dense.text", "dense.cache", "dense.extract", "dense.tiling", "dense.upsample"]),
    ("text-aligned", ["dense.heatmap", "dense.heatmap.methods", "dense.heatmap.distractors", "dense.heatmap.inputs",
                      "dense.heatmap.scores", "dense.heatmap.windows", "dense.openvocab", "dense.refer",
                      "dense.similarity"]),
    ("probes", ["probes"]),
    ("evaluation", ["dense.eval"]),
    ("applications", ["dense.cli", "dense.demo", "dense.explore"]),
]
# Arrows back up, each with its reason; each must still exist here (so the entry cannot outlive the arrow).
KNOWN_BACK_ARROWS: set[tuple[str, str]] = set()


def layer_picture(width: int = 116) -> str:
    """The layers as README.md and ``dense.__doc__`` draw them: the bottom layer first, each module by its name in its
    package, and any arrow still running back up (:data:`KNOWN_BACK_ARROWS`) named below."""
    lines = []
    for k, (layer, modules) in enumerate(LAYERS):
        if k:
            lines.append("      |")
        names = [m.removeprefix("dense.") if m.startswith("dense.") else f"{m}/" for m in modules]
        line = f"{layer:<19}"
        for name in names:
            if len(line) + len(name) + 2 > width and line.strip() != layer:
                lines.append(line.rstrip())
                line = " " * 19
            line += name + "  "
        lines.append(line.rstrip())
    lines += [f"(back up: {m} imports {d})" for m, d in sorted(KNOWN_BACK_ARROWS)]
    return "\n".join(lines)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """``{module: modules of dense/probes it imports}``: the bare ``dense`` package (a lazy facade) and the module's
    own parent packages excluded."""
    paths = sorted([*ROOT.joinpath("dense").rglob("*.py"), *ROOT.joinpath("probes").rglob("*.py")])
    mods = {module_name(p): p for p in paths if p.name != "__main__.py"}
    mods.pop("dense")  # the package's __init__: the public facade, importing its public names lazily
    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        # a module's own packages are imported with it whatever it writes: not an arrow
        ancestors = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        graph[name] = {m for m in found if m in mods and m != name and m not in ancestors}
    return graph


def layer_of(module: str) -> int:
    best, idx = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, idx = len(p), i
    assert idx is not None, f"{module} is in no layer of tests/test_architecture.py: place it"
    return idx


def test_the_graph_is_parsed_from_the_real_files():
    g = import_graph()
    assert "dense.heatmap" in g["dense.openvocab"]  # from dense.heatmap import ...
    assert "dense.cli._args" in g["dense.cli.probe"]  # from dense.cli._args import ...
    assert "probes.linear" in g["probes"]  # a package's relative or absolute re-export
    assert "dense" not in g and "dense" not in set().union(*g.values())


def test_no_import_cycle():
    g = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_no_arrow_back_up_the_layers():
    g = import_graph()
    back = {(m, d) for m, deps in g.items() for d in deps if layer_of(d) > layer_of(m)}
    unexpected = sorted(back - KNOWN_BACK_ARROWS)
    assert not unexpected, "arrows back up the documented layers: " + "; ".join(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})" for m, d in unexpected)
    gone = sorted(KNOWN_BACK_ARROWS - back)
    assert not gone, f"no longer imported, remove from KNOWN_BACK_ARROWS: {gone}"


def readme_modules() -> set[str]:
    text = ROOT.joinpath("README.md").read_text()
    section = text.split("### Modules, one job each", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name.rstrip("/") for line in rows for name in re.findall(r"`([\w.]+/?)`", line.split("|")[1])}


def test_every_module_is_in_the_readme_table():
    listed = readme_modules()
    assert "dense.heatmap" in listed and "probes" in listed
    missing = []
    for m in import_graph():
        parts = m.split(".")
        covered = m in listed or any(".".join(parts[:k]) in listed for k in range(2, len(parts)))
        if not covered:
            missing.append(m)
    assert not missing, f"modules missing from README.md's module table: {', '.join(sorted(missing))}"
    stale = sorted(x for x in listed if x not in import_graph())
    assert not stale, f"README.md's module table lists modules that do not exist: {', '.join(stale)}"


def test_the_readme_and_the_package_docstring_draw_the_layers_of_this_test():
    import dense

    picture = layer_picture()
    section = ROOT.joinpath("README.md").read_text().split("### Modules, one job each", 1)[1].split("\n## ", 1)[0]
    drawn = section.split("```\n", 2)[1]
    assert drawn.rstrip("\n") == picture, "README's layer picture is stale: paste `python tests/test_architecture.py`"
    doc = "\n".join(line.removeprefix("    ") for line in dense.__doc__.splitlines())
    assert picture in doc, "dense.__doc__'s layer picture is stale: paste `python tests/test_architecture.py`"


def test_the_machine_is_read_in_one_place():
    """The CPU's description and this process's memory are read by ``dense.device`` alone; everything else calls it."""
    readers = re.compile(r"/proc/cpuinfo|/proc/self/statm|getrusage\(|\blscpu\b|\bpsutil\b")
    found = []
    for folder in ("dense", "probes", "scripts", "benchmarks"):
        for path in sorted(ROOT.joinpath(folder).rglob("*.py")):
            if path != ROOT / "dense" / "device.py":
                found += [f"{path.relative_to(ROOT)}:{k}" for k, line in enumerate(path.read_text().splitlines(), 1)
                          if readers.search(line)]
    assert not found, "read the machine through dense.device (cpu_model_and_flags, rss_gib, peak_rss_gib): " + \
        ", ".join(found)
    assert readers.search(ROOT.joinpath("dense", "device.py").read_text())


def test_no_tracker_numbers_in_the_code():
    """Comments say why, not which ticket: an issue number means nothing to a reader of the code."""
    pattern = re.compile(r"\b(?:issue|ticket|bug)\s*#?\s*\d+[a-z]?\b", re.IGNORECASE)
    found = []
    for folder in ("dense", "probes", "scripts", "benchmarks", "tests"):
        for path in sorted(ROOT.joinpath(folder).rglob("*.py")):
            for k, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert not found, "tracker numbers in the code:\n" + "\n".join(found)


if __name__ == "__main__":
    print(layer_picture())
