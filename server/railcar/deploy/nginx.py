"""The app's nginx site on a host (railcar.nginx): SITES_DIR/railcar-APP.conf.

Rendered ON THE HOST by the server venv's `railcar config nginx` from the server's own
command line (command.start_argv), so the socket and static paths are the host's and the
release's railcar.toml is honoured. `fab setup` and a deploy run as root install it when it
changed, test it and reload nginx; a deploy account (which may not write under /etc) only
says whether the installed site is up to date.
"""

from __future__ import annotations

import posixpath

from .command import start_argv
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig


def nginx_site(config: DeployConfig) -> str:
    return posixpath.join(config.nginx["sites_dir"], f"railcar-{config.app}.conf")


# The app's nginx site in one round trip: $1 railcar, $2 site file, $3 test command, $4 reload
# command, $5 current, $6 mode (install, or check: only say whether it is up to date), $7 a
# dir for the check's rendering; then the `railcar config nginx` arguments (the server's own
# command line, so the site has the host's paths). Installed: rendered next to the site under
# a dot name (no include glob matches it), renamed over the site only when it differs; a
# failing test puts the old site back (or removes the new one) and fails with nginx's message.
NGINX_SITE = r'''
railcar=$1 site=$2 check=$3 reload=$4 current=$5 mode=$6 tmp=$7
shift 7
dir=$(dirname "$site") name=$(basename "$site")
new="$dir/.$name.new" old="$dir/.$name.old"
[ "$mode" = check ] && new="$tmp/$name.new"
[ -d "$dir" ] || { echo "$dir does not exist: is nginx installed (railcar.nginx.sites_dir)?" >&2; exit 1; }
[ -d "$current" ] || { echo "no release yet: the first deploy installs it"; exit 0; }
"$railcar" config nginx -o "$new" "$@" || { rm -f "$new"; exit 1; }
if cmp -s "$new" "$site"; then rm -f "$new"; echo "unchanged $site"; exit 0; fi
if [ "$mode" = check ]; then
  rm -f "$new"
  echo "WARNING: $site is out of date, and $(id -un) may not install it: run \`fab setup\` to install it"
  exit 0
fi
had=no
if [ -e "$site" ]; then cp -p "$site" "$old" || exit 1; had=yes; fi
chmod 644 "$new" && mv -f "$new" "$site" || exit 1
if ! out=$(sh -c "$check" 2>&1); then
  if [ $had = yes ]; then mv -f "$old" "$site"; else rm -f "$site"; fi
  printf '%s\n' "$out" >&2
  echo "\`$check\` failed: the previous site is left in place" >&2
  exit 1
fi
rm -f "$old"
sh -c "$reload" || { echo "\`$reload\` failed" >&2; exit 1; }
echo "installed $site, nginx reloaded"
'''


def nginx_argv(paths: Paths, config: DeployConfig) -> list[str]:
    """`railcar config nginx` arguments: the server's options (not the env file, which only
    the app account reads), the listen address and server names, the TLS listener's."""
    argv = start_argv(paths, config)[2:]
    at = argv.index("--env-file")
    del argv[at:at + 2]
    argv += ["--listen", config.nginx["listen"]]
    for name in config.nginx["server_names"]:
        argv += ["--server-name", name]
    if config.nginx["ssl_certificate"]:
        argv += ["--ssl-certificate", config.nginx["ssl_certificate"],
                 "--ssl-certificate-key", config.nginx["ssl_certificate_key"],
                 "--ssl-listen", config.nginx["ssl_listen"]]
    return argv


def ensure_nginx_site(remote: Remote, paths: Paths, config: DeployConfig,
                      install: bool = True) -> str:
    """Render the app's nginx site on the host. `install` (as root): install it if it
    changed, test, reload; raises RemoteError with nginx's message when the test fails (the
    old site stays). Otherwise only report whether the installed site is up to date.
    Idempotent; one round trip. Returns the script's last line."""
    nginx = config.nginx
    out = remote.script(NGINX_SITE, paths.railcar, nginx_site(config), nginx["test_command"],
                        nginx["reload_command"], paths.current,
                        "install" if install else "check", paths.tmp,
                        *nginx_argv(paths, config), label="nginx-site")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "done"
