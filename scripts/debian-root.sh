#!/usr/bin/env bash
# Prints the path of a pristine, minimal Debian 12 root made by debootstrap
# from Debian's archive, making it first if it is not cached yet. Callers copy
# or import it and never change it: the fresh-machine check copies it per run,
# the image test imports it as the base image.
#
#   scripts/debian-root.sh            cache in /var/cache/weft (WEFT_CACHE)
#
# The cache is made in a temporary folder and renamed into place, so a killed
# run leaves no half-made root behind; a lock keeps two runs from racing.
set -euo pipefail

cache="${WEFT_CACHE:-/var/cache/weft}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$cache/debian-$suite-minbase"
done_mark="$root.complete"

mkdir -p "$cache"
exec 9>"$cache/.debian-root.lock"
flock 9

if [ ! -f "$done_mark" ] || [ ! -d "$root" ]; then
  command -v debootstrap >/dev/null || {
    echo "debian-root: debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
  }
  tmp="$(mktemp -d "$cache/.debian-root.XXXXXX")"
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  echo "debian-root: debootstrap --variant=minbase $suite from $mirror (once; cached in $root)" >&2
  if ! debootstrap --variant=minbase "$suite" "$tmp/root" "$mirror" >"$tmp/log" 2>&1; then
    tail -n 20 "$tmp/log" >&2
    exit 1
  fi
  # What a new machine has and a bare debootstrap lacks: a hostname and the
  # security and updates suites in its sources.
  echo fresh-debian >"$tmp/root/etc/hostname"
  cat >"$tmp/root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
SOURCES
  rm -f "$done_mark"
  rm -rf --one-file-system "$root"
  mv "$tmp/root" "$root"
  touch "$done_mark"
fi
echo "$root"
