#!/usr/bin/env bash
# The README's main command: the whole fleet on this machine.  It builds `ferry` and
# `ferry-controller`, starts the controller (API + embedded MQTT broker + SQLite), registers
# DEMO_PHONES phones and starts one `ferry daemon` agent per phone, each on its own device
# root, serves a file on 127.0.0.1, sends it to every phone with one SendFile (signed like
# Alibaba's SDK), shows live per-phone status until every phone is done, then DescribeTasks
# and the phones' list.  Everything stops when it ends (or on Ctrl-C).
#
#   scripts/demo.sh                 DEMO_PHONES=5 (default), DEMO_MIB=32 (file size)
#
# Needs only a Debian 12 machine: installs Rust from Debian if no cargo is present and
# python3 for the file server (see scripts/lib/common.sh).  The build uses the `demo` profile
# (unoptimised, no debug info): a clean build of the dependency tree takes a few minutes on 2
# cores, much less than `release`'s fat LTO.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PHONES="${DEMO_PHONES:-5}"
MIB="${DEMO_MIB:-32}"
[[ "$PHONES" =~ ^[1-9][0-9]*$ ]] || die "DEMO_PHONES must be a positive number"
[[ "$MIB" =~ ^[1-9][0-9]*$ ]] || die "DEMO_MIB must be a positive number"

cd "$FERRY_ROOT"
ensure_rust
ensure_apt python3

if [[ -x "$CARGO_TARGET_DIR/demo/ferry-controller" ]]; then
    log "building ferry and ferry-controller (demo profile)"
else
    log "building ferry and ferry-controller (demo profile); the first build takes a few minutes, later ones seconds"
fi
cargo build --profile demo --features controller --bin ferry --bin ferry-controller "${FERRY_LOCKED[@]}"
FERRY="$CARGO_TARGET_DIR/demo/ferry"
CONTROLLER="$CARGO_TARGET_DIR/demo/ferry-controller"

DEMO="$(mktemp -d /tmp/ferry-fleet-demo.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API="127.0.0.1:$(free_port)"
MQTT="127.0.0.1:$(free_port)"
WWW_PORT="$(free_port)"

log "demo folder $DEMO (logs, device roots, controller state)"
mkdir -p "$DEMO/www"
head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$DEMO/www/demo.bin"
SHA="$(sha256sum "$DEMO/www/demo.bin" | cut -d' ' -f1)"
python3 -m http.server "$WWW_PORT" --bind 127.0.0.1 --directory "$DEMO/www" >"$DEMO/www.log" 2>&1 &
PIDS+=($!)

"$CONTROLLER" access-key create --state-dir "$DEMO/controller" >"$DEMO/access-key"
IDS=()
for i in $(seq -w 1 "$PHONES"); do
    id="acp-demo$i"
    IDS+=("$id")
    "$CONTROLLER" instance add --state-dir "$DEMO/controller" --broker "mqtt://$MQTT" "$id" >"$DEMO/$id.toml"
done
"$CONTROLLER" serve --state-dir "$DEMO/controller" --listen "$API" --mqtt-listen "$MQTT" \
    >"$DEMO/controller.out" 2>"$DEMO/controller.log" &
PIDS+=($!)
for _ in $(seq 100); do
    grep -q "API on" "$DEMO/controller.out" 2>/dev/null && break
    sleep 0.1
done
grep -q "API on" "$DEMO/controller.out" || die "the controller did not start: $(tail -5 "$DEMO/controller.log")"
log "controller: API http://$API, MQTT mqtt://$MQTT"

for id in "${IDS[@]}"; do
    mkdir -p "$DEMO/devices/$id/sdcard/Download"
    "$FERRY" --config "$DEMO/$id.toml" --state-dir "$DEMO/agents/$id" \
        --device-root "$DEMO/devices/$id" daemon --listen off 2>"$DEMO/$id.log" &
    PIDS+=($!)
done
log "$PHONES phones started (ferry daemon, each on its own device root)"

INSTANCES=()
for id in "${IDS[@]}"; do INSTANCES+=(--instance "$id"); done
log "SendFile: http://127.0.0.1:$WWW_PORT/demo.bin ($MIB MiB) to /sdcard/Download on every phone"
status=0
"$CONTROLLER" send-file --endpoint "$API" --access-key-file "$DEMO/access-key" "${INSTANCES[@]}" \
    --source-file-path /sdcard/Download/demo.bin --upload-type DOWNLOAD_URL \
    --upload-url "http://127.0.0.1:$WWW_PORT/demo.bin" --watch || status=$?

echo
log "DescribeTasks (every task, batches and phones)"
"$CONTROLLER" describe-tasks --endpoint "$API" --access-key-file "$DEMO/access-key" --max-results 100
echo
log "FerryListInstances"
"$CONTROLLER" list-instances --endpoint "$API" --access-key-file "$DEMO/access-key"
echo
ok=0
for id in "${IDS[@]}"; do
    got="$(sha256sum "$DEMO/devices/$id/sdcard/Download/demo.bin" 2>/dev/null | cut -d' ' -f1 || true)"
    [[ "$got" == "$SHA" ]] && ok=$((ok + 1))
done
log "$ok of $PHONES phones hold /sdcard/Download/demo.bin with sha256 $SHA"
[[ "$status" -eq 0 && "$ok" -eq "$PHONES" ]] || exit 1
