"""The README is the user's manual: it must document every setting and every error code."""

from __future__ import annotations

from pathlib import Path

from service.errors import ErrorCode
from service.http.errors import STATUS_BY_CODE
from service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    missing = [f"CXR_{name.upper()}" for name in Settings.model_fields if f"`CXR_{name.upper()}`" not in README]
    assert not missing, f"README lacks settings: {missing}"


def test_every_error_code_has_an_http_status() -> None:
    assert set(STATUS_BY_CODE) == set(ErrorCode)


def test_readme_documents_every_client_error_code() -> None:
    missing = [code for code, status in STATUS_BY_CODE.items() if status < 500 or code in ("overloaded", "not_ready")]
    missing = [code for code in missing if f"`{code}`" not in README]
    assert not missing, f"README lacks error codes: {missing}"
