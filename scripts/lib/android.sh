# shellcheck shell=bash
# Helpers for the Android build (scripts/build-android.sh) and the chroot e2e stage of
# scripts/test.sh.  Source after common.sh:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/android.sh"
#
# Route (see ../shared notes, measured on Debian 12 x86_64): Debian's Rust 1.96 (rustc-web,
# cargo-web) rebuilds std for the target from rust-web-src (-Zbuild-std, which needs
# RUSTC_BOOTSTRAP=1 on a stable compiler), and zig from PyPI links the binary against musl
# (driven by cargo-zigbuild, both in a git-ignored venv).  No NDK and no rustup download is
# needed; every package comes from apt or PyPI.

if [[ -n "${_FERRY_ANDROID_SOURCED:-}" ]]; then
    return 0
fi
_FERRY_ANDROID_SOURCED=1

# Build folder of the Android binary: outside the clone (CI reuses it between runs) and apart
# from the host build's CARGO_TARGET_DIR, whose std and flags differ.
FERRY_ANDROID_TARGET_DIR="${FERRY_ANDROID_TARGET_DIR:-/var/tmp/ferry-target-android}"
# The Cargo profile in Cargo.toml tuned for size ([profile.android]).
FERRY_ANDROID_PROFILE="${FERRY_ANDROID_PROFILE:-android}"
# Lowest Android API level for the NDK build (29 = Android 10).
FERRY_ANDROID_API="${FERRY_ANDROID_API:-29}"
# The tools in the venv, pinned to the versions this was tested with.
FERRY_ZIGLANG_VERSION="${FERRY_ZIGLANG_VERSION:-0.17.1}"
FERRY_ZIGBUILD_VERSION="${FERRY_ZIGBUILD_VERSION:-0.24.1}"
# The venv lives at a fixed path outside the clone, like the build folder.  Not in the clone:
# cargo-zigbuild's linker wrapper embeds the venv's path, cargo fingerprints the linker, and
# so every clone at a new path (CI's fresh clone) would rebuild std and all ~140 crates
# (measured: 12 min under load, instead of about 2 min for ferry alone).  FERRY_VENV="$PWD/.venv"
# (git-ignored) also works for one clone.
FERRY_VENV="${FERRY_VENV:-/var/tmp/ferry-android-venv}"
export FERRY_ANDROID_TARGET_DIR FERRY_ANDROID_PROFILE

# android_triple: aarch64-linux-android with an NDK (ANDROID_NDK_HOME), else the static musl
# build that runs on any Android (and any aarch64 Linux).
android_triple() {
    if [[ -n "${ANDROID_NDK_HOME:-}" ]]; then
        printf 'aarch64-linux-android\n'
    else
        printf 'aarch64-unknown-linux-musl\n'
    fi
}

# android_bin: where scripts/build-android.sh leaves the binary.
android_bin() {
    printf '%s/%s/%s/ferry\n' "$FERRY_ANDROID_TARGET_DIR" "$(android_triple)" "$FERRY_ANDROID_PROFILE"
}

# ensure_debian_rust_src: Debian's rustc-web + cargo-web and the std sources of exactly that
# version (build-std compiles them), whatever other toolchain is on PATH.
ensure_debian_rust_src() {
    ensure_apt rustc-web cargo-web gcc libc6-dev
    local version
    version="$(dpkg-query -W -f='${Version}' rustc-web)"
    if ! _deb_installed rust-web-src ||
        [[ "$(dpkg-query -W -f='${Version}' rust-web-src)" != "$version" ]]; then
        _apt_update_once
        log "apt-get install rust-web-src=$version (std sources matching rustc-web)"
        _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            -o DPkg::Lock::Timeout=600 --no-install-recommends "rust-web-src=$version" >&2
    fi
    local rust_version
    rust_version="$(/usr/bin/rustc -V | awk '{print $2}')"
    FERRY_RUST_SRC="/usr/src/rustc-$rust_version/library"
    [[ -d "$FERRY_RUST_SRC/std" ]] ||
        die "std sources for rustc $rust_version not found at $FERRY_RUST_SRC (package rust-web-src)"
    export FERRY_RUST_SRC
}

# ensure_zig_venv: a venv with PyPI's ziglang and cargo-zigbuild at the pinned versions.
ensure_zig_venv() {
    command -v python3 >/dev/null 2>&1 || ensure_apt python3
    # Debian splits venv's ensurepip into python3-venv.
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        ensure_apt python3-venv python3-pip
    fi
    if [[ ! -x "$FERRY_VENV/bin/python3" ]]; then
        log "creating $FERRY_VENV"
        python3 -m venv "$FERRY_VENV"
    fi
    local want="cargo-zigbuild==$FERRY_ZIGBUILD_VERSION ziglang==$FERRY_ZIGLANG_VERSION"
    local have
    have="$("$FERRY_VENV/bin/python3" -m pip freeze 2>/dev/null |
        { grep -Ei '^(cargo-zigbuild|ziglang)==' || true; } | tr '[:upper:]' '[:lower:]' | sort | tr '\n' ' ')"
    if [[ "${have% }" != "$want" ]]; then
        log "pip install $want"
        # shellcheck disable=SC2086  # two words on purpose
        "$FERRY_VENV/bin/python3" -m pip install -q --disable-pip-version-check $want >&2
    fi
}

# elf_is_static FILE: true when FILE has no program interpreter (PT_INTERP), i.e. the kernel
# runs it without a dynamic loader (none exists for musl on a phone).
elf_is_static() {
    python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    data = f.read(1 << 16)
assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF"
e = "<" if data[5] == 1 else ">"
phoff, = struct.unpack_from(e + "Q", data, 0x20)
phentsize, phnum = struct.unpack_from(e + "HH", data, 0x36)
types = [struct.unpack_from(e + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
sys.exit(1 if 3 in types else 0)  # PT_INTERP = 3
EOF
}
