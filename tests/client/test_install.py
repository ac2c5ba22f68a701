"""The commands work as a newcomer runs them: after `make serve`'s install, from any folder, and with a
missing optional package they say in one line what to install instead of ending in a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "effusion" / "00009211_000.png"


def without_onnxruntime(code: str) -> str:
    """Python code that runs `code` as if ONNX Runtime were not installed (an import of it fails)."""
    return f"import sys\nsys.modules['onnxruntime'] = None\n{code}"


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_client_needs_nothing_beyond_the_base_install() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = {requirement.split(">")[0].split("[")[0] for requirement in project["dependencies"]}
    assert {"httpx", "tqdm"} <= base  # `make serve` installs the base (+ cpu): the client must run after it


def test_local_mode_finds_the_shipped_model_from_any_folder(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    code = f"from cxr_client.cli import main\nsys.exit(main(['predict', {str(EXAMPLE)!r}, '--local', '-o', 'out.csv', '--no-progress']))"
    result = run_python(f"import sys\n{code}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "00009211_000.png" in output.read_text()


def test_local_mode_with_a_missing_model_says_what_to_pass(tmp_path: Path) -> None:
    code = f"import sys\nfrom cxr_client.cli import main\nsys.exit(main(['predict', {str(EXAMPLE)!r}, '--local', '--model', 'nope.onnx']))"
    result = run_python(code, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "code",
    [
        f"from cxr_client.cli import main\nsys.exit(main(['predict', {str(EXAMPLE)!r}, '--local']))",
        "import runpy\nsys.argv = ['service']\nrunpy.run_module('service', run_name='__main__')",
    ],
    ids=["cxr-effusion --local", "python -m service"],
)
def test_without_onnxruntime_the_commands_name_the_extra_in_one_line(code: str, tmp_path: Path) -> None:
    result = run_python(without_onnxruntime(code), tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cxr-effusion[cpu]" in result.stderr


def test_without_the_client_extra_dicomweb_names_it_in_one_line(tmp_path: Path) -> None:
    code = "import sys\nsys.modules['dicomweb_client'] = None\nfrom cxr_client.cli import main\n"
    code += "sys.exit(main(['dicomweb', '--pacs', 'http://127.0.0.1:9/dicom-web', '--since', '20250101']))"
    result = run_python(code, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cxr-effusion[client]" in result.stderr
