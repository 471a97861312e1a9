#!/usr/bin/env bash
# The local demo: install what it needs, bring up a loopback SSH host, `fab setup` and
# `fab deploy` examples/flaskapp onto it, redeploy a changed version under load, and check
# that the new version is live with 0 failed requests. Everything it starts is stopped and
# its temp dir removed at the end. Usage: demo/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v git >/dev/null || need+=(git)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "==> installing ${need[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv
fi
echo "==> pip install -e '.[server,deploy]'"
.venv/bin/pip install -q -e '.[server,deploy]'

exec .venv/bin/python demo/demo.py "$@"
