#!/bin/sh
# Fill /opt/venv in two steps, so that a change to the code does not reinstall the dependencies:
#
#   install-venv.sh dependencies cpu|gpu   # while /src holds only pyproject.toml: the extra's dependencies (and `reports`)
#   install-venv.sh project                # after the code is copied in: the project, then pip goes
#
# Packages come from /wheelhouse when CXR_WHEELHOUSE is set (offline: no index at all), else
# from the index pip reads from PIP_INDEX_URL. The project is built from source, its C extension
# service.decode._pngfilter included (the build stage has a compiler and the Python headers); since
# pyproject.toml marks it optional, setuptools would only warn when it cannot be compiled, so the
# project step fails unless it imports: an image never ships the slow PNG path silently. The
# runtime image installs nothing, so pip and setuptools are removed at the end.
set -eu
if [ -n "${CXR_WHEELHOUSE:-}" ]; then
    set -- "$@" --no-index --find-links /wheelhouse
fi
step="$1"
shift
case "$step" in
    dependencies)
        flavour="$1"
        shift
        /opt/venv/bin/pip install --no-cache-dir "$@" "/src[${flavour},reports]"  # reports: /predict's DICOM answers
        ;;
    project)
        /opt/venv/bin/pip install --no-cache-dir --no-deps --force-reinstall "$@" /src
        # -I: from the venv, not from /src (the working directory).
        if ! /opt/venv/bin/python -I -c "import service.decode._pngfilter"; then
            echo "install-venv.sh: service.decode._pngfilter was not built: the build stage needs a C compiler" \
                "and the Python headers (BUILD_IMAGE, docs/deployment.md)" >&2
            exit 1
        fi
        /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools
        ;;
    *)
        echo "usage: install-venv.sh dependencies cpu|gpu | project" >&2
        exit 2
        ;;
esac
