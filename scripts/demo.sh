#!/usr/bin/env bash
# The README's main command: build ferry and run `ferry demo`, which starts
# the daemon on built-in defaults (device root under a temp dir), serves a
# file on loopback, transfers it, and prints the final path and sha256.
#
#   scripts/demo.sh [ARGS FOR `ferry demo`...]
#
# Needs only a Debian 12 machine: installs Rust from Debian if no cargo is
# present (see scripts/lib/common.sh).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

cd "$FERRY_ROOT"
ensure_rust

BIN="$(ferry_bin release)"
if [[ -z "${FERRY_BIN:-}" ]]; then
    # Say so up front: a clean release build of the dependency tree takes
    # minutes on 2 cores and would otherwise look like a hang.
    if [[ ! -x "$BIN" ]]; then
        log "building ferry (release); the first build takes a few minutes, later ones seconds"
    else
        log "building ferry (release)"
    fi
    cargo build --release "${FERRY_LOCKED[@]}"
fi
[[ -x "$BIN" ]] || die "ferry binary not found at $BIN"

exec "$BIN" demo "$@"
