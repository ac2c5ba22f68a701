#!/bin/sh
# Install the project with one ONNX Runtime flavour (`cpu` or `gpu` extra) into /opt/venv, from
# the wheelhouse folder named by WHEELHOUSE (offline, no index at all) or else from PIP_INDEX_URL.
# Then remove pip and setuptools: the runtime image installs nothing.
set -eu
flavour="$1"
if [ -n "${WHEELHOUSE:-}" ]; then
    set -- --no-index --find-links "/src/${WHEELHOUSE}"
else
    set -- --index-url "${PIP_INDEX_URL:?PIP_INDEX_URL or WHEELHOUSE must be set}"
fi
/opt/venv/bin/pip install --no-cache-dir "$@" "/src[${flavour}]"
/opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools
