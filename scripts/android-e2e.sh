#!/usr/bin/env bash
# End-to-end test of the aarch64 ferry binary on a real Android device or
# emulator, through Debian's `adb`.  Cannot run without a device: it stops at
# once, with exit status 2 and a message saying what is missing.
#
#   scripts/android-e2e.sh
#
# Environment:
#   ANDROID_SERIAL  which device (adb's own variable; needed when several are attached)
#   FERRY_BIN       the binary to push (default: what scripts/build-android.sh
#                   produces, /var/tmp/ferry-target-android/aarch64-unknown-linux-musl/android/ferry)
#   E2E_BIG_MIB     size of the file for the kill -9 test (default 200)
#
# What it does (all on the device, as adb's shell user, outside any init service):
#   1. push the binary to /data/local/tmp/ferry-e2e/ and start `ferry daemon` there,
#      API on device 127.0.0.1:17070 (not 7070, so an installed ferry service is left alone);
#   2. `adb forward` a workstation port to that API; read the token with `adb exec-out cat`;
#   3. serve test files from the workstation with `python3 -m http.server` on 127.0.0.1
#      and make that port reachable from the device with `adb reverse`;
#   4. DOWNLOAD_URL to /sdcard/Download/ferry-e2e.bin; wait for SUCCESS; compare size and
#      sha256 on the device (toybox sha256sum) with the local file and the API's result;
#   5. a bad payload must get HTTP 400 with an InvalidParameter.* code;
#   6. a large file: kill -9 the daemon mid-transfer, check the final name does not exist,
#      restart, and the same task must finish with the right sha256.
#      Python's http.server ignores Range, so the restarted transfer begins again from
#      zero (ferry refuses to splice without a validated 206); Range resume itself is
#      covered on the host by tests/daemon_kill.rs.  If the transfer finishes before the
#      kill lands (fast emulator), the test says so and asks for a larger E2E_BIG_MIB.
#   7. AutoInstall with the real, signed fixtures of scripts/lib/apk-fixtures.sh (built here
#      first, with Debian's aapt/apksigner/zipalign): fixture.apk (pm install -S on stdin;
#      the package must then be listed by `pm list packages` at versionCode 7), split.apks
#      (one session: `pm path` lists base.apk and split_config.fr.apk), split.xapk (its OBB
#      must land in /sdcard/Android/obb/com.ferry.fixture.split/ with the right sha256), a
#      downgrade (fixture-v8.apk, then fixture.apk: FAILED with
#      Install.INSTALL_FAILED_VERSION_DOWNGRADE, the file kept), and a text file with
#      AutoInstall (SUCCESS, Result.Install.ErrorCode Install.NotAnApk).
#   A trap removes everything: daemon, files on the device and here, forward, reverse, and
#   the fixture apps (pm uninstall com.ferry.fixture, com.ferry.fixture.split) with their OBB.
#
# Exit status: 0 all passed, 1 a check failed, 2 cannot run (no adb, no device, no binary).
set -euo pipefail
shopt -s inherit_errexit # a failing $(...) inside a $(...) stops the script too

DEFAULT_BIN=/var/tmp/ferry-target-android/aarch64-unknown-linux-musl/android/ferry
FERRY_BIN="${FERRY_BIN:-$DEFAULT_BIN}"
BIG_MIB="${E2E_BIG_MIB:-200}"
DEV_DIR=/data/local/tmp/ferry-e2e       # binary, state dir, daemon log
DEV_STATE="$DEV_DIR/state"
DEV_PORT=17070
DEV_SMALL=/sdcard/Download/ferry-e2e.bin
DEV_BIG=/sdcard/Download/ferry-e2e-big.bin
DEV_APPS=/sdcard/Download/ferry-e2e-apps     # the AutoInstall fixtures land here
FIXTURE_PACKAGES="com.ferry.fixture com.ferry.fixture.split"
OBB_DIR=/sdcard/Android/obb/com.ferry.fixture.split

