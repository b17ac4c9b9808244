#!/usr/bin/env bash
# Download benchmark: ferry vs curl vs wget fetching one large file from a
# local nginx.  A benchmark, NOT a test: CI does not run it.
#
#   scripts/bench.sh
#
# Environment knobs:
#   BENCH_SIZE_MIB  file size in MiB (default 1024 = 1 GiB)
#   RUNS            timed runs per tool (default 5); medians are reported
#   SKIP_FERRY=1    benchmark only curl and wget (e.g. before `fetch` exists)
#   BENCH_DIR       where the source file and outputs live (default
#                   /var/tmp/ferry-bench; must have room for 2x the file)
#   FERRY_BIN       use this ferry binary instead of building one
#
# Targets (from the design): ferry's wall time no worse than curl's, and
# ferry's peak RSS <= 16 MiB whatever the file size (it streams with bounded
# buffers and hashes on the fly).
#
# Everything is on 127.0.0.1.  The script starts its own nginx (never the
# system one) with its own config in a temp dir and stops it on exit.
set -euo pipefail
# C locale: EPOCHREALTIME, awk and sort must all use "." as decimal point.
export LC_ALL=C

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
RUNS="${RUNS:-5}"
SKIP_FERRY="${SKIP_FERRY:-0}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/ferry-bench}"

[[ "$BENCH_SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_MIB must be a positive integer"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"

# Loopback only: make sure no proxy setting diverts the clients.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export no_proxy="127.0.0.1,localhost" NO_PROXY="127.0.0.1,localhost"

# GNU time (package `time`), not the shell keyword: it reports max RSS.
ensure_apt nginx-light curl wget time coreutils
TIME_BIN=/usr/bin/time
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"

# --- the ferry binary ---------------------------------------------------------
FERRY=""
if [[ "$SKIP_FERRY" != 1 ]]; then
    if [[ -z "${FERRY_BIN:-}" ]]; then
        ensure_rust
        log "building ferry (release)"
        (cd "$FERRY_ROOT" && cargo build --release "${FERRY_LOCKED[@]}")
    fi
    FERRY="$(ferry_bin release)"
    [[ -x "$FERRY" ]] || die "ferry binary not found at $FERRY"
fi

# --- the source file (made once, reused) --------------------------------------
SIZE_BYTES=$((BENCH_SIZE_MIB * 1024 * 1024))
WWW="$BENCH_DIR/www"
SRC_NAME="bench-${BENCH_SIZE_MIB}MiB.bin"
SRC="$WWW/$SRC_NAME"
mkdir -p "$WWW"
# nginx workers run as an unprivileged user: the path must be traversable.
chmod 755 "$BENCH_DIR" "$WWW"

free_bytes() { df -P -B1 "$1" | awk 'NR == 2 {print $4}'; }

current_size="$(stat -c %s "$SRC" 2>/dev/null || echo -1)"
if [[ "$current_size" != "$SIZE_BYTES" ]]; then
    rm -f "$SRC" "$SRC.sha256"
    # Room for the source plus one output at a time, with a little slack.
    need=$((2 * SIZE_BYTES + 64 * 1024 * 1024))
    (($(free_bytes "$BENCH_DIR") >= need)) || die "not enough free space in $BENCH_DIR (need $((need >> 20)) MiB)"
    log "generating $SRC ($BENCH_SIZE_MIB MiB of random data; done once)"
    # Random, so no layer (disk, page cache, network) can compress it.  Write
    # to a temp name first so an interrupted run never leaves a short file
    # that the size check above would then have to catch.
    head -c "$SIZE_BYTES" /dev/urandom >"$SRC.part"
    mv "$SRC.part" "$SRC"
else
    log "reusing $SRC"
    need=$((SIZE_BYTES + 64 * 1024 * 1024))
    (($(free_bytes "$BENCH_DIR") >= need)) || die "not enough free space in $BENCH_DIR for the outputs (need $((need >> 20)) MiB)"
fi
chmod 644 "$SRC"
if [[ ! -s "$SRC.sha256" ]]; then
    log "hashing the source once"
    sha256sum "$SRC" | awk '{print $1}' >"$SRC.sha256"
fi
SRC_SHA="$(cat "$SRC.sha256")"

# --- per-run temp dir: nginx config/logs, outputs, ferry's device root -----
# Under BENCH_DIR so outputs land on the same filesystem as the source's
# home (/var/tmp), not on a tmpfs /tmp that would flatter every tool.
RUN_DIR="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
chmod 755 "$RUN_DIR"
NGINX_PID=""

cleanup() {
    local rc=$?
    if [[ -n "$NGINX_PID" ]] && kill -0 "$NGINX_PID" 2>/dev/null; then
        # TERM makes the nginx master stop its workers and exit.
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
    fi
    rm -rf "$RUN_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- nginx ------------------------------------------------------------------
# A port that nothing listens on: probe with bash's /dev/tcp (a refused
# connect means free).  There is a tiny race with other programs, so the
# start below retries with another port if the bind fails.
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

write_nginx_conf() {
    local port="$1"
    local temps="" kind
    # nginx creates its modules' temp dirs at start; keep them in our dir
    # (the compiled-in /var/lib/nginx may not exist or be writable).
    for kind in client_body proxy fastcgi uwsgi scgi; do
        local opt="--http-${kind//_/-}-temp-path"
        if "$NGINX_BIN" -V 2>&1 | grep -q -- "$opt"; then
            temps+="    ${kind}_temp_path $RUN_DIR/tmp-$kind;"$'\n'
        fi
    done
    cat >"$RUN_DIR/nginx.conf" <<CONF
# Generated by scripts/bench.sh; lives only for one benchmark run.
daemon off;
worker_processes 1;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
$temps
    server {
        listen 127.0.0.1:$port;
        root $WWW;
        location / { }
    }
}
CONF
}

start_nginx() {
    local attempt port
    for attempt in 1 2 3 4 5; do
        port="$(pick_port)"
        write_nginx_conf "$port"
        : >"$RUN_DIR/error.log"
        # daemon off + background job: the master is our child, so the trap
        # can stop exactly this nginx by its pid.
        "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/error.log" &
        NGINX_PID=$!
        local _
        for _ in $(seq 50); do
            if curl -sf -o /dev/null -I "http://127.0.0.1:$port/$SRC_NAME"; then
                PORT="$port"
                log "nginx (pid $NGINX_PID) serving $WWW on 127.0.0.1:$PORT"
                return 0
            fi
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
        NGINX_PID=""
        warn "nginx did not come up on port $port (attempt $attempt):"
        cat "$RUN_DIR/error.log" >&2 || true
    done
    die "could not start nginx"
}

PORT=""
start_nginx
URL="http://127.0.0.1:$PORT/$SRC_NAME"

# Warm the page cache with the source so every tool (including the first
# run of the first tool) reads it from memory the same way.
cat "$SRC" >/dev/null

# --- the timed runs -----------------------------------------------------------
OUT="$RUN_DIR/out"
DEV="$RUN_DIR/dev"
STATE="$RUN_DIR/state"
FERRY_OUT="$DEV/sdcard/Download/bench.bin"
mkdir -p "$OUT"

TOOLS=()
[[ "$SKIP_FERRY" == 1 ]] || TOOLS+=(ferry)
TOOLS+=(curl wget)

# Output file a tool writes, so it can be dropped before and after a run.
out_file() {
    case "$1" in
    ferry) printf '%s\n' "$FERRY_OUT" ;;
    *) printf '%s\n' "$OUT/$1.bin" ;;
    esac
}

