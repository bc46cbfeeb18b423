"""The Rust kernel's modules form no import cycle.

Read from the sources, no build needed: every `crate::x` a file names (in a
`use` line, a `use crate::{a, b::c}` group or a path in the code) is an edge
from the file's module to module `x`. A folder module (`simd_avx2/`,
`model/`) is one node whatever its files; `lib.rs` (which declares them all)
and `py.rs` (the binding, which nothing imports) are roots, left out.
"""

import re
from pathlib import Path

RUST = Path(__file__).resolve().parent.parent / "rust"
ROOTS = {"lib", "py"}

# Literals and comments first, so a `crate::` in a doc comment or a string is no edge.
_NOISE = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.S)
_PATH = re.compile(r"\bcrate::(\w+)")
_GROUP = re.compile(r"\bcrate::\{")
_INNER = re.compile(r"\{[^{}]*\}")


def module_of(path: Path, root: Path) -> str:
    """The node a source file belongs to: its file stem, or its top folder."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def references(source: str) -> set[str]:
    """Top-level module names the source reaches through `crate::`."""
    code = _NOISE.sub(" ", source)
    names = set(_PATH.findall(code))
    for group in _GROUP.finditer(code):
        depth, end = 1, group.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            end += 1
        items = code[group.end() : end - 1]
        while _INNER.search(items):  # `c::{D, e::F}` -> `c::`: only the first name is a module
            items = _INNER.sub("", items)
        names.update(item.split("::")[0].strip() for item in items.split(",") if item.strip())
    return names


def module_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """{module: modules it uses}, from {module: concatenated source}."""
    graph = {m: set() for m in files if m not in ROOTS}
    for m in graph:
        graph[m] = {r for r in references(files[m]) if r in graph and r != m}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None if the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def crate_sources(root: Path = RUST) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*.rs")):
        if path.relative_to(root).parts[0] == "tests":  # integration tests use the crate from outside
            continue
        m = module_of(path, root)
        files[m] = files.get(m, "") + path.read_text() + "\n"
    return files


def test_rust_modules_import_no_cycle():
    graph = module_graph(crate_sources())
    assert {"model", "ops", "tensor", "simd_avx2"} <= set(graph), sorted(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among Rust modules: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"  {m} uses {', '.join(sorted(graph[m]))}" for m in sorted(graph)
    )


def test_references_read_paths_and_groups_but_not_comments():
    source = """
        //! Uses `crate::commented` in a comment only.
        use crate::a::{self, Thing};
        use crate::{b, c::{D, e::F}, g::H};
        fn f() { crate::i::call(); let s = "crate::quoted"; } /* crate::blocked */
    """
    assert references(source) == {"a", "b", "c", "g", "i"}


def test_a_cycle_through_a_folder_module_is_found(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "mod.rs").write_text("mod dot;\n")
    (tmp_path / "kernels" / "dot.rs").write_text("use crate::tensor::Tensor;\n")
    (tmp_path / "tensor.rs").write_text("use crate::{dtype::DType, kernels};\n")
    (tmp_path / "dtype.rs").write_text("pub enum DType {}\n")
    (tmp_path / "py.rs").write_text("use crate::tensor;\n")
    graph = module_graph(crate_sources(tmp_path))
    assert graph == {"kernels": {"tensor"}, "tensor": {"dtype", "kernels"}, "dtype": set()}
    assert find_cycle(graph) == ["kernels", "tensor", "kernels"]
    (tmp_path / "kernels" / "dot.rs").write_text("use crate::dtype::DType;\n")
    assert find_cycle(module_graph(crate_sources(tmp_path))) is None
