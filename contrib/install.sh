#!/bin/bash
# Install ipacctd from this source tree, as a system daemon is expected to live:
#
#   /opt/ipacctd/                          a virtual environment with ipacctd and the daemon's
#                                          dependencies (dbus-fast, prometheus-client) from PyPI
#   /usr/local/bin/ipacctd                 a link to /opt/ipacctd/bin/ipacctd (contrib/launcher.py)
#   /etc/systemd/system/ipacctd.service    units/ipacctd.service, ExecStart= pointing at the venv
#   /usr/share/dbus-1/system.d/org.ipacctd1.conf   the bus policy (root owns the name, all read)
#   /etc/ipacctd/ipacctd.conf              the example settings (only when there is none yet)
#   /etc/ipacctd/units/                    the unit file directory
#   /opt/ipacctd/share/doc/ipacctd/        README and the examples (the unit's Documentation=)
#   /usr/local/share/man/man1/ipacctd.1, man5/ipacctd.unit.5   the manual pages (man/)
#   /usr/share/bash-completion/completions/ipacctd, /usr/local/share/zsh/site-functions/_ipacctd,
#   /usr/share/fish/vendor_completions.d/ipacctd.fish   completion (`ipacctd completion SHELL`)
#
# Why a venv: Debian 12 and other PEP 668 distributions refuse `pip install` into their own
# python3 (externally-managed-environment), and their python3-dbus-fast (1.84) and
# python3-prometheus-client (0.16) are older than ipacctd needs. A venv under /opt keeps
# PyPI's packages away from the distribution's while using its interpreter.
#
# Usage (as root, from anywhere):
#   contrib/install.sh [--prefix DIR] [--test]     install or update; safe to run again
#   contrib/install.sh [--prefix DIR] --uninstall  remove the above but /etc/ipacctd (kept, as
#                                                  apt's "remove" keeps configuration)
#
# --test also installs the test dependencies and installs the tree in editable mode, so
# `DIR/bin/python -m pytest` runs the tests of this tree against the code of this tree.
# Needs: python3 (>= 3.11) with its venv module (Debian: apt-get install python3-venv).
# Units, pins and counters in the kernel are never touched: neither installing nor
# uninstalling stops counting or enforcement.
set -euo pipefail

