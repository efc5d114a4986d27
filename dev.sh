#!/usr/bin/env bash
# weft's one entry point on a Debian 12 machine, run as root:
#   ./dev.sh demo    install what is missing, build, run the demo
#   ./dev.sh test    install what is missing, build, run every test
#   ./dev.sh bench   install what is missing, build, run the benchmarks (the
#                    cross-host TCP one also on the kernel datapath, in a VM)
#   ./dev.sh vm-test [SUITE[:TEST,..] ...]
#                    the suites on the kernel datapath, in a QEMU guest with
#                    Debian's kernel (default: every suite that runs there)
#   ./dev.sh build   install what is missing, build the static binaries
#   ./dev.sh image   build, then the node image with podman (BASE_IMAGE=... to pick its base)
#   ./dev.sh fresh   the README's two commands on a brand-new Debian 12 root (scripts/fresh-machine.sh)
set -euo pipefail
cd "$(dirname "$0")"

# What building and running weft needs. protoc and the well-known .proto files
# (libprotobuf-dev, only a Recommends of protobuf-compiler) are for
# etcd-client's build script; etcd-client has etcdctl, which the tests use.
APT_PACKAGES=(
  build-essential pkg-config ca-certificates curl protobuf-compiler libprotobuf-dev
  openvswitch-switch etcd-server etcd-client iproute2 iputils-ping ethtool iperf3
  containernetworking-plugins nftables iptables openssl
)
# What only the tests need on top: the image test builds the Containerfile
# with podman (and runc, which works where crun refuses a host's cgroups) on a
# base made by debootstrap.
# The VM runner's own tests boot the kernel-datapath guest (VM_PACKAGES).
TEST_PACKAGES=(podman runc debootstrap qemu-system-x86 e2fsprogs)
# The kernel-datapath guest: QEMU, and debootstrap and mkfs.ext4 to make it.
VM_PACKAGES=(qemu-system-x86 debootstrap e2fsprogs)
# The suites (test-harness/tests/<suite>.rs) that run on the kernel
# datapath, about 10 minutes under TCG here; CI runs them all.
VM_SUITES=(lifecycle failures bad_input overlay isolation isolation_networks isolation_hosts)

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "dev.sh: run as root (network namespaces and Open vSwitch need it)" >&2
    exit 1
  fi
}

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "dev.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    # Debian 12's own rustc is too old for the dependencies; rustup is the usual way.
    echo "dev.sh: installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

build() {
  # Static binaries, like the reference plugins: they run on any host whatever
  # its glibc, and start ~0.25 ms faster (no shared libraries to load). An
  # explicit --target keeps the flag off build scripts and proc-macros.
  HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
  case "$HOST_TRIPLE" in
    *-linux-gnu) export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" ;;
  esac
  CARGO_FLAGS=(--release --target "$HOST_TRIPLE")
  cargo build "${CARGO_FLAGS[@]}" --workspace --bins --quiet
  export WEFT_BIN_DIR="$PWD/target/$HOST_TRIPLE/release"
}

stage_image_context() {
  local ctx="target/image-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$WEFT_BIN_DIR/weft" "$WEFT_BIN_DIR/weft-ipam" "$WEFT_BIN_DIR/weftctl" "$ctx/"
  echo "$ctx"
}

cmd="${1:-}"
case "$cmd" in
  demo)
    need_root; install_packages; build
    "$WEFT_BIN_DIR/weft-harness" demo
    ;;
  test)
    need_root; install_packages "${TEST_PACKAGES[@]}"; build
    cargo test "${CARGO_FLAGS[@]}" --workspace
    ;;
  vm-test)
    need_root; install_packages "${VM_PACKAGES[@]}"; build
    cargo test "${CARGO_FLAGS[@]}" -p weft-harness --no-run --quiet
    shift
    [ "$#" -gt 0 ] || set -- "${VM_SUITES[@]}"
    "$WEFT_BIN_DIR/weft-harness" vm-test "$@"
    ;;
  bench)
    need_root; install_packages "${VM_PACKAGES[@]}"; build
    "$WEFT_BIN_DIR/weft-harness" bench --runs "${RUNS:-200}"
    # The same cross-host TCP figure on the kernel datapath, in the guest.
    "$WEFT_BIN_DIR/weft-harness" vm --env "WEFT_BIN_DIR=$WEFT_BIN_DIR" -- \
      '$WEFT_BIN_DIR/weft-harness bench --overlay-only --throughput-only'
    ;;
  build)
    need_root; install_packages; build
    echo "$WEFT_BIN_DIR"
    ;;
  image)
    need_root; install_packages podman runc; build
    podman build --build-arg "BASE_IMAGE=${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}" \
      -f Containerfile -t "${IMAGE:-localhost/weft:latest}" "$(stage_image_context)"
    ;;
  fresh)
    need_root
    exec scripts/fresh-machine.sh
    ;;
  *)
    echo "usage: $0 demo|test|vm-test|bench|build|image|fresh" >&2
    exit 2
    ;;
esac