log() { printf '==> %s\n' "$*" >&2; }
cannot_run() {
    printf 'android-e2e: CANNOT RUN: %s\n' "$*" >&2
    exit 2
}
fail() {
    printf 'android-e2e: FAIL: %s\n' "$*" >&2
    exit 1
}

# --- 1. prerequisites: checked before anything is created, so a failure leaves nothing behind
command -v adb >/dev/null 2>&1 ||
    cannot_run "adb not found on PATH; install Debian's client with: apt-get install adb"

# `adb get-state` prints "device" when exactly one usable device is selected (ANDROID_SERIAL
# picks one of several); otherwise it fails with adb's own reason, which we pass on.
if ! state=$(timeout 30 adb get-state 2>&1) || [[ "${state##*$'\n'}" != "device" ]]; then
    reason=$(printf '%s\n' "$state" | grep -v '^\* daemon' | tail -n 1)
    cannot_run "no Android device or emulator ready (adb get-state: ${reason:-no answer}).
  Attach a device with USB debugging on, or start an emulator; 'adb devices' lists them;
  with several attached, choose one with ANDROID_SERIAL=SERIAL."
fi

for tool in curl python3 sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || cannot_run "$tool not found on PATH"
done
[[ -f "$FERRY_BIN" ]] ||
    cannot_run "no ferry binary at $FERRY_BIN; run scripts/build-android.sh or set FERRY_BIN"

# The APK fixtures (cached under /var/tmp; apt installs the Android build tools when missing).
# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=scripts/lib/apk-fixtures.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apk-fixtures.sh"
ensure_apk_fixtures || cannot_run "the APK fixtures could not be built (scripts/lib/apk-fixtures.sh)"

# --- helpers
WORK=$(mktemp -d)
HTTP_PID=""
FWD_PORT=""
HTTP_PORT=""

# Runs a command line in the device's shell (adb joins its arguments into one line).
dev() { adb shell "$@"; }

cleanup() {
    set +e
    if [[ -n "$(adb get-state 2>/dev/null)" ]]; then
        dev "if [ -f $DEV_STATE/daemon.pid ]; then kill -9 \$(cat $DEV_STATE/daemon.pid); fi" 2>/dev/null
        dev "rm -rf $DEV_DIR $DEV_SMALL $DEV_BIG $DEV_APPS $OBB_DIR /sdcard/Download/.ferry-*.part" 2>/dev/null
        local pkg
        for pkg in $FIXTURE_PACKAGES; do
            dev "pm uninstall $pkg" >/dev/null 2>&1
        done
        [[ -n "$FWD_PORT" ]] && adb forward --remove "tcp:$FWD_PORT" 2>/dev/null
        [[ -n "$HTTP_PORT" ]] && adb reverse --remove "tcp:$HTTP_PORT" 2>/dev/null
    fi
    [[ -n "$HTTP_PID" ]] && kill "$HTTP_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# json FIELD.PATH < body: prints one field of a JSON document ("" when absent).
json() {
    python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else (v or {}).get(k)
print("" if v is None else v)' "$1"
}

# api METHOD PATH [BODY_FILE]: prints the body, then the HTTP status on its own last line.
api() {
    local args=(-sS -X "$1" -H "Authorization: Bearer $TOKEN" -w '\n%{http_code}')
    [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' --data-binary "@$3")
    curl "${args[@]}" "http://127.0.0.1:$FWD_PORT$2"
}

start_daemon() {
    dev "cd $DEV_DIR && (nohup ./ferry daemon --state-dir $DEV_STATE --listen 127.0.0.1:$DEV_PORT \
        </dev/null >>$DEV_DIR/daemon.log 2>&1 & echo \$! >$DEV_STATE/daemon.pid)"
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$FWD_PORT/healthz" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    dev "tail -n 30 $DEV_DIR/daemon.log" >&2 || true
    fail "daemon did not answer /healthz within 20 s (its log is above)"
}

# submit TASK_ID URL DEVICE_PATH [AUTO_INSTALL]: posts a DOWNLOAD_URL payload, expects 201.
submit() {
    printf '{"TaskId":"%s","UploadType":"DOWNLOAD_URL","UploadUrl":"%s","SourceFilePath":"%s","AutoInstall":%s}' \
        "$1" "$2" "$3" "${4:-false}" >"$WORK/payload.json"
    local out
    out=$(api POST /v1/tasks "$WORK/payload.json")
    [[ "${out##*$'\n'}" == 201 ]] || fail "submitting $1: expected 201, got: $out"
}

# task TASK_ID: prints the task JSON (fails unless 200).
task() {
    local out
    out=$(api GET "/v1/tasks/$1")
    [[ "${out##*$'\n'}" == 200 ]] || fail "reading task $1: $out"
    printf '%s\n' "${out%$'\n'*}"
}

# wait_success TASK_ID: polls until SUCCESS (fails on FAILED/CANCELLED or after 10 min).
wait_success() {
    local body phase=""
    for _ in $(seq 1 1200); do
        body=$(task "$1")
        phase=$(json Phase <<<"$body")
        case "$phase" in
            SUCCESS) printf '%s\n' "$body"; return 0 ;;
            FAILED | CANCELLED) fail "task $1 ended $phase: $(json ErrorCode <<<"$body") $(json ErrorMsg <<<"$body")" ;;
        esac
        sleep 0.5
    done
    fail "task $1 still $phase after 10 minutes"
}

