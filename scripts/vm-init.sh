#!/bin/bash
# PID 1 of a weft-harness vm guest, from the run's share (/run/weft-vm):
# sets up what a host's tests expect, mounts the checkout at the host's path,
# loads the kernel datapath, runs the command, writes its exit code to the
# share and powers the guest off. Its output is the serial console, which the
# runner streams; the markers WEFT-VM-BOOTED and WEFT-VM-EXIT are its cues.
set -u
run=/run/weft-vm
poweroff() {
  sync
  echo 1 >/proc/sys/kernel/sysrq
  echo o >/proc/sysrq-trigger
  sleep 10
}
trap poweroff EXIT
# The boot's kernel messages were the runner's to keep; from here on the
# console is the command's.
dmesg -n 1

mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/netns /run/lock /sys/fs/cgroup
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd
hostname weft-vm
# No network, so no resolver; an empty file keeps programs from warning.
[ -e /etc/resolv.conf ] || : >/etc/resolv.conf
ip link set lo up

src="$(cat "$run/src")"
mkdir -p "$src"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose weftsrc "$src"; then
  echo "weft-vm: the checkout share did not mount" >&2
  echo 125 >"$run/rc"
  exit
fi
# With ip_gre loaded (OVS's kernel GRE ports need it) every new namespace
# would get fallback devices (gre0, gretap0, erspan0) that the tests count
# as leftovers; keep them in the initial namespace only.
sysctl -qw net.core.fb_tunnels_only_for_init_net=1
# The kernel datapath and what the tunnels and the firewall need. kmod's
# modprobe follows softdeps (openvswitch wants crc32c).
for m in openvswitch vxlan geneve ip_gre veth tun bridge 8021q nf_tables; do
  modprobe -q "$m" || echo "weft-vm: modprobe $m failed" >&2
done

echo WEFT-VM-BOOTED
cd "$src"
# The environment the runner passed (KEY=VALUE lines), and nothing else.
mapfile -t vars < <(grep -v "^$" "$run/env")
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb "${vars[@]}" /bin/bash "$run/cmd" </dev/null
rc=$?
echo "$rc" >"$run/rc"
echo "WEFT-VM-EXIT $rc"
