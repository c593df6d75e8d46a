#!/usr/bin/env bash
# Installs (or upgrades) deltarelay as a systemd service. Safe to run again: it replaces the
# binary, the unit and the docs, and never touches an existing config or secrets file.
#
#   sudo ./deploy/install.sh                      # builds with cargo, then installs
#   sudo ./deploy/install.sh --bin ./deltarelay   # installs a binary you built elsewhere
#   DESTDIR=/tmp/stage ./deploy/install.sh --bin ./deltarelay   # stage into a directory
#                                                 # (no user, no systemctl; used by the tests)
#
# Afterwards: edit /etc/deltarelay/deltarelay.toml (and /etc/deltarelay/env for secrets),
# run `deltarelay check`, then `systemctl enable --now deltarelay`. See deploy/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
staging=false
[ -n "$destdir" ] && staging=true

if ! $staging && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo), or set DESTDIR to stage the files" >&2
  exit 1
fi

if [ -z "$bin" ]; then
  echo "==> building deltarelay (release)"
  cargo build --release --locked --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/deltarelay"
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

# Ownership only when installing for real: the service user must exist for it.
owner=(-o root -g deltarelay)
if $staging; then
  owner=()
else
  getent group deltarelay >/dev/null || groupadd --system deltarelay
  if ! id deltarelay >/dev/null 2>&1; then
    echo "==> creating the system user deltarelay"
    useradd --system --gid deltarelay --home-dir /var/lib/deltarelay --no-create-home \
      --shell /usr/sbin/nologin --comment "deltarelay CDC relay" deltarelay
  fi
fi

echo "==> installing $prefix/bin/deltarelay"
install -d "$destdir$prefix/bin"
# To a temporary name, then rename: a running relay keeps its old binary until restarted.
install -m 0755 "$bin" "$destdir$prefix/bin/.deltarelay.new"
mv -f "$destdir$prefix/bin/.deltarelay.new" "$destdir$prefix/bin/deltarelay"

install -d -m 0750 "${owner[@]}" "$destdir/etc/deltarelay"
if [ -e "$destdir/etc/deltarelay/deltarelay.toml" ]; then
  echo "==> keeping /etc/deltarelay/deltarelay.toml"
else
  echo "==> installing /etc/deltarelay/deltarelay.toml (an example: edit it)"
  install -m 0640 "${owner[@]}" config/deltarelay.toml "$destdir/etc/deltarelay/deltarelay.toml"
fi
if [ -e "$destdir/etc/deltarelay/env" ]; then
  echo "==> keeping /etc/deltarelay/env"
else
  echo "==> installing /etc/deltarelay/env (secrets, mode 0640)"
  tmp=$(mktemp)
  cat >"$tmp" <<'ENV'
# Environment for deltarelay.service: NAME=value per line. Secrets referenced by url_env
# (e.g. DATABASE_URL=postgres://relay:PASSWORD@127.0.0.1:5432/app) and any config override
# (DELTARELAY__SECTION__KEY=value) go here.
ENV
  install -m 0640 "${owner[@]}" "$tmp" "$destdir/etc/deltarelay/env"
  rm -f "$tmp"
fi

echo "==> installing the systemd unit"
install -d "$destdir/etc/systemd/system"
install -m 0644 deploy/deltarelay.service "$destdir/etc/systemd/system/deltarelay.service"
if [ "$prefix" != /usr/local ]; then
  sed -i "s|/usr/local/bin/deltarelay|$prefix/bin/deltarelay|; s|/usr/local/share/doc|$prefix/share/doc|" \
    "$destdir/etc/systemd/system/deltarelay.service"
fi
install -d "$destdir$prefix/share/doc/deltarelay"
install -m 0644 deploy/README.md "$destdir$prefix/share/doc/deltarelay/README.md"

if ! $staging && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if systemctl is-active --quiet deltarelay; then
    echo "==> deltarelay is running the old binary: systemctl restart deltarelay"
  fi
fi
cat <<TXT
==> done. Next:
    1. edit /etc/deltarelay/deltarelay.toml (and /etc/deltarelay/env for secrets)
    2. deltarelay check --config /etc/deltarelay/deltarelay.toml
    3. systemctl enable --now deltarelay && journalctl -u deltarelay -f
TXT