# wait_end TASK_ID: polls until SUCCESS, FAILED or CANCELLED and prints the task.
wait_end() {
    local body phase=""
    for _ in $(seq 1 1200); do
        body=$(task "$1")
        phase=$(json Phase <<<"$body")
        case "$phase" in
            SUCCESS | FAILED | CANCELLED) printf '%s\n' "$body"; return 0 ;;
        esac
        sleep 0.5
    done
    fail "task $1 still $phase after 10 minutes"
}

# check_file DEVICE_PATH LOCAL_FILE TASK_JSON: size and sha256 on the device, and in the API.
check_file() {
    local want_sha want_size got_sha got_size api_sha
    want_sha=$(sha256sum "$2" | cut -d' ' -f1)
    want_size=$(stat -c %s "$2")
    got_sha=$(adb exec-out sha256sum "$1" | cut -d' ' -f1)
    got_size=$(adb exec-out stat -c %s "$1")
    api_sha=$(json Result.Files.0.Sha256 <<<"$3")
    [[ "$got_size" == "$want_size" ]] || fail "$1: size $got_size on the device, $want_size here"
    [[ "$got_sha" == "$want_sha" ]] || fail "$1: sha256 $got_sha on the device, $want_sha here"
    [[ "$api_sha" == "$want_sha" ]] || fail "$1: API reports sha256 $api_sha, file has $want_sha"
    log "ok: $1 has $want_size bytes, sha256 $want_sha"
}

# --- 2. the device side
abi=$(dev getprop ro.product.cpu.abi | tr -d '\r')
log "device $(dev getprop ro.product.model | tr -d '\r') (abi $abi, Android $(dev getprop ro.build.version.release | tr -d '\r'))"
dev "rm -rf $DEV_DIR && mkdir -p $DEV_STATE"
adb push "$FERRY_BIN" "$DEV_DIR/ferry" >/dev/null
dev chmod 755 "$DEV_DIR/ferry"
dev "$DEV_DIR/ferry --version" >/dev/null ||
    fail "the binary does not run on this device (abi $abi); FERRY_BIN must match the device"

FWD_PORT=$(adb forward tcp:0 "tcp:$DEV_PORT")
start_daemon
TOKEN=$(adb exec-out cat "$DEV_STATE/token")
[[ -n "$TOKEN" ]] || fail "empty token in $DEV_STATE/token"
log "daemon up; API forwarded to 127.0.0.1:$FWD_PORT"

