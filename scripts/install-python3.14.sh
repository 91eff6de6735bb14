#!/usr/bin/env bash
# (Copied from the team's shared tools so CI, which sees only this repository, can run it.)
# Puts a CPython 3.14 interpreter under DEST (default /opt/python3.14) on a Debian 12 machine,
# without touching the system: it downloads Debian unstable's python3.14 packages (and the newer
# C library they need) from the mirror this machine's apt already uses, unpacks them into DEST and
# points the binary at its own libraries. Prints the interpreter's path last.
# The interpreter has no pip: make venvs with --without-pip and install with another pip's --python.
set -euo pipefail
DEST=${1:-/opt/python3.14}
PY="$DEST/usr/bin/python3.14"
if [ -x "$PY" ] && "$PY" -c 'import sys; assert hasattr(sys, "remote_exec")' 2>/dev/null; then
  echo "$PY"; exit 0
fi
command -v patchelf >/dev/null || { apt-get update -qq && apt-get install -y -qq patchelf >/dev/null; }
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || { echo "no apt mirror configured in /etc/apt/sources.list.d" >&2; exit 1; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/parts" "$W/lists/partial" "$W/cache/archives/partial" "$W/debs"
printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$MIRROR" > "$W/parts/sid.sources"
APTO=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$W/parts" -o Dir::State::Lists="$W/lists" -o Dir::Cache="$W/cache" -o Debug::NoLocking=1)
apt-get "${APTO[@]}" update -qq
cd "$W/debs"
apt-get "${APTO[@]}" download -qq python3.14 python3.14-minimal libpython3.14-stdlib libpython3.14-minimal libpython3.14 \
  libc6 libbz2-1.0 libexpat1 libffi8 liblzma5 libncursesw6 libreadline8t64 libsqlite3-0 libssl3t64 libtinfo6 libuuid1 libzstd1 zlib1g libmpdec4 2>&1 | grep -v '^W:' || true
rm -rf "$DEST"; mkdir -p "$DEST"
for d in *.deb; do dpkg-deb -x "$d" "$DEST"; done
L="$DEST/usr/lib/x86_64-linux-gnu"
patchelf --set-interpreter "$L/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$L" "$PY"
"$PY" -c 'import sys; assert hasattr(sys, "remote_exec")' >&2
echo "$PY"
