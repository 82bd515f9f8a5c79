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

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (initdb, postgres);" \
         "tests/test_postgres_instance.py needs them. Install Debian's postgresql package" \
         "(apt-get install -y postgresql) as root, or run make test as root on Debian." >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's postgresql package (for tests/test_postgres_instance.py)"
# The package lists an image ships are usually enough; refresh them only if that fails.
if ! apt-get install -y -q --no-install-recommends postgresql >"$log" 2>&1; then
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "apt-get install postgresql failed (output above)" >&2
        exit 1
    fi
fi
