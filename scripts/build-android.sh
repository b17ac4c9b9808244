#!/usr/bin/env bash
# Builds the ferry binary for Android phones (aarch64) on a fresh Debian 12 machine.
#
#   scripts/build-android.sh [EXTRA CARGO ARGS...]
#
# Default: a fully static aarch64-unknown-linux-musl binary (runs on any Android version and
# any aarch64 Linux; no NDK needed), built with Debian's Rust 1.96 rebuilding std
# (-Zbuild-std) and linked by zig from PyPI through cargo-zigbuild.  Everything it needs is
# installed on first use: rustc-web, cargo-web, rust-web-src (apt) and a venv with ziglang
# and cargo-zigbuild (PyPI) in FERRY_VENV (default /var/tmp/ferry-android-venv, outside the
# clone: see scripts/lib/android.sh).
#
# With ANDROID_NDK_HOME set: aarch64-linux-android against bionic, linked by the NDK's clang
# for API level FERRY_ANDROID_API (default 29), std still rebuilt from rust-web-src.  That is
# the natural target inside an AOSP image build; it cannot be tested on machines without an
# NDK (no registry here serves one).
#
# Profile [profile.android] in Cargo.toml (fat LTO, opt-level "s", one codegen unit,
# stripped, panics unwind so one failing transfer cannot take the daemon down).  Built with
# --no-default-features: the `demo` feature (`ferry demo` and its file server) is for
# desktops, not phones.
#
# Output: the binary path (last line on stdout) and its size; fails if it is over
# FERRY_ANDROID_MAX_BYTES (default 8 MiB).  Build folder FERRY_ANDROID_TARGET_DIR
# (default /var/tmp/ferry-target-android, outside the clone so CI rebuilds incrementally).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/android.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/android.sh"

MAX_BYTES="${FERRY_ANDROID_MAX_BYTES:-$((8 << 20))}"
TRIPLE="$(android_triple)"

cd "$FERRY_ROOT"

group "android build setup ($TRIPLE)"
ensure_debian_rust_src
if [[ -z "${ANDROID_NDK_HOME:-}" ]]; then
    ensure_zig_venv
fi

# This build only: the venv first (cargo-zigbuild runs `python3 -m ziglang`; the venv has no
# cargo or rustc), then Debian's cargo and rustc (rustup's 1.95 in ~/.cargo/bin cannot use
# Debian's 1.96 std sources).  Nothing of the caller's Rust setup leaks in: RUSTFLAGS would
# override the per-target flags below, and the host build's CARGO_TARGET_DIR holds another std.
export PATH="$FERRY_VENV/bin:/usr/bin:$PATH"
export RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTUP_TOOLCHAIN RUSTC_WRAPPER CARGO_BUILD_TARGET
export CARGO_TARGET_DIR="$FERRY_ANDROID_TARGET_DIR"
# -Zbuild-std is a nightly flag; Debian's stable compiler accepts it with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
# std rebuilt with unwinding (the profile keeps panic = "unwind").
BUILD_STD=('-Zbuild-std=std,panic_unwind')
COMMON=(--profile "$FERRY_ANDROID_PROFILE" --target "$TRIPLE" --bin ferry --no-default-features
    "${FERRY_LOCKED[@]}")

group "cargo build --profile $FERRY_ANDROID_PROFILE --target $TRIPLE"
log "using $(/usr/bin/cargo --version), $(/usr/bin/rustc --version), std from $FERRY_RUST_SRC"
start=$SECONDS
if [[ -n "${ANDROID_NDK_HOME:-}" ]]; then
    # Untested here (no NDK obtainable): the NDK's clang links against bionic.
    bin_dir="$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin"
    clang="$bin_dir/aarch64-linux-android${FERRY_ANDROID_API}-clang"
    [[ -x "$clang" ]] || die "no $clang: is ANDROID_NDK_HOME an NDK (r23 or newer)?"
    export CARGO_TARGET_AARCH64_LINUX_ANDROID_LINKER="$clang"
    export CC_aarch64_linux_android="$clang"
    export AR_aarch64_linux_android="$bin_dir/llvm-ar"
    /usr/bin/cargo build "${COMMON[@]}" "${BUILD_STD[@]}" "$@"
else
    # zig brings musl's crt1.o and libc; Rust's own copies (self-contained) are not in
    # Debian's packages, so do not ask for them.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C link-self-contained=no"
    "$FERRY_VENV/bin/cargo-zigbuild" build "${COMMON[@]}" "${BUILD_STD[@]}" "$@"
fi
build_secs=$((SECONDS - start))

group "result"
bin="$(android_bin)"
[[ -f "$bin" ]] || die "cargo finished but $bin is missing"
size=$(stat -c %s "$bin")
log "built in ${build_secs}s"
if [[ "$TRIPLE" == *musl ]]; then
    elf_is_static "$bin" || die "$bin is not static (it has a program interpreter)"
    log "fully static (no program interpreter)"
    if command -v qemu-aarch64-static >/dev/null 2>&1; then
        log "runs under qemu: $(qemu-aarch64-static "$bin" --version)"
    fi
fi
printf 'size: %d bytes (%d.%02d MiB, stripped; limit %d MiB)\n' "$size" \
    $((size >> 20)) $(((size % (1 << 20)) * 100 >> 20)) $((MAX_BYTES >> 20)) >&2
if [[ "$size" -gt "$MAX_BYTES" ]]; then
    die "$bin is $size bytes, over the limit of $MAX_BYTES"
fi
printf '%s\n' "$bin"
