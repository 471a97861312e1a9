#!/usr/bin/env bash
# Build the libvirt box of the railcar test VM from Debian's package archive alone: no box
# download, no Vagrant Cloud. Debian 12 with systemd, openssh-server, sudo, python3 with venv,
# nginx, and Vagrant's conventions (user vagrant with passwordless sudo and Vagrant's insecure
# key, eth0 on DHCP, SSH host keys made on first boot).
#
# Usage: sudo vagrant/build-box.sh            build the box unless it is cached; print its path
#        vagrant/build-box.sh --path          print where the box is (or would be), build nothing
#
# Build once, reuse: the box is named after the sha256 of this script, which holds every input
# (suite, package list, image layout), and cached as
#   ${RAILCAR_BOX_CACHE:-${XDG_CACHE_HOME:-~/.cache}/railcar-vagrant}/railcar-bookworm-HASH.box
# (under sudo: the invoking user's ~/.cache/railcar-vagrant, and the box is theirs).
# The Vagrantfile computes the same name and points `box_url` at that file, so `vagrant up
# --provider libvirt` adds it by itself. Editing this script makes a new box; delete old
# ones from the cache (and `vagrant box remove`) when you like.
#
# Needs root (it builds a root filesystem and a disk image) and the Debian packages
# mmdebstrap e2fsprogs fdisk grub-pc-bin grub2-common qemu-utils vagrant.
# DEBIAN_MIRROR (default http://deb.debian.org/debian) and DEBIAN_SECURITY_MIRROR
# (default http://deb.debian.org/debian-security) choose where packages come from.
#
# Made without a partition-aware loop device (some kernels lack MSDOS partition support):
# the ext4 file system is filled from the root directory by mkfs.ext4 -d, copied into a
# partitioned disk file at 1 MiB, and GRUB's boot sector and core image are written around it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# Under sudo the cache is the invoking user's (and so is the box), where their Vagrantfile looks.
owner= cache_home=${XDG_CACHE_HOME:-$HOME/.cache}
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ "$(id -u)" = 0 ]; then
    owner=$SUDO_USER
    cache_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cache
fi
cache=${RAILCAR_BOX_CACHE:-$cache_home/railcar-vagrant}
inputs=$(sha256sum "$here/build-box.sh" | cut -c1-12)
box="$cache/railcar-bookworm-$inputs.box"

if [ "${1:-}" = --path ]; then
    printf '%s\n' "$box"
    exit 0
fi
if [ -s "$box" ]; then
    echo "cached: $box" >&2
    printf '%s\n' "$box"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "build-box.sh: needs root (sudo $0)" >&2; exit 1; }
for tool in mmdebstrap mkfs.ext4 sfdisk grub-mkimage qemu-img; do
    command -v "$tool" >/dev/null || {
        echo "build-box.sh: $tool is missing (apt-get install mmdebstrap e2fsprogs fdisk" \
             "grub-pc-bin grub2-common qemu-utils)" >&2; exit 1; }
done
vagrant_key=
for found in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
             /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
    [ -f "$found" ] && vagrant_key=$found && break
done
[ -n "$vagrant_key" ] || { echo "build-box.sh: Vagrant's insecure key (keys/vagrant.pub) not found: is vagrant installed?" >&2; exit 1; }

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
disk_gib=10
packages=linux-image-amd64,initramfs-tools,systemd,systemd-sysv,udev,dbus,libpam-systemd
packages+=,ifupdown,isc-dhcp-client,iproute2,netbase,openssh-server,sudo,python3,python3-venv
packages+=,nginx,rsync,procps,ca-certificates,curl

work=$(mktemp -d "${TMPDIR:-/var/tmp}/railcar-box.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ -d "$cache" ] || { if [ -n "$owner" ]; then sudo -u "$owner" mkdir -p "$cache"; else mkdir -p "$cache"; fi; }
start=$(date +%s)

# Runs after the packages are in (mmdebstrap --customize-hook): $1 the root directory,
# $2 Vagrant's insecure public key.
cat > "$work/customize.sh" <<'EOF'
set -e
root=$1 key=$2
echo railcar-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 railcar-vm\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
printf 'LABEL=rootfs / ext4 errors=remount-ro 0 1\n' > "$root/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' > "$root/etc/network/interfaces"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Generate the SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target ssh.service
UNIT
chroot "$root" systemctl enable ssh-host-keys.service ssh.service networking.service
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer
chroot "$root" useradd --create-home --shell /bin/bash vagrant
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 "$root/home/vagrant/.ssh"
install -m 0600 "$key" "$root/home/vagrant/.ssh/authorized_keys"
chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
mkdir -p "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<'GRUB'
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry "Debian 12" {
    linux /vmlinuz root=LABEL=rootfs ro console=tty0 console=ttyS0,115200n8 net.ifnames=0
    initrd /initrd.img
}
GRUB
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
EOF

echo "build-box.sh: root file system (mmdebstrap) ..." >&2
mmdebstrap --mode=root --variant=minbase \
    --aptopt='APT::Install-Recommends "false"' --include="$packages" \
    --customize-hook="sh '$work/customize.sh' \"\$1\" '$vagrant_key'" \
    bookworm "$work/root" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" >&2
[ -e "$work/root/vmlinuz" ] && [ -e "$work/root/initrd.img" ] || {
    echo "build-box.sh: no /vmlinuz or /initrd.img in the root file system" >&2; exit 1; }

echo "build-box.sh: disk image ..." >&2
part_mib=$((disk_gib * 1024 - 1))
mkfs.ext4 -q -L rootfs -d "$work/root" "$work/part.raw" "${part_mib}M"
rm -rf "$work/root"
truncate -s "${disk_gib}G" "$work/disk.raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk.raw"
dd if="$work/part.raw" of="$work/disk.raw" bs=1M seek=1 conv=sparse,notrunc status=none
rm -f "$work/part.raw"
printf 'search --no-floppy --label rootfs --set=root\nset prefix=($root)/boot/grub\n' > "$work/early.cfg"
grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub \
    biosdisk part_msdos ext2 search search_label linux normal configfile echo test serial terminal
[ "$(stat -c %s "$work/core.img")" -lt $((2047 * 512)) ] || { echo "build-box.sh: core.img too big" >&2; exit 1; }
dd if=/usr/lib/grub/i386-pc/boot.img of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$work/disk.raw" bs=512 seek=1 conv=notrunc status=none

echo "build-box.sh: box ..." >&2
mkdir "$work/box"
qemu-img convert -c -O qcow2 "$work/disk.raw" "$work/box/box.img"
rm -f "$work/disk.raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$disk_gib" > "$work/box/metadata.json"
cat > "$work/box/Vagrantfile" <<'EOF'
# Built by railcar's vagrant/build-box.sh: Debian 12 for the libvirt provider.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$work/box" -czf "$work/railcar.box" metadata.json Vagrantfile box.img
mv -f "$work/railcar.box" "$box"
[ -z "$owner" ] || chown "$owner:" "$box"
echo "build-box.sh: built $box ($(du -h "$box" | cut -f1)) in $(( $(date +%s) - start )) s" >&2
printf '%s\n' "$box"
