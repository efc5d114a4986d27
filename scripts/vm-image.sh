#!/usr/bin/env bash
# Prints the path of a cached guest for the kernel-datapath tests, making it
# first if needed: Debian 12's own kernel and initramfs (from the
# linux-image-amd64 package, whose openvswitch module this machine's kernel
# lacks) and an ext4 root image with what the simulated hosts run.
#
#   scripts/vm-image.sh        cache in /var/cache/weft (WEFT_CACHE)
#
# The folder it prints holds vmlinuz, initrd.img and root.ext4. The runner
# (weft-harness vm) boots them with the root image read-only underneath
# (QEMU's snapshot=on), so the cache never changes after it is made.
#
# Everything comes from Debian's archive: the minimal root of
# scripts/debian-root.sh, then apt-get inside a copy of it. The copy is made
# in a temporary folder and renamed into place; a lock keeps two runs apart.
set -euo pipefail
# Only the folder's path goes to stdout, where the runner reads it; what the
# tools print (mkfs.ext4 names the file it creates) goes to stderr.
exec 9>&1 1>&2

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${WEFT_CACHE:-/var/cache/weft}"
# What the guest's simulated hosts need: the same tools as the host suite,
# the kernel, and kmod for modprobe with softdeps (busybox's has none).
packages=(
  linux-image-amd64 initramfs-tools kmod udev procps
  openvswitch-switch etcd-server etcd-client iproute2 iputils-ping ethtool
  iperf3 nftables iptables containernetworking-plugins tcpdump
)
# The guest's PID 1 until the run's own init takes over: it mounts the
# run's share (QEMU's 9p, tag weftrun) and executes the init the runner put
# there (scripts/vm-init.sh of the checkout), so changing that needs no new
# image.
boot='#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/weft-vm
modprobe -q 9pnet_virtio
modprobe -q 9p
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 weftrun /run/weft-vm &&
  exec /bin/bash /run/weft-vm/init
echo "weft-vm: the run share did not mount" >&2
echo o >/proc/sysrq-trigger'
# A new list or boot script makes a new image; the old one stays until
# removed by hand.
key="$(printf '%s\n' v1 "$boot" "${packages[@]}" | sha256sum | cut -c1-12)"
out="$cache/vm-bookworm-$key"

mkdir -p "$cache"
exec 8>"$cache/.vm-image.lock"
flock 8

if [ ! -f "$out/complete" ]; then
  for tool in chroot unshare mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "vm-image: $tool is missing" >&2; exit 1; }
  done
  pristine="$("$repo/scripts/debian-root.sh")"
  tmp="$(mktemp -d "$cache/.vm-image.XXXXXX")"
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  echo "vm-image: making the guest (once; cached in $out)" >&2
  cp -a "$pristine" "$tmp/root"
  cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
  if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$tmp/root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$tmp/root/usr/local/share/ca-certificates/"
  fi
  # No service starts inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$tmp/root/usr/sbin/policy-rc.d"
  chmod +x "$tmp/root/usr/sbin/policy-rc.d"
  # apt-get in a private mount namespace, so /proc and /dev go with it.
  if ! unshare --mount --propagation private /bin/bash -euc '
      root="$1"; shift
      mount -t proc proc "$root/proc"
      mount --rbind /dev "$root/dev"
      mount --rbind /sys "$root/sys"
      env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive chroot "$root" \
        /bin/sh -ec "apt-get update -qq && apt-get install -y -qq --no-install-recommends $*"
    ' vm-image "$tmp/root" "${packages[@]}" >"$tmp/log" 2>&1; then
    tail -n 30 "$tmp/log" >&2
    exit 1
  fi
  rm -f "$tmp/root/usr/sbin/policy-rc.d" "$tmp/root/etc/resolv.conf"
  rm -rf "$tmp/root/var/lib/apt/lists/"* "$tmp/root/var/cache/apt/"*.bin \
    "$tmp/root/var/cache/apt/archives/"*.deb
  echo weft-vm >"$tmp/root/etc/hostname"
  printf '%s\n' "$boot" >"$tmp/root/sbin/weft-vm-boot"
  chmod 755 "$tmp/root/sbin/weft-vm-boot"
  mkdir -p "$tmp/image"
  cp "$(readlink -f "$tmp/root/vmlinuz")" "$tmp/image/vmlinuz"
  cp "$(readlink -f "$tmp/root/initrd.img")" "$tmp/image/initrd.img"
  # Room for what tests write (logs, etcd data, OVS databases) beside the
  # system; the file is sparse, so the unused part costs nothing.
  mkfs.ext4 -q -L weft-vm -d "$tmp/root" "$tmp/image/root.ext4" 6G
  rm -rf --one-file-system "$tmp/root"
  rm -rf --one-file-system "$out"
  mv "$tmp/image" "$out"
  touch "$out/complete"
fi
echo "$out" >&9
