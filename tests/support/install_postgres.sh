#!/bin/sh
# Installs the PostgreSQL server tests/support/postgres.py runs (Debian's `postgresql`
# package), unless its binaries are already under /usr/lib/postgresql/*/bin. Called by
# `make test`. Needs root (CI and `make test` there run as root) and apt; quiet unless it
# fails, then it prints apt's output.
set -eu

for bin in /usr/lib/postgresql/*/bin; do
    if [ -x "$bin/initdb" ] && [ -x "$bin/postgres" ]; then
        exit 0
    fi
done

exec sh "$(dirname "$0")/apt_install.sh" postgresql tests/test_postgres_instance.py \
    "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (initdb, postgres)"
