#!/usr/bin/env bash
# Installs what podflow's tests and demo need on a Debian machine, once: Debian packages
# (bcc comes from Debian, never from PyPI), kernel headers for bcc, and the mounts eBPF
# tracing needs. Safe to run again: it only acts on what is missing.
set -euo pipefail

need_root() { [ "$(id -u)" = 0 ] || { echo "setup-host: run as root (apt-get, mounts)" >&2; exit 1; }; }

# podman buildah runc debootstrap: tests/deploy/test_deploy_container.py builds and runs the
# image (a Debian base made with debootstrap; runc, not crun: see tests/deploy/podman_helpers.py).
PKGS=(python3-bpfcc python3-venv python3-dev iproute2 iptables conntrack tcpdump iperf3
      tmux dnsmasq-base bpftool iputils-ping procps kmod gcc openssl
      podman buildah runc debootstrap)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. When the running kernel has no headers
# package (a custom or cloud kernel), fall back to Debian's generic headers: fine for our
# programs, which use only uapi structs (__sk_buff) and read internal offsets from BTF.
KDIR=/lib/modules/$(uname -r)
if [ ! -e "$KDIR/build/include" ]; then
  need_root
  if ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
    pkg=linux-headers-$(uname -r)
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then pkg=linux-headers-amd64; fi
    echo "setup-host: no headers for $(uname -r); installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg"
  fi
  if [ ! -e "$KDIR/build/include" ]; then
    build=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -1)
    echo "setup-host: fallback headers: build -> $build, source -> $common"
    mkdir -p "$KDIR"
    ln -sfn "$build" "$KDIR/build"
    ln -sfn "$common" "$KDIR/source"
  fi
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
