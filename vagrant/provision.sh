#!/usr/bin/env bash
# What a railcar host needs: python3 with venv, nginx in front, and a deploy user that owns
# the deploy root. Idempotent: a second run changes nothing.
# Usage: provision.sh [PUBLIC_KEY_LINE]   (as root)
# DEPLOY_USER (default deploy) and DEPLOY_ROOT (default /srv) name the user and the root.
set -euo pipefail

user=${DEPLOY_USER:-deploy}
root=${DEPLOY_ROOT:-/srv}

export DEBIAN_FRONTEND=noninteractive
missing=()
for package in python3 python3-venv nginx; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
install -d -o "$user" -g "$user" -m 0755 "$root"
install -d -o "$user" -g "$user" -m 0700 "$home/.ssh"
if [ -n "${1:-}" ]; then
    touch "$home/.ssh/authorized_keys"
    grep -qxF "$1" "$home/.ssh/authorized_keys" || printf '%s\n' "$1" >> "$home/.ssh/authorized_keys"
    chown "$user:$user" "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"
fi
echo "provisioned: python3 $(python3 -c 'import sys; print(sys.version.split()[0])'), nginx, user $user owning $root"