# --- 3. the file server on the workstation, reachable from the device via adb reverse
mkdir "$WORK/www"
head -c $((5 * 1024 * 1024 + 123)) /dev/urandom >"$WORK/www/small.bin"
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom >"$WORK/www/big.bin"
(cd "$WORK/www" && exec python3 -u -m http.server 0 --bind 127.0.0.1 >"$WORK/http.log" 2>&1) &
HTTP_PID=$!
for _ in $(seq 1 50); do
    HTTP_PORT=$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$WORK/http.log" | head -n 1)
    [[ -n "$HTTP_PORT" ]] && break
    sleep 0.1
done
[[ -n "$HTTP_PORT" ]] || fail "python3 -m http.server did not start: $(cat "$WORK/http.log")"
adb reverse "tcp:$HTTP_PORT" "tcp:$HTTP_PORT" >/dev/null
BASE="http://127.0.0.1:$HTTP_PORT"
RUN=$(date +%s)

# --- 4. a download lands, verified
log "test: DOWNLOAD_URL -> $DEV_SMALL"
submit "e2e-small-$RUN" "$BASE/small.bin" "$DEV_SMALL"
body=$(wait_success "e2e-small-$RUN")
check_file "$DEV_SMALL" "$WORK/www/small.bin" "$body"

# --- 5. a bad payload is refused with a precise code
log "test: bad payload -> 400 InvalidParameter.*"
printf '{"UploadType":"DOWNLOAD_URL","UploadUrl":"%s/small.bin","SourceFilePath":"relative/x.bin"}' \
    "$BASE" >"$WORK/bad.json"
out=$(api POST /v1/tasks "$WORK/bad.json")
code=$(json ErrorCode <<<"${out%$'\n'*}" || true)
[[ "${out##*$'\n'}" == 400 && "$code" == InvalidParameter.* ]] ||
    fail "bad payload: expected 400 InvalidParameter.*, got: $out"
log "ok: 400 $code"

# --- 6. kill -9 mid-transfer, restart, the same task completes
log "test: kill -9 during a $BIG_MIB MiB transfer, then restart"
submit "e2e-big-$RUN" "$BASE/big.bin" "$DEV_BIG"
done_bytes=0
for _ in $(seq 1 600); do
    done_bytes=$(json BytesDone <<<"$(task "e2e-big-$RUN")")
    [[ "${done_bytes:-0}" -gt 0 ]] && break
    sleep 0.05
done
dev "kill -9 \$(cat $DEV_STATE/daemon.pid)"
final=$(dev "ls $DEV_BIG >/dev/null 2>&1 && echo present || echo absent" | tr -d '\r')
if [[ "$final" == absent ]]; then
    log "killed at ${done_bytes} of $((BIG_MIB * 1024 * 1024)) bytes; the final name is absent"
elif [[ "$(adb exec-out sha256sum "$DEV_BIG" | cut -d' ' -f1)" == "$(sha256sum "$WORK/www/big.bin" | cut -d' ' -f1)" ]]; then
    log "NOTE: the transfer finished before the kill landed, so nothing was interrupted;"
    log "      run again with a larger E2E_BIG_MIB (now $BIG_MIB) to exercise the restart."
else
    fail "after kill -9 the final name $DEV_BIG shows an incomplete file"
fi
start_daemon
body=$(wait_success "e2e-big-$RUN")
check_file "$DEV_BIG" "$WORK/www/big.bin" "$body"

# --- 7. AutoInstall: real signed APKs through the device's own pm
for f in fixture.apk fixture-v8.apk split.apks split.xapk obb.bin; do
    cp "$FERRY_APK_FIXTURES/$f" "$WORK/www/$f"
done
printf 'release notes, not an app\n' >"$WORK/www/notes.txt"
for pkg in $FIXTURE_PACKAGES; do
    dev "pm uninstall $pkg" >/dev/null 2>&1 || true
