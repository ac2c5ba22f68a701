#!/usr/bin/env bash
# Make a Debian bookworm base image with python3 from Debian's packages alone, for hosts that
# cannot pull from a container registry (air-gapped sites, CI here), and optionally its build image:
#
#   deploy/debian-base-image.sh [IMAGE [BUILD_IMAGE]]
#       IMAGE        default cxr-base/bookworm-python3:local: debootstrap bookworm + python3, python3-venv
#       BUILD_IMAGE  (optional, e.g. cxr-base/bookworm-python3-build:local) IMAGE plus gcc, libc6-dev
#                    and python3-dev: the C compiler and headers the image's build stages need
#   docker build --build-arg BASE_IMAGE=cxr-base/bookworm-python3:local \
#       --build-arg BUILD_IMAGE=cxr-base/bookworm-python3-build:local ...
#
# The build stages fill /opt/venv and the runtime stages copy it, so both images must have the very
# same Python at the same path: BUILD_IMAGE is therefore made from IMAGE itself (one more layer on
# top of it, committed from a container that installs the three packages), never from a second
# debootstrap, and the script fails if installing them would change any package IMAGE already has
# (the mirror moved on since IMAGE was made: remove both images and run it again).
#
# Needs root, debootstrap and a running Docker engine; does nothing for an image that already
# exists. CXR_DEBIAN_MIRROR picks the mirror (default: deb.debian.org); BUILD_IMAGE's packages come
# from the mirror IMAGE was made from, fetched with the host's network (as debootstrap does).
set -euo pipefail

image=${1:-cxr-base/bookworm-python3:local}
build_image=${2:-}
exists() { docker image inspect "$1" >/dev/null 2>&1; }
size_of() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

if exists "$image"; then
    echo "base image $image: present"
else
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "${CXR_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; exit 1; }
    # What an official Debian image also leaves out: downloaded packages and package lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
    trap - EXIT
    echo "base image $image: created ($(size_of "$image"))"
fi

[ -n "$build_image" ] || exit 0
if exists "$build_image"; then
    echo "build image $build_image: present"
    exit 0
fi
# Run inside a container of IMAGE (host network, so it reaches the mirror as debootstrap did):
# note every installed package, install the three, refuse any change to a package noted, clean up.
# The host's http_proxy comes in as an argument, not as an environment variable, which `docker
# commit` would keep in the image.
install='
set -eu
export DEBIAN_FRONTEND=noninteractive
[ -z "$1" ] || export http_proxy="$1"
dpkg-query -W -f "\${Package} \${Version}\n" | sort >/tmp/before
apt-get update -qq
apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/tmp/apt.log 2>&1 \
    || { tail -20 /tmp/apt.log; exit 1; }
dpkg-query -W -f "\${Package} \${Version}\n" | sort >/tmp/after
changed=$(comm -23 /tmp/before /tmp/after)
if [ -n "$changed" ]; then
    echo "installing the compiler would change packages of the base image (the mirror has newer ones):"
    echo "$changed"
    exit 1
fi
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/before /tmp/after /tmp/apt.log
'
container=cxr-base-build-$$
trap 'docker rm -f "$container" >/dev/null 2>&1 || true' EXIT
docker run --name "$container" --network host "$image" sh -c "$install" sh "${http_proxy:-}" >&2 \
    || { echo "build image $build_image: could not install gcc, libc6-dev, python3-dev into $image" >&2; exit 1; }
docker commit --change 'CMD ["/bin/bash"]' "$container" "$build_image" >/dev/null
echo "build image $build_image: created ($image + $(docker run --rm --network none "$build_image" gcc -dumpfullversion 2>/dev/null | sed 's/^/gcc /'), $(size_of "$build_image"))"
