#!/usr/bin/env bash
# What a railcar host needs: python3 with venv, nginx in front, and a `deploy` user that
# owns /srv. Idempotent. Usage: provision.sh [PUBLIC_KEY_LINE]
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends python3 python3-venv nginx >/dev/null

if ! id deploy >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash deploy
fi
install -d -o deploy -g deploy -m 0755 /srv
install -d -o deploy -g deploy -m 0700 /home/deploy/.ssh
if [ -n "${1:-}" ]; then
    touch /home/deploy/.ssh/authorized_keys
    grep -qxF "$1" /home/deploy/.ssh/authorized_keys || printf '%s\n' "$1" >> /home/deploy/.ssh/authorized_keys
    chown deploy:deploy /home/deploy/.ssh/authorized_keys
    chmod 0600 /home/deploy/.ssh/authorized_keys
fi
echo "provisioned: python3 $(python3 -c 'import sys; print(sys.version.split()[0])'), nginx, user deploy"