# Fresh device root and state dir for ferry every run: a kept journal or
# partial file would turn the next run into a resume or a no-op.
reset_tool() {
    rm -f "$(out_file "$1")"
    if [[ "$1" == ferry ]]; then
        rm -rf "$DEV" "$STATE"
        mkdir -p "$DEV/sdcard/Download" "$STATE"
    fi
}

run_tool() {
    local tool="$1" timing="$2"
    local dst
    dst="$(out_file "$tool")"
    case "$tool" in
    ferry)
        "$TIME_BIN" -f '%e %U %S %M' -o "$timing" \
            "$FERRY" fetch --device-root "$DEV" --state-dir "$STATE" --url "$URL" \
            --source-path /sdcard/Download/bench.bin --quiet
        ;;
    curl) "$TIME_BIN" -f '%e %U %S %M' -o "$timing" curl -sS -o "$dst" "$URL" ;;
    wget) "$TIME_BIN" -f '%e %U %S %M' -o "$timing" wget -q -O "$dst" "$URL" ;;
    esac
}

# results: one line per run: tool wall user sys maxrss_kib
RESULTS="$RUN_DIR/results.txt"
: >"$RESULTS"
FERRY_SHA_OK=""

log "$RUNS runs each of: ${TOOLS[*]} ($BENCH_SIZE_MIB MiB, $URL)"
for run in $(seq "$RUNS"); do
    # Interleave the tools within each round so slow drift of the machine
    # (other load, thermal, writeback) spreads over all of them alike.
    for tool in "${TOOLS[@]}"; do
        reset_tool "$tool"
        # Flush earlier dirty pages so their writeback does not land inside
        # this tool's timing.
        sync
        timing="$RUN_DIR/time-$tool-$run.txt"
        t0="$EPOCHREALTIME"
        if ! run_tool "$tool" "$timing" >"$RUN_DIR/$tool.log" 2>&1; then
            cat "$RUN_DIR/$tool.log" "$timing" >&2 2>/dev/null || true
            die "$tool failed in run $run"
        fi
        t1="$EPOCHREALTIME"
        dst="$(out_file "$tool")"
        got="$(stat -c %s "$dst" 2>/dev/null || echo missing)"
        [[ "$got" == "$SIZE_BYTES" ]] || die "$tool wrote $got bytes to $dst, expected $SIZE_BYTES"
        if [[ "$tool" == ferry && -z "$FERRY_SHA_OK" ]]; then
            # Once is enough: proves ferry wrote the right bytes.
            got_sha="$(sha256sum "$dst" | awk '{print $1}')"
            [[ "$got_sha" == "$SRC_SHA" ]] || die "ferry output sha256 $got_sha != source $SRC_SHA"
            FERRY_SHA_OK=1
        fi
        # GNU time's -o file ends with our format line.  Its wall time (%e)
        # has only 10 ms resolution, too coarse for a ratio near 1.00 on
        # small files, so wall comes from bash's microsecond clock instead
        # (the extra fork of /usr/bin/time is the same for every tool).
        read -r _ user sys rss < <(tail -n 1 "$timing")
        wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')"
        printf '%s %s %s %s %s\n' "$tool" "$wall" "$user" "$sys" "$rss" >>"$RESULTS"
        printf '  run %d %-5s wall %7ss  cpu %6ss  rss %6d KiB\n' \
            "$run" "$tool" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')" "$rss" >&2
        reset_tool "$tool"
    done
