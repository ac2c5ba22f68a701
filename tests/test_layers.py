"""The layout's promises (docs/architecture.md): layers import downward only, and nothing imports in a circle.

- The core (decoding, preprocessing, model, batching, predictor, errors, settings) imports no web framework.
- The client (`cxr_client`) imports nothing heavy: no web framework, numpy or pydicom until `--local`.
- The product (service, cxr_client) imports neither training nor benchmarks nor test code, and
  benchmarks and testkit never import tests.
- No module of service, cxr_client, model_export, benchmarks, testkit or tests is part of an import cycle. The graph holds
  every import statement, the module-level ones and the lazy ones inside functions, because a lazy
  import that closes a circle is still a circle, only one that fails later; imports under
  `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "cxr_client", "model_export", "benchmarks", "testkit", "tests")
CORE = [
    "service.errors",
    "service.settings",
    "service.memory",
    "service.native_stderr",
    "service.decode",
    "service.decode.png",
    "service.decode.jpeg",
    "service.decode.dicom",
    "service.preprocessing",
    "service.prepare",
    "service.model",
    "service.variant_choice",
    "service.batching",
    "service.heatmap",
    "service.predictor",
    "service.results.finding",
    "service.results.fhir",
    "service.results.source",
    "service.results.dicom_sr",
    "service.results.dicom_sc",
    "service.shared_inference",
]


def loaded_after(code: str) -> set[str]:
    """Top-level module names in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(result.stdout.split())


SCORE_A_SCAN = """
import io
import numpy as np
from PIL import Image
from service.decode import decode
from service.preprocessing import preprocess
buffer = io.BytesIO()
Image.fromarray(np.add.outer(np.arange(300), np.arange(300)).astype(np.uint8)).save(buffer, format="PNG")
assert preprocess(decode(buffer.getvalue(), max_pixels=10**6).pixels).shape == (1, 1, 256, 256)
"""


def test_the_core_imports_no_web_framework_and_works_without_it() -> None:
    code = "\n".join(f"import {module}" for module in CORE) + SCORE_A_SCAN
    assert not loaded_after(code) & {"fastapi", "starlette", "uvicorn", "python_multipart", "prometheus_client"}


def test_the_client_imports_nothing_of_the_server_stack() -> None:
    loaded = loaded_after("import cxr_client.cli")  # the command line, predict included
    assert not loaded & {"fastapi", "starlette", "uvicorn", "numpy", "PIL", "pydicom", "onnxruntime", "pydantic"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere but under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    skipped = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for child in branch.body
        for node in ast.walk(child)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            # `from service.decode import png` imports the module service.decode.png; otherwise the longest known prefix.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph`, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports."""
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path) for path in files}
    return {module_name(path): imports_of(path, modules) for path in files}


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert graph["service.http.app"] >= {"service.decode.png", "service.predictor"}  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_layers_import_downward_only() -> None:
    def top(module: str) -> str:
        return module.split(".")[0]

    forbidden = {
        "service": {"cxr_client", "model_export", "benchmarks", "testkit", "tests"},
        "cxr_client": {"model_export", "benchmarks", "testkit", "tests"},
        "model_export": {"cxr_client", "benchmarks", "testkit", "tests"},
        "benchmarks": {"tests"},
        "testkit": {"benchmarks", "tests"},
    }
    wrong = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if top(target) in forbidden.get(top(module), set())
    ]
    assert not wrong, wrong


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
