#!/bin/sh
# apt_install.sh PACKAGE FOR WHEN_MISSING: installs Debian's PACKAGE (quietly; its output is
# printed only if it fails), for FOR (what needs it, e.g. a test file). Without root or apt it
# stops with WHEN_MISSING and how to install it by hand. Called by the install_*.sh scripts,
# once they have found the package missing.
set -eu
package=$1 needed_by=$2 missing=$3

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$missing; $needed_by needs it. Install Debian's $package package" \
         "(apt-get install -y $package) as root." >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's $package package (for $needed_by)"
# The package lists an image ships are usually enough; refresh them only if that fails.
if ! apt-get install -y -q --no-install-recommends "$package" >"$log" 2>&1; then
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "$package"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "apt-get install $package failed (output above)" >&2
        exit 1
    fi
fi