done

# --- report -------------------------------------------------------------------
# median TOOL wall|cpu|rss: median over runs (mean of the middle two when
# RUNS is even).  cpu = user + sys seconds, rss in KiB.
median() {
    awk -v t="$1" -v what="$2" '$1 == t {
            if (what == "wall") print $2
            else if (what == "cpu") print $3 + $4
            else print $5
        }' "$RESULTS" | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

mkdir -p "$FERRY_ROOT/bench-out"
REPORT="$FERRY_ROOT/bench-out/bench-$(date +%Y%m%d-%H%M%S).txt"

CURL_WALL="$(median curl wall)"
{
    printf 'ferry download benchmark  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'host: %s, %s cores, kernel %s\n' "$(hostname)" "$(nproc)" "$(uname -r)"
    printf 'ferry: %s\n' "${FERRY:-skipped}${FERRY:+ ($(git -C "$FERRY_ROOT" describe --always --dirty 2>/dev/null || echo 'no git'))}"
    printf 'file: %s MiB random data, served by nginx %s (sendfile) on 127.0.0.1; %s runs per tool, medians\n' \
        "$BENCH_SIZE_MIB" "$("$NGINX_BIN" -v 2>&1 | sed 's|.*/||')" "$RUNS"
    printf 'versions: %s; %s\n' "$(curl --version | head -n 1 | cut -d' ' -f1-2)" "$(wget --version | head -n 1 | cut -d' ' -f1-3)"
    printf '\n%-6s %10s %10s %12s %12s %10s\n' tool 'wall s' 'MiB/s' 'cpu s(u+s)' 'peak RSS MiB' 'wall/curl'
    for tool in "${TOOLS[@]}"; do
        wall="$(median "$tool" wall)"
        cpu="$(median "$tool" cpu)"
        rss="$(median "$tool" rss)"
        awk -v t="$tool" -v w="$wall" -v c="$cpu" -v r="$rss" -v cw="$CURL_WALL" -v mib="$BENCH_SIZE_MIB" \
            'BEGIN {printf "%-6s %10.3f %10.0f %12.2f %12.1f %10.2f\n", t, w, (w > 0 ? mib / w : 0), c, r / 1024, (cw > 0 ? w / cw : 0)}'
    done
    printf '\n'
    if [[ "$SKIP_FERRY" == 1 ]]; then
        printf 'ferry skipped (SKIP_FERRY=1): no verdict\n'
    else
        printf 'ferry output sha256 matches source: %s\n' "$SRC_SHA"
        awk -v w="$(median ferry wall)" -v cw="$CURL_WALL" \
            'BEGIN {printf "ferry/curl wall ratio %.2f (target <= 1.00)\n", (cw > 0 ? w / cw : 0)}'
        awk -v r="$(median ferry rss)" 'BEGIN {printf "ferry peak RSS %.1f MiB (target <= 16)\n", r / 1024}'
    fi
    printf '\nper run (tool wall_s user_s sys_s maxrss_KiB):\n'
    cat "$RESULTS"
} | tee "$REPORT"
log "saved $REPORT"
