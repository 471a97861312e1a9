#!/usr/bin/env bash
# libvirt on a host where systemd is not PID 1 (a CI runner, a container): start virtlogd and
# libvirtd by hand, in a network namespace of their own, so libvirt's NAT network (bridge,
# dnsmasq, firewall rules) stays off the host's own network.
#
# Usage (as root):
#   vagrant/libvirt-host.sh start NETNS   start the daemons in NETNS unless libvirtd answers;
#                                         print the namespace every vagrant/ssh/fab call to the
#                                         VM must run in (`ip netns exec NETNS ...`), or an
#                                         empty line when libvirtd runs in the host's network
#   vagrant/libvirt-host.sh stop NETNS    stop the daemons `start` started and remove NETNS
#
# Hosts whose systemd runs libvirtd (a Linux laptop) need none of this.
# `start` also sets `user`/`group` to root in /etc/libvirt/qemu.conf: where /dev/kvm is
# root-only, QEMU run as libvirt-qemu makes libvirt probe QEMU again on every capability lookup
# (a `virsh define` took 55 s instead of 0.04 s).
set -euo pipefail

action=${1:-} netns=${2:-}
[ -n "$action" ] && [ -n "$netns" ] || { echo "usage: $0 start|stop NETNS" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "libvirt-host.sh: needs root" >&2; exit 1; }
stamp=/run/railcar-libvirt-$netns.started
qemu_conf=/etc/libvirt/qemu.conf

answers() { timeout 20 virsh -c qemu:///system version >/dev/null 2>&1; }

pid_netns() {   # the network namespace name of a pid ("" if the host's)
    ip netns identify "$1" 2>/dev/null || true
}

case $action in
start)
    if answers; then
        pid=$(cat /run/libvirtd.pid 2>/dev/null || pgrep -o -x libvirtd || true)
        echo "$([ -z "$pid" ] || pid_netns "$pid")"
        exit 0
    fi
    for tool in libvirtd virtlogd virsh ip; do
        command -v "$tool" >/dev/null || { echo "libvirt-host.sh: $tool is missing (apt-get install libvirt-daemon-system libvirt-clients iproute2)" >&2; exit 1; }
    done
    if ! grep -qx 'user = "root"' "$qemu_conf" 2>/dev/null; then
        printf '# railcar vagrant/libvirt-host.sh: QEMU as root (see there)\nuser = "root"\ngroup = "root"\n' >> "$qemu_conf"
    fi
    ip netns list | grep -qw "^$netns" || ip netns add "$netns"
    ip netns exec "$netns" ip link set lo up
    pgrep -x virtlogd >/dev/null || ip netns exec "$netns" virtlogd -d
    ip netns exec "$netns" libvirtd -d
    : > "$stamp"
    for _ in $(seq 60); do
        answers && { echo "$netns"; exit 0; }
        sleep 1
    done
    echo "libvirt-host.sh: libvirtd did not answer within 60 s" >&2
    exit 1
    ;;
stop)
    [ -e "$stamp" ] || exit 0
    for name in libvirtd virtlogd; do
        pid=$(cat "/run/$name.pid" 2>/dev/null || true)
        [ -n "$pid" ] && [ "$(pid_netns "$pid")" = "$netns" ] && kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 20); do
        [ -e /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null || break
        sleep 0.5
    done
    ip netns del "$netns" 2>/dev/null || true
    rm -f "$stamp"
    ;;
*)
    echo "usage: $0 start|stop NETNS" >&2; exit 2 ;;
esac