done

log "test: AutoInstall of a single APK (pm install -S, streamed)"
submit "e2e-apk-$RUN" "$BASE/fixture.apk" "$DEV_APPS/fixture.apk" true
body=$(wait_success "e2e-apk-$RUN")
[[ "$(json Result.Install.Package <<<"$body")" == com.ferry.fixture ]] ||
    fail "install result does not name com.ferry.fixture: $body"
[[ "$(json Result.Install.VersionCode <<<"$body")" == 7 ]] || fail "versionCode is not 7: $body"
dev "pm list packages com.ferry.fixture" | tr -d '\r' | grep -qx 'package:com.ferry.fixture' ||
    fail "pm does not list com.ferry.fixture after the install"
dev "dumpsys package com.ferry.fixture" | grep -q 'versionCode=7' ||
    fail "the installed com.ferry.fixture is not versionCode 7"
log "ok: com.ferry.fixture 1.2.3 installed ($(json Result.Install.PmOutput <<<"$body"))"

log "test: AutoInstall of a .apks bundle (one pm session)"
submit "e2e-apks-$RUN" "$BASE/split.apks" "$DEV_APPS/split.apks" true
body=$(wait_success "e2e-apks-$RUN")
paths=$(dev "pm path com.ferry.fixture.split" | tr -d '\r')
if ! grep -q 'base.apk$' <<<"$paths" || ! grep -q 'split_config.fr.apk$' <<<"$paths"; then
    fail "pm path com.ferry.fixture.split does not show base and config.fr: $paths"
fi
log "ok: com.ferry.fixture.split installed with its config.fr split"

log "test: AutoInstall of an .xapk with an OBB expansion file"
submit "e2e-xapk-$RUN" "$BASE/split.xapk" "$DEV_APPS/split.xapk" true
body=$(wait_success "e2e-xapk-$RUN")
obb="$OBB_DIR/main.3.com.ferry.fixture.split.obb"
[[ "$(json Result.Install.ObbFiles.0 <<<"$body")" == "$obb" ]] || fail "no OBB in the result: $body"
[[ "$(adb exec-out sha256sum "$obb" | cut -d' ' -f1)" == "$(sha256sum "$WORK/www/obb.bin" | cut -d' ' -f1)" ]] ||
    fail "$obb on the device differs from the bundle's OBB"
log "ok: the OBB is in $OBB_DIR"

log "test: a downgrade is pm's refusal, reported with its reason"
submit "e2e-v8-$RUN" "$BASE/fixture-v8.apk" "$DEV_APPS/fixture-v8.apk" true
wait_success "e2e-v8-$RUN" >/dev/null
submit "e2e-down-$RUN" "$BASE/fixture.apk" "$DEV_APPS/fixture-again.apk" true
body=$(wait_end "e2e-down-$RUN")
[[ "$(json Phase <<<"$body")" == FAILED &&
    "$(json ErrorCode <<<"$body")" == Install.INSTALL_FAILED_VERSION_DOWNGRADE ]] ||
    fail "expected FAILED Install.INSTALL_FAILED_VERSION_DOWNGRADE, got: $body"
[[ "$(dev "ls $DEV_APPS/fixture-again.apk >/dev/null 2>&1 && echo kept" | tr -d '\r')" == kept ]] ||
    fail "the refused APK was not kept on the device"
log "ok: $(json ErrorMsg <<<"$body")"

log "test: AutoInstall of a file that is no APK"
submit "e2e-notes-$RUN" "$BASE/notes.txt" "$DEV_APPS/notes.txt" true
body=$(wait_success "e2e-notes-$RUN")
[[ "$(json Result.Install.ErrorCode <<<"$body")" == Install.NotAnApk ]] ||
    fail "expected Result.Install.ErrorCode Install.NotAnApk: $body"
log "ok: transferred, Install.NotAnApk"

log "PASS: android e2e on $(adb get-serialno)"
