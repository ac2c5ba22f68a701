"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on free ports, storing into a temporary folder.

The tests talk to it the way a site's router would, through QIDO-RS, WADO-RS and STOW-RS, and ask
Orthanc's own REST API whether it parsed what was stored (`/instances/{id}/simplified-tags`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from testkit.live_server import free_port, wait_until

ORTHANC = shutil.which("Orthanc", path=f"{os.environ.get('PATH', '')}:/usr/sbin")  # Debian puts it in /usr/sbin
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb


def missing() -> str | None:
    """What is not installed, in words, or None when Orthanc and its DICOMweb plugin are both there."""
    if ORTHANC is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.exists():
        return f"Orthanc's DICOMweb plugin is not installed at {DICOMWEB_PLUGIN} (apt-get install orthanc-dicomweb)"
    return None


@contextmanager
def orthanc_server(*, timeout: float = 60.0) -> Iterator[str]:
    """Start Orthanc (HTTP only, DICOM port off, no authentication, localhost); yields its base URL; always stops it.

    DICOMweb is at <base>/dicom-web/.
    """
    problem = missing()
    if problem is not None:
        raise FileNotFoundError(problem)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = {
            "Name": "cxr-effusion-tests",
            "StorageDirectory": f"{folder}/storage",
            "IndexDirectory": f"{folder}/storage",
            "HttpPort": port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config_path = Path(folder) / "orthanc.json"
        config_path.write_text(json.dumps(config))
        log_path = Path(folder) / "orthanc.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT, cwd=folder)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                lambda: httpx.get(f"{url}/plugins/dicom-web", timeout=1).status_code == 200,
                process,
                lambda: log_path.read_text(errors="replace"),
                timeout,
            )
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
