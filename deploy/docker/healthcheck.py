"""Docker HEALTHCHECK: exit 0 only when the service in this container answers /ready with 200.

Standard library only: the image carries no curl. Proxies are bypassed so that an HTTP_PROXY
set for the container cannot turn a local check into a remote one.
"""

import os
import sys
import urllib.request

URL = f"http://127.0.0.1:{os.environ.get('CXR_PORT', '8000')}/ready"

try:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(URL, timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as error:  # URLError, HTTPError (503 while loading or draining), timeouts
    print(f"not ready: {error}")
    sys.exit(1)
