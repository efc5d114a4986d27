#!/usr/bin/env bash
# The fresh-machine check: the README's two set-up commands, exactly as
# written there, on a brand-new minimal Debian 12 root, so that a missing
# install step cannot hide behind packages this machine happens to have.
#
#   ./dev.sh fresh            (or scripts/fresh-machine.sh), as root
#
# - The pristine root comes from scripts/debian-root.sh (debootstrap, cached);
#   each run works on its own copy, so runs never see each other's installs.
# - A clean clone of the committed tree (HEAD) goes in /root/weft.
# - It runs in private mount and PID namespaces: fresh proc, the host's sys
#   and dev, a tmpfs /run (with /run/netns), /tmp and /dev/shm, the host's
#   resolv.conf and local CA certificates. Network namespaces, OVS, etcd and podman made inside die with
#   those namespaces; the copy is removed on every exit path.
# - Rust: rustup's download is not reachable from these machines, so the
#   host's toolchain (~/.rustup and ~/.cargo/bin) is bound in read-only. The
#   crate registry inside starts empty. Everything else comes from dev.sh.
#
# WEFT_FRESH_KEEP=1 keeps the copy for a look afterwards (its path is printed).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh: run as root (namespaces, chroot)" >&2
  exit 1
fi
for tool in git unshare chroot findmnt; do
  command -v "$tool" >/dev/null || { echo "fresh: $tool is missing" >&2; exit 1; }
done
# Where the host's toolchain is, without trusting HOME (CI may not set it).
cargo_path="$(command -v cargo || true)"
[ -n "$cargo_path" ] || cargo_path="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo"
cargo_bin="$(dirname "$cargo_path")"
rustup_home="${RUSTUP_HOME:-$("$cargo_bin/rustup" show home 2>/dev/null || echo "${HOME:-/root}/.rustup")}"
[ -x "$cargo_bin/cargo" ] && [ -d "$rustup_home/toolchains" ] || {
  echo "fresh: no rustup toolchain at $rustup_home and $cargo_bin to bind in" >&2
  exit 1
}
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "fresh: note: uncommitted changes are not part of this check (it clones HEAD)" >&2
fi

pristine="$("$repo/scripts/debian-root.sh")"
work="$(mktemp -d /var/tmp/weft-fresh.XXXXXX)"
root="$work/root"
log="$work/fresh.log"
inner_pid=""

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$inner_pid" ] && kill -0 "$inner_pid" 2>/dev/null; then
    # The namespace's first process: when it dies the kernel kills every
    # other process in the PID namespace, and the mount namespace goes too.
    kill -KILL "$inner_pid" 2>/dev/null || true
    wait "$inner_pid" 2>/dev/null || true
  fi
  if [ -f "$log" ]; then
    cp "$log" /var/tmp/weft-fresh-last.log
  fi
  if [ "${WEFT_FRESH_KEEP:-0}" = 1 ]; then
    echo "fresh: kept $work" >&2
  elif findmnt -rn -o TARGET | grep -q "^$work"; then
    # Never remove a tree that still has something mounted in it.
    echo "fresh: mounts remain under $work; not removing it" >&2
    rc=1
  else
    rm -rf --one-file-system "$work"
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "fresh: copying the pristine root to $root" >&2
cp -a "$pristine" "$root"
git clone --quiet --no-hardlinks "$repo" "$root/root/weft"
echo "fresh: testing $(git -C "$root/root/weft" log -1 --format='%h %s')" >&2

# The README's two commands: the first sh block, comments dropped.
mapfile -t commands < <(awk '/^```sh$/{f=1; next} f&&/^```/{exit} f' "$repo/README.md" | sed 's/[[:space:]]*#.*$//' | grep -v '^[[:space:]]*$')
if [ "${#commands[@]}" -ne 2 ]; then
  echo "fresh: expected two commands in the README's first sh block, found ${#commands[@]}" >&2
  exit 1
fi
# Then each sh block that follows a "<!-- fresh-machine: run -->" line, as one
# script that stops at its first failing line.
while IFS= read -r -d '' block; do
  commands+=("set -e; $block")
done < <(awk '
  /^<!-- fresh-machine: run -->$/ {want=1; next}
  want && /^```sh$/ {inblock=1; want=0; next}
  inblock && /^```/ {inblock=0; printf "%s%c", body, 0; body=""; next}
  inblock {body = body $0 "\n"}
' "$repo/README.md")
printf 'fresh: will run: %s\n' "${commands[@]}" >&2

cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's local certificate authorities, as a site's image would carry
# them (this workplace reaches package registries through one). They join the
# trust store when dev.sh installs ca-certificates, as on the host.
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin"

inner=$(cat <<'INNER'
set -euo pipefail
root="$1"; rustup_home="$2"; cargo_bin="$3"; shift 3
# On a real machine / is a mount point; podman's layer unpacking remounts it.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mkdir -p "$root/run/netns" "$root/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --bind "$rustup_home" "$root/root/.rustup"
mount -o remount,bind,ro "$root/root/.rustup"
mount --bind "$cargo_bin" "$root/root/.cargo/bin"
mount -o remount,bind,ro "$root/root/.cargo/bin"
# What every Debian 12 machine has and debootstrap's minbase lacks: systemd
# (the install blocks enable a unit). Nothing else is added.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive chroot "$root" \
  /bin/sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null'
status=0
for c in "$@"; do
  echo "fresh: \$ $c"
  start=$(date +%s)
  if env -i HOME=/root TERM=dumb LANG=C.UTF-8 RUSTUP_AUTO_INSTALL=0 \
      PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      chroot "$root" /bin/bash -c "cd /root/weft && $c" </dev/null; then
    echo "fresh: ok in $(( $(date +%s) - start )) s: $c"
  else
    status=$?
    echo "fresh: FAILED (exit $status) after $(( $(date +%s) - start )) s: $c"
    break
  fi
done
exit "$status"
INNER
)

set +e
# --kill-child: if this script dies, however it dies, the namespace's first
# process gets SIGKILL and takes every process inside with it.
unshare --mount --pid --fork --kill-child=SIGKILL --propagation private \
  bash -c "$inner" fresh "$root" "$rustup_home" "$cargo_bin" "${commands[@]}" > >(tee "$log") 2>&1 &
inner_pid=$!
wait "$inner_pid"
rc=$?
inner_pid=""
set -e
if [ "$rc" -eq 0 ]; then
  echo "fresh: PASSED: the README's commands work on a new Debian 12 root (log: /var/tmp/weft-fresh-last.log)"
else
  echo "fresh: FAILED (exit $rc) (log: /var/tmp/weft-fresh-last.log)"
fi
exit "$rc"
