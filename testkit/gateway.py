"""A real reverse proxy (Debian's nginx) in front of a running service, serving it under a path prefix.

Gateways do it two ways, and the service must work behind both: one strips the prefix before
passing the request on (`/cxr/predict` arrives as `/predict`), the other keeps it (`/cxr/predict`
arrives as is). One nginx, two ports: `strip` and `keep`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from testkit.live_server import free_port, wait_until

NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")  # Debian puts it in /usr/sbin

CONFIG = """
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
{user}
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_max_body_size 64m;
    client_body_buffer_size 64m;  # uploads stay in memory, never in a temporary file
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{strip};
        location /cxr/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}  # URI part given: the prefix is replaced by /
    }}
    server {{
        listen 127.0.0.1:{keep};
        location /cxr/ {{ proxy_pass http://127.0.0.1:{upstream}; }}  # no URI part: the path is passed on as is
    }}
}}
"""


@contextmanager
def nginx_gateway(upstream_port: int, *, timeout: float = 30.0) -> Iterator[dict[str, str]]:
    """Start nginx in front of 127.0.0.1:`upstream_port`; yields the base URLs {"strip": ..., "keep": ...}."""
    if NGINX is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
    ports = {"strip": free_port(), "keep": free_port()}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""  # as root, nginx's workers would otherwise run as nobody
        config.write_text(CONFIG.format(folder=folder, user=user, upstream=upstream_port, **ports))
        process = subprocess.Popen(
            [NGINX, "-p", folder, "-c", str(config), "-e", f"{folder}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
        try:
            error_log = Path(folder) / "error.log"
            wait_until(
                lambda: all(httpx.get(f"{url}/cxr/live", timeout=1).status_code == 200 for url in urls.values()),
                process,
                lambda: error_log.read_text(errors="replace") if error_log.exists() else "",
                timeout,
            )
            yield urls
        finally:
            process.terminate()
            process.wait(timeout=10)
