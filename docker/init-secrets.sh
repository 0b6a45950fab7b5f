#!/bin/sh
# pgvigil-init-secrets [DIR]: the cluster's shared secrets, made once (compose's init service runs
# it before the members start; nothing is ever committed to the repository):
#   cluster.secret        [peer_auth] secret_file (pgvigil gen-secret)
#   replication.password  postgres.replication_password_file
#   superuser.password    postgres.superuser_password_file (TCP logins as postgres)
#   api.token             api.token_file (POST /switchover, pgvigil pause, ...)
# Each file is created only when missing, mode 0600, for the user running this (postgres).
set -eu
dir="${1:-/etc/pgvigil/secrets}"
umask 077
mkdir -p "$dir"
[ -s "$dir/cluster.secret" ] || pgvigil gen-secret "$dir/cluster.secret" >/dev/null
for f in replication.password superuser.password api.token; do
  if [ ! -s "$dir/$f" ]; then
    # 24 random bytes as hex: printable, no quoting needed anywhere.
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$dir/$f.tmp"
    mv "$dir/$f.tmp" "$dir/$f"
  fi
done
echo "pgvigil-init-secrets: $dir holds cluster.secret, replication.password, superuser.password, api.token"
