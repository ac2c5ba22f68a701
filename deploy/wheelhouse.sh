#!/usr/bin/env bash
# Download every wheel the image needs into wheelhouse/, for builds that must not reach an index:
#
#   deploy/wheelhouse.sh cpu            # then: docker build --target cpu --build-arg WHEELHOUSE=wheelhouse ...
#   deploy/wheelhouse.sh cpu gpu        # for --target gpu (+1.6 GB of CUDA and cuDNN wheels; the classic
#                                       # builder builds the cpu stages on the way, BuildKit needs only gpu)
#
# Run from the repository root on any host with pip and access to an index (or a mirror pip is
# configured for). The wheels are for the container's Python, not the host's: CPython
# CXR_WHEEL_PYTHON (default 3.11) on manylinux x86_64 up to glibc 2.CXR_WHEEL_GLIBC_MINOR
# (default 36, Debian bookworm). pip skips wheels already in the folder. Needs Python 3.11+ (tomllib).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: deploy/wheelhouse.sh cpu|gpu [cpu|gpu]" >&2
    exit 2
fi
# The project's build backend (pyproject.toml's [build-system] requires: setuptools>=74.1): the image
# builds the project from source, C extension included, in an isolated build environment that pip
# fills from the wheelhouse too.
mapfile -t requirements < <("${PYTHON:-python3}" -c '
import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")')
[ "${#requirements[@]}" -gt 0 ] || { echo "could not read [build-system] requires from pyproject.toml" >&2; exit 1; }
for flavour in "$@"; do
    case "$flavour" in
        cpu | gpu) requirements+=(".[$flavour,reports]") ;;  # the image installs the reports extra too (install-venv.sh)
        *) echo "unknown flavour $flavour: cpu or gpu" >&2; exit 2 ;;
    esac
done
dest=${CXR_WHEELHOUSE:-wheelhouse}
platforms=()
for minor in $(seq 5 "${CXR_WHEEL_GLIBC_MINOR:-36}"); do
    platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
mkdir -p "$dest"
"${PYTHON:-python3}" -m pip download --quiet --only-binary=:all: --implementation cp \
    --python-version "${CXR_WHEEL_PYTHON:-3.11}" "${platforms[@]}" --dest "$dest" "${requirements[@]}"
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
