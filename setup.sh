#!/bin/sh
# Set up minirun and minivm on a fresh Debian 12 machine, as root.
#
#   ./setup.sh          Debian packages, a virtualenv in .venv with the project installed
#                       (editable), `minirun` and `minivm` linked into /usr/local/bin, and a
#                       guest kernel for minivm taken from Debian's linux-image package.
#
# Nothing is downloaded except Debian and PyPI packages.
set -eu
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (containers need CAP_SYS_ADMIN): sudo ./setup.sh" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# busybox-static  the userland of the built-in image `hello`
# libcap-dev, gcc, python3-dev  python-prctl is built from source against libcap
# gcc, libc6-dev  minivm builds its static user-switching helper (minivm/become.c) with them
# qemu-system-x86  minivm's hypervisor; iproute2 for inspecting what minirun sets up
# runc  the peer of tests/bench/startup.py, tests/bench/oci.py and the security table
#       (tests/bench/security_table.py)
# umoci, skopeo  real tools that write OCI images, used by the image-import tests
# podman (with conmon)  an engine that drives minirun through the OCI runtime interface
#                 (tests/test_podman.py, tests/bench/oci.py); libseccomp2 comes with it
# erofs-utils  minivm makes each layer of an image into a read-only disk with mkfs.erofs
apt-get install -y -qq --no-install-recommends \
    busybox-static libcap-dev gcc libc6-dev python3-venv python3-dev \
    qemu-system-x86 iproute2 xz-utils zstd erofs-utils \
    runc umoci skopeo podman >/dev/null

# The system interpreter, not a pyenv shim: every `minirun` start pays for the interpreter.
# editable_mode=compat puts the checkout on sys.path with a plain .pth line; the default
# editable finder costs every start about 8 ms of imports.
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
# Byte-compile now: where PYTHONDONTWRITEBYTECODE is set, every start would compile ~15 ms of source.
.venv/bin/python -m compileall -q minirun minivm
ln -sf "$PWD/.venv/bin/minirun" /usr/local/bin/minirun
ln -sf "$PWD/.venv/bin/minivm" /usr/local/bin/minivm
ln -sf "$PWD/.venv/bin/minicompare" /usr/local/bin/minicompare

# A guest kernel for minivm, unpacked from Debian's linux-image-amd64 into minivm's cache.
.venv/bin/minivm kernel fetch
