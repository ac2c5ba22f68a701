#!/usr/bin/env bash
# Make a Debian bookworm base image with python3 from Debian's packages alone, for hosts that
# cannot pull from a container registry (air-gapped sites, CI here):
#
#   deploy/debian-base-image.sh [IMAGE]        # default IMAGE: cxr-base/bookworm-python3:local
#   docker build --build-arg BASE_IMAGE=cxr-base/bookworm-python3:local ...
#
# Needs root, debootstrap and a running Docker engine; does nothing when IMAGE already exists.
# CXR_DEBIAN_MIRROR picks the mirror (default: deb.debian.org).
set -euo pipefail

image=${1:-cxr-base/bookworm-python3:local}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image: present"
    exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${CXR_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# What an official Debian image also leaves out: downloaded packages and package lists.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "base image $image: created ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