prefix=/opt/ipacctd
mode=install
editable=0
extras=daemon
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
              prefix=$2; shift ;;
    --prefix=*) prefix=${1#--prefix=} ;;
    --test) editable=1; extras=daemon,test ;;
    --uninstall) mode=uninstall ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $prefix in
  /*) prefix=${prefix%/} ;;
  *) echo "install.sh: --prefix must be an absolute path: $prefix" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it writes to $prefix, /etc and /usr)" >&2; exit 77; }

src=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
bin_link=/usr/local/bin/ipacctd
unit=/etc/systemd/system/ipacctd.service
dbus_dir=/usr/share/dbus-1/system.d   # where packages put bus policies; /etc/dbus-1 is the admin's
dbus_conf=$dbus_dir/org.ipacctd1.conf
etc=/etc/ipacctd
doc=$prefix/share/doc/ipacctd
MARK="# Installed by ipacctd's contrib/install.sh"
man_dir=/usr/local/share/man
# Where each shell looks for a command's completion by itself (no rc file to edit).
declare -A completion=(
  [bash]=/usr/share/bash-completion/completions/ipacctd
  [zsh]=/usr/local/share/zsh/site-functions/_ipacctd
  [fish]=/usr/share/fish/vendor_completions.d/ipacctd.fish
)

say() { echo "install.sh: $*"; }
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ $mode = uninstall ]; then
  if systemd_running && [ -e "$unit" ]; then
    systemctl disable --now ipacctd.service 2>/dev/null || true
  fi
  if [ -e "$unit" ] && grep -qF "$MARK" "$unit"; then rm -f "$unit"; say "removed $unit"; fi
  systemd_running && systemctl daemon-reload || true
  if [ -L "$bin_link" ] && [ "$(readlink "$bin_link")" = "$prefix/bin/ipacctd" ]; then
    rm -f "$bin_link"; say "removed $bin_link"
  fi
  if [ -e "$dbus_conf" ]; then rm -f "$dbus_conf"; say "removed $dbus_conf"; fi
  for f in "$man_dir/man1/ipacctd.1" "$man_dir/man5/ipacctd.unit.5" "${completion[@]}"; do
    if [ -e "$f" ]; then rm -f "$f"; say "removed $f"; fi
  done
  if [ -x "$prefix/bin/python" ] && [ -f "$prefix/pyvenv.cfg" ]; then
    rm -rf --one-file-system "$prefix"; say "removed $prefix"
  fi
  say "kept $etc (settings and unit files); units in the kernel keep counting and enforcing"
  exit 0
fi

# --- the interpreter and its venv module --------------------------------------------------
python=${PYTHON:-$(command -v python3 || true)}
[ -n "$python" ] || { echo "install.sh: python3 not found (Debian: apt-get install python3 python3-venv)" >&2; exit 69; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install.sh: ipacctd needs Python >= 3.11; $python is $("$python" -V 2>&1)" >&2; exit 69; }
if [ -e "$prefix" ] && [ ! -f "$prefix/pyvenv.cfg" ] && [ -n "$(ls -A "$prefix")" ]; then
  echo "install.sh: $prefix exists and is not a virtual environment; not touching it" >&2; exit 1
fi
if [ ! -x "$prefix/bin/python" ] || ! "$prefix/bin/python" -c 'import pip' 2>/dev/null; then
  # ensurepip is what Debian splits out into python3-venv: check before making a half venv.
  "$python" -c 'import ensurepip, venv' 2>/dev/null || {
    echo "install.sh: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2
    exit 69; }
  say "creating the virtual environment $prefix"
  "$python" -m venv --clear "$prefix"
fi

# --- ipacctd and its dependencies ---------------------------------------------------------
pip=("$prefix/bin/python" -m pip --disable-pip-version-check --no-input)
if [ $editable = 1 ]; then
  say "installing $src (editable) with [$extras] into $prefix"
  "${pip[@]}" install -q -e "$src[$extras]"
else
  # Build from a copy: a plain `pip install DIR` leaves build/ and *.egg-info in the tree.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar -C "$src" --exclude=./.git --exclude=./build --exclude='*.egg-info' -cf - . | tar -C "$tmp" -xf -
  say "installing $src with [$extras] into $prefix"
  "${pip[@]}" install -q "$tmp[$extras]"   # a local tree is always rebuilt and reinstalled
fi
"$prefix/bin/python" -c 'import dbus_fast, prometheus_client, ipacctd'   # the daemon can start
# The command itself: contrib/launcher.py in place of pip's console script (why: there).
{ echo "#!$prefix/bin/python3 -S"; cat "$src/contrib/launcher.py"; } > "$prefix/bin/ipacctd.tmp"
chmod 0755 "$prefix/bin/ipacctd.tmp"
mv "$prefix/bin/ipacctd.tmp" "$prefix/bin/ipacctd"
"$prefix/bin/ipacctd" --version >/dev/null

ln -sfn "$prefix/bin/ipacctd" "$bin_link"
say "linked $bin_link -> $prefix/bin/ipacctd"

mkdir -p "$doc"
cp "$src/README.md" "$doc/README.md"
rm -rf "$doc/examples" && cp -r "$src/units/examples" "$doc/examples"

# --- manual pages and shell completion ------------------------------------------------------
install -D -m 0644 "$src/man/ipacctd.1" "$man_dir/man1/ipacctd.1"
install -D -m 0644 "$src/man/ipacctd.unit.5" "$man_dir/man5/ipacctd.unit.5"
say "installed ipacctd(1) and ipacctd.unit(5) in $man_dir"
for shell in bash zsh fish; do   # written by the installed ipacctd from its own parser
  f=${completion[$shell]}
  mkdir -p "$(dirname "$f")"
  "$prefix/bin/ipacctd" completion "$shell" > "$f.tmp"
  mv "$f.tmp" "$f" && chmod 0644 "$f"
done
say "installed completion for bash, zsh and fish: ${completion[*]}"

# --- systemd, D-Bus, settings ---------------------------------------------------------------
mkdir -p "$(dirname "$unit")"
{
  echo "$MARK from $src; edit a drop-in (systemctl edit ipacctd), not this file."
  sed -e "s|^ExecStart=[^ ]*ipacctd |ExecStart=$prefix/bin/ipacctd |" \
      -e "s|file:///opt/ipacctd/|file://$prefix/|g" "$src/units/ipacctd.service"
} > "$unit.tmp"
mv "$unit.tmp" "$unit"
grep -q "^ExecStart=$prefix/bin/ipacctd daemon" "$unit" || {
  echo "install.sh: could not point ExecStart= of $unit at $prefix/bin/ipacctd" >&2; exit 1; }
say "installed $unit (ExecStart=$prefix/bin/ipacctd daemon)"
mkdir -p "$dbus_dir"
install -m 0644 "$src/contrib/dbus/org.ipacctd1.conf" "$dbus_conf"
say "installed $dbus_conf"
# dbus-daemon notices new policy files by inotify, but not always before a daemon started
# right after this asks for its name: ask it to reload now (synchronous) when a bus runs.
if [ -S /run/dbus/system_bus_socket ] && command -v dbus-send >/dev/null; then
  dbus-send --system --print-reply --dest=org.freedesktop.DBus / \
    org.freedesktop.DBus.ReloadConfig >/dev/null 2>&1 || true
fi

if systemd_running; then
  systemctl daemon-reload
  # An update takes effect now if the daemon runs (the kernel keeps counting meanwhile).
  systemctl try-restart ipacctd.service || true
fi

mkdir -p "$etc/units"
if [ ! -e "$etc/ipacctd.conf" ]; then
  install -m 0644 "$src/contrib/ipacctd.conf" "$etc/ipacctd.conf"
  say "installed $etc/ipacctd.conf"
else
  say "kept the existing $etc/ipacctd.conf"
fi
say "done: $("$bin_link" --version)"
if systemd_running; then
  say "start the daemon with: systemctl enable --now ipacctd"
fi
