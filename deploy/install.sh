#!/usr/bin/env bash
# Install everything drctl and its lab need on a Debian 12 machine, as root:
# Debian packages (libvirt, QEMU, etcd, busybox, build tools for libvirt-python,
# Chromium for report screenshots) and a virtualenv at .venv with drctl in it.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils   # the lab's hypervisors
  etcd-server etcd-client                                             # the store
  busybox-static cpio                                                 # the test guest's initramfs
  libvirt-dev pkg-config gcc python3-venv python3-dev                 # building libvirt-python
  iproute2 chromium                                                   # lab networking, report screenshots
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "install.sh: ready (.venv/bin/drctl)"
