#!/bin/sh
# make deps: install the system packages of deps/debian-packages.txt that are missing.
# As root on Debian/Ubuntu: apt-get installs them (non-interactive). Otherwise: one line names
# what is missing and the command that installs it, exit 2. Nothing missing: exit 0, silently.
# Missing means not installed per dpkg-query; without dpkg (not Debian/Ubuntu), the package's
# command is not on PATH (nor in /usr/sbin, /sbin). Usage: sh deps/install.sh [PACKAGE-LIST | -]
set -eu
list=${1:-$(dirname "$0")/debian-packages.txt}
PATH="$PATH:/usr/sbin:/sbin"
dpkg=no
if command -v dpkg-query >/dev/null 2>&1; then dpkg=yes; fi
if [ "$list" = - ]; then exec 3<&0; else exec 3<"$list"; fi
missing=""
programs=""
while read -r pkg cmd _ <&3; do
  case $pkg in '' | '#'*) continue ;; esac
  if [ "$dpkg" = yes ]; then
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not the shell's
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" = "install ok installed" ]; then continue; fi
  elif [ "${cmd:--}" = - ] || command -v "$cmd" >/dev/null 2>&1; then
    continue
  fi
  missing="$missing $pkg"
  programs="$programs $pkg(${cmd:--})"
done
exec 3<&-
missing=${missing# }
if [ -z "$missing" ]; then exit 0; fi
if [ "$dpkg" = yes ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "caffe-cae deps: apt-get install $missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq $missing >/dev/null
  exit 0
fi
if [ "$dpkg" = yes ]; then
  echo "caffe-cae deps: missing system packages: $missing; install them with: sudo apt-get install -y $missing" >&2
else
  echo "caffe-cae deps: not Debian/Ubuntu (no dpkg-query) and these programs are missing, as Debian packages" \
    "(program):$programs; install their equivalents (on Debian/Ubuntu: sudo apt-get install -y $missing)" >&2
fi
exit 2
