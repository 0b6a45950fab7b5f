#!/usr/bin/env bash
# Build the Debian package of pgvigil with dpkg-deb (no debhelper needed):
#   bash packaging/build-deb.sh [BINARY] [OUTDIR]
# BINARY: the release binary (default: target/release/pgvigil, from `cargo build --release -p pgvigil`);
# OUTDIR: where pgvigil_<version>_<arch>.deb is written (default: target/debian). Prints its path.
#
# The package: /usr/bin/pgvigil, the systemd unit (/lib/systemd/system/pgvigil.service),
# /etc/pgvigil/pgvigil.toml (an example, a conffile: an upgrade never overwrites your edits), the
# docs in /usr/share/doc/pgvigil. Installing it starts nothing and enables nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/pgvigil}"
out="${2:-target/debian}"
if [ ! -x "$bin" ]; then
  echo "build-deb: no binary at $bin (cargo build --release -p pgvigil)" >&2
  exit 66
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binary needs is the libc6 it depends on.
glibc=$(objdump -T "$bin" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -Vu | tail -1)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

# Stripped of its debug information, as Debian ships binaries (the symbols stay for backtraces).
install -D -m 0755 "$bin" "$root/usr/bin/pgvigil"
strip --strip-debug "$root/usr/bin/pgvigil"
install -D -m 0644 systemd/pgvigil.service "$root/lib/systemd/system/pgvigil.service"
install -D -m 0640 packaging/pgvigil.toml "$root/etc/pgvigil/pgvigil.toml"
doc="$root/usr/share/doc/pgvigil"
install -d "$doc"
install -m 0644 README.md CONFIG.md ARCHITECTURE.md "$doc/"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pgvigil
License: $(sed -n '/^\[workspace.package\]/,/^\[/ s/^license *= *"\(.*\)"/\1/p' Cargo.toml)

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
printf 'pgvigil (%s) unstable; urgency=medium\n\n  * Built from the repository (packaging/build-deb.sh).\n\n -- pgvigil <pgvigil@localhost>  %s\n' \
  "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
  gzip -9n >"$doc/changelog.Debian.gz"

install -d "$root/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: pgvigil
Version: $version
Architecture: $arch
Maintainer: pgvigil <pgvigil@localhost>
Installed-Size: $installed_size
Depends: libc6 (>= $glibc), postgresql-15, procps
Recommends: pgbackrest
Section: database
Priority: optional
Description: keeps a PostgreSQL cluster writable (failover, fencing, rejoin)
 One daemon beside each PostgreSQL server: health checks, an embedded Raft group
 for the cluster state, lease fencing of the primary, automatic failover and
 rejoin with pg_rewind, planned switchovers, Patroni-style health endpoints for
 load balancers, and a CLI. Installing the package starts nothing: edit
 /etc/pgvigil/pgvigil.toml, then systemctl enable --now pgvigil.
CONTROL
echo /etc/pgvigil/pgvigil.toml >"$root/DEBIAN/conffiles"
# postinst: the example config readable by the daemon's user (postgres, from postgresql-common),
# and systemd told about the new unit. It enables and starts nothing. (procps: the unit's
# ExecReload is /bin/kill, which minimal systems lack.)
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if getent group postgres >/dev/null; then
    chgrp postgres /etc/pgvigil /etc/pgvigil/pgvigil.toml
    chmod 0750 /etc/pgvigil
  fi
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
  fi
fi
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/pgvigil_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$deb"
