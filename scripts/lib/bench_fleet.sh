# shellcheck shell=bash
# Part `fleet` of scripts/bench.sh: FLEET_PHONES real `ferry daemon` processes (each its own
# device root and state dir, local API on a port of its own) against `ferry-controller serve`
# with its embedded broker, one 4 MiB file from the part's nginx.  Sourced by bench.sh after
# common.sh and bench.sh (the lib); uses its RUN_DIR, PORT, WWW, log/die and pick_port.
#
#   floor   the same payload (no TaskId, target /sdcard/Download/floor.bin) POSTed to every
#           agent's local API at once, until every task is SUCCESS
#   fleet   one SendFile naming every phone (target /sdcard/Download/fleet.bin), DescribeTasks
#           at FLEET_RATE/s meanwhile, until the batch is FINISHED
#   idle    afterwards: every agent's VmRSS/VmHWM, and the context switches of FLEET_WATCH
#           agents over FLEET_IDLE_SECS with their MQTT link open

if [[ -n "${_FERRY_BENCH_FLEET_SOURCED:-}" ]]; then
    return 0
fi
_FERRY_BENCH_FLEET_SOURCED=1

FLEET_PHONES="${FLEET_PHONES:-500}"
FLEET_RATE="${FLEET_RATE:-100}"
FLEET_KEEPALIVE="${FLEET_KEEPALIVE:-20}"
FLEET_IDLE_SECS="${FLEET_IDLE_SECS:-60}"
FLEET_WATCH="${FLEET_WATCH:-5}"
# The agents stand in for phones, which are other machines: run at this niceness, 500 of them
# busy hashing and fsyncing would otherwise take the 2 cores from the controller (and its
# DescribeTasks latency would measure the scheduler's run queue). The floor runs them alike.
FLEET_AGENT_NICE="${FLEET_AGENT_NICE:-10}"
FLEET_MIB=4
FLEET_NAME="bench-${FLEET_MIB}MiB.bin"

FLEET_CTL_PID=""
FLEET_PIDS=()

# fleet_build: ferry-controller and the load driver (release, the controller feature).
# Sets FLEET_CTL and FLEET_LOAD.
fleet_build() {
    if [[ -n "${FERRY_CONTROLLER_BIN:-}" ]]; then
        FLEET_CTL="$FERRY_CONTROLLER_BIN"
    else
        FLEET_CTL="$CARGO_TARGET_DIR/release/ferry-controller"
    fi
    if [[ -n "${FERRY_CONTROLLER_BIN:-}" && -n "${FLEET_LOAD_BIN:-}" ]]; then
        FLEET_LOAD="$FLEET_LOAD_BIN"
        [[ -x "$FLEET_CTL" && -x "$FLEET_LOAD" ]] || die "FERRY_CONTROLLER_BIN or FLEET_LOAD_BIN is not executable"
        return 0
    fi
    log "building ferry-controller and the fleet load driver (release, --all-features)"
    (cd "$FERRY_ROOT" && cargo build --release --all-features "${FERRY_LOCKED[@]}" \
        --bin ferry-controller --bench fleet_load)
    FLEET_LOAD="$(cd "$FERRY_ROOT" && cargo build --release --all-features "${FERRY_LOCKED[@]}" \
        --bench fleet_load --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fleet_load" and m.get("executable"):
        print(m["executable"])')"
    [[ -x "$FLEET_CTL" ]] || die "ferry-controller not found at $FLEET_CTL"
    [[ -x "$FLEET_LOAD" ]] || die "the fleet_load driver was not built"
}

# proc_field PID FIELD: a `Field:  N kB` (or plain count) value of /proc/PID/status.
proc_field() {
    awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}

# cpu_ticks PID: utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() {
    # Field 2 (comm) has no spaces for our binaries.
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# ctx_switches PID: voluntary + nonvoluntary context switches summed over its threads.
ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '$1 == "voluntary_ctxt_switches:" || $1 == "nonvoluntary_ctxt_switches:" {n += $2} END {print n + 0}'
}

stop_fleet() {
    local pid
    if ((${#FLEET_PIDS[@]})); then
        kill -TERM "${FLEET_PIDS[@]}" 2>/dev/null || true
        for pid in "${FLEET_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
        FLEET_PIDS=()
    fi
    if [[ -n "$FLEET_CTL_PID" ]] && kill -0 "$FLEET_CTL_PID" 2>/dev/null; then
        kill -TERM "$FLEET_CTL_PID" 2>/dev/null || true
        wait "$FLEET_CTL_PID" 2>/dev/null || true
    fi
    FLEET_CTL_PID=""
}

# fleet_online: how many instances the controller lists as online.
fleet_online() {
    "$FLEET_CTL" list-instances --endpoint "127.0.0.1:$FLEET_API" \
        --access-key-file "$FLEET_DIR/ak" --json 2>/dev/null |
        grep -o '"Online": *true' | wc -l
}

# run_fleet: the whole part; writes `key value` lines to $FLEET_RESULTS.
run_fleet() {
    local n="$FLEET_PHONES" i id p ctl_dir broker
    FLEET_DIR="$RUN_DIR/fleet"
    FLEET_RESULTS="$RUN_DIR/fleet-results.txt"
    : >"$FLEET_RESULTS"
    ctl_dir="$FLEET_DIR/ctl"
    mkdir -p "$FLEET_DIR/phones"
    # Each agent holds a few descriptors, the controller two sockets per agent (MQTT, its
    # broker side) and nginx one per transfer connection.
    ulimit -n "$(ulimit -Hn)"
    (($(ulimit -n) >= 4 * n + 256)) || die "ulimit -n $(ulimit -n) is too low for $n phones"

    FLEET_API="$(pick_port)"
    FLEET_MQTT="$(pick_port)"
    broker="mqtt://127.0.0.1:$FLEET_MQTT"
    "$FLEET_CTL" access-key create --state-dir "$ctl_dir" >"$FLEET_DIR/ak"
    log "fleet: registering $n instances"
    : >"$FLEET_DIR/instances"
    : >"$FLEET_DIR/agents"
    for i in $(seq -f '%04g' "$n"); do
        id="acp-bench$i"
        p="$FLEET_DIR/phones/$id"
        mkdir -p "$p/dev/sdcard/Download" "$p/state"
        {
            printf 'state_dir = "%s"\ndevice_root = "%s"\n' "$p/state" "$p/dev"
            printf 'listen = "127.0.0.1:0"\nlog_level = "warn"\n'
            printf '[media_scan]\nmode = "off"\n'
            "$FLEET_CTL" instance add --state-dir "$ctl_dir" --broker "$broker" "$id"
            printf 'keepalive_secs = %s\n' "$FLEET_KEEPALIVE"
        } >"$p/ferry.toml"
        printf '%s\n' "$id" >>"$FLEET_DIR/instances"
        printf '%s %s\n' "$p/state" "$p/dev" >>"$FLEET_DIR/agents"
    done

    "$FLEET_CTL" serve --state-dir "$ctl_dir" --listen "127.0.0.1:$FLEET_API" \
        --mqtt-listen "127.0.0.1:$FLEET_MQTT" >"$FLEET_DIR/controller.log" 2>&1 &
    FLEET_CTL_PID=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$FLEET_API/" && break
        kill -0 "$FLEET_CTL_PID" 2>/dev/null || { cat "$FLEET_DIR/controller.log" >&2; die "ferry-controller exited"; }
        sleep 0.1
    done
    log "fleet: controller (pid $FLEET_CTL_PID) API 127.0.0.1:$FLEET_API, embedded broker $broker"

    log "fleet: starting $n ferry daemons"
    for id in $(cat "$FLEET_DIR/instances"); do
        p="$FLEET_DIR/phones/$id"
        nice -n "$FLEET_AGENT_NICE" "$FERRY" --config "$p/ferry.toml" daemon >"$p/daemon.log" 2>&1 &
        FLEET_PIDS+=($!)
    done
    local online=0 waited=0
    while :; do
        online="$(fleet_online)"
        ((online >= n)) && break
        ((waited < 300)) || die "fleet: only $online of $n agents online after 300 s"
        sleep 1
        waited=$((waited + 1))
    done
    for p in "$FLEET_DIR"/phones/*/state; do
        [[ -s "$p/api.json" ]] || die "fleet: no api.json in $p"
    done
    log "fleet: $n agents online after ${waited} s"

    local url="http://127.0.0.1:$PORT/$FLEET_NAME"
    printf '{"UploadType": "DOWNLOAD_URL", "SourceFilePath": "/sdcard/Download/floor.bin", "UploadUrl": "%s"}\n' \
        "$url" >"$FLEET_DIR/floor.json"
    printf '{"UploadType": "DOWNLOAD_URL", "SourceFilePath": "/sdcard/Download/fleet.bin", "UploadUrl": "%s"}\n' \
        "$url" >"$FLEET_DIR/fleet.json"

    sync
    log "fleet: floor: $n tasks straight to the agents' local APIs"
    "$FLEET_LOAD" floor "$FLEET_DIR/agents" "$FLEET_DIR/floor.json" >>"$FLEET_RESULTS" ||
        die "fleet: the floor run failed"

    sync
    sleep 2
    local ticks0 ticks1 hz
    hz="$(getconf CLK_TCK)"
    ticks0="$(cpu_ticks "$FLEET_CTL_PID")"
    log "fleet: one SendFile for $n phones, DescribeTasks at $FLEET_RATE/s"
    "$FLEET_LOAD" fleet "127.0.0.1:$FLEET_API" "$FLEET_DIR/ak" "$FLEET_DIR/instances" \
        "$FLEET_DIR/fleet.json" "$FLEET_RATE" >>"$FLEET_RESULTS" || {
        tail -n 20 "$FLEET_DIR/controller.log" >&2
        die "fleet: the SendFile run failed"
    }
    ticks1="$(cpu_ticks "$FLEET_CTL_PID")"
    {
        printf 'ctl_cpu_run_s %s\n' "$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz}')"
        printf 'ctl_cpu_total_s %s\n' "$(awk -v b="$ticks1" -v hz="$hz" 'BEGIN {printf "%.2f", b / hz}')"
        printf 'ctl_hwm_kib %s\n' "$(proc_field "$FLEET_CTL_PID" VmHWM)"
        printf 'ctl_rss_kib %s\n' "$(proc_field "$FLEET_CTL_PID" VmRSS)"
    } >>"$FLEET_RESULTS"

    # Every file is the source, byte for byte.
    local want got bad=0
    want="$(cat "$WWW/$FLEET_NAME.sha256")"
    for p in "$FLEET_DIR"/phones/*/dev/sdcard/Download; do
        for f in floor.bin fleet.bin; do
            got="$(sha256sum "$p/$f" 2>/dev/null | awk '{print $1}')"
            [[ "$got" == "$want" ]] || bad=$((bad + 1))
        done
    done
    ((bad == 0)) || die "fleet: $bad files differ from the source"

    log "fleet: idle agents: RSS, and context switches over ${FLEET_IDLE_SECS} s (keepalive ${FLEET_KEEPALIVE} s)"
    sleep 5
    local pid
    for pid in "${FLEET_PIDS[@]}"; do
        printf '%s %s %s %s\n' "$(proc_field "$pid" VmRSS)" "$(proc_field "$pid" VmHWM)" "$(proc_field "$pid" RssAnon)" \
            "$(awk '$1 == "Pss:" {print $2}' "/proc/$pid/smaps_rollup")"
    done >"$FLEET_DIR/agent-rss.txt"
    local watched=("${FLEET_PIDS[@]:0:$FLEET_WATCH}") before=()
    for pid in "${watched[@]}"; do before+=("$(ctx_switches "$pid")"); done
    sleep "$FLEET_IDLE_SECS"
    for i in "${!watched[@]}"; do
        printf '%s\n' $(($(ctx_switches "${watched[$i]}") - before[i]))
    done | sort -n >"$FLEET_DIR/wakeups.txt"
    {
        printf 'agent_rss_median_kib %s\n' "$(awk '{print $1}' "$FLEET_DIR/agent-rss.txt" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
        printf 'agent_rss_max_kib %s\n' "$(awk '{print $1}' "$FLEET_DIR/agent-rss.txt" | sort -n | tail -n 1)"
        printf 'agent_hwm_median_kib %s\n' "$(awk '{print $2}' "$FLEET_DIR/agent-rss.txt" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
        printf 'agent_hwm_max_kib %s\n' "$(awk '{print $2}' "$FLEET_DIR/agent-rss.txt" | sort -n | tail -n 1)"
        printf 'agent_anon_median_kib %s\n' "$(awk '{print $3}' "$FLEET_DIR/agent-rss.txt" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
        printf 'agent_anon_max_kib %s\n' "$(awk '{print $3}' "$FLEET_DIR/agent-rss.txt" | sort -n | tail -n 1)"
        printf 'agent_pss_median_kib %s\n' "$(awk '{print $4}' "$FLEET_DIR/agent-rss.txt" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
        printf 'agent_wakeups %s\n' "$(tr '\n' ' ' <"$FLEET_DIR/wakeups.txt")"
        printf 'agent_wakeups_max %s\n' "$(tail -n 1 "$FLEET_DIR/wakeups.txt")"
        # Whole keepalive periods in the window, plus one for where the window starts.
        printf 'keepalives %s\n' $((FLEET_IDLE_SECS / FLEET_KEEPALIVE + 1))
    } >>"$FLEET_RESULTS"
    stop_fleet
}

# fleet_value KEY: a value run_fleet recorded.
fleet_value() {
    awk -v k="$1" '$1 == k {$1 = ""; sub(/^ /, ""); print}' "$FLEET_RESULTS"
}

# fleet_report: the side-by-side table with the targets.  Wake-ups: one keepalive round
# (timer, PINGREQ out, PINGRESP in, a hand-off between the runtime's threads) costs ~5 context
# switches here, so the target "no wake-ups beyond the MQTT keepalive" is read as at most 6
# per keepalive in the window; any periodic timer of its own (even one a second) would add
# one switch per tick and show far above that.
fleet_report() {
    local v verdict
    verdict() { if awk "BEGIN {exit !($1)}"; then echo PASS; else echo MISS; fi; }
    printf '\n== fleet: %s ferry daemons (own device root each), %s MiB from nginx, embedded broker ==\n' \
        "$FLEET_PHONES" "$FLEET_MIB"
    printf 'DescribeTasks at %s/s open loop (ParentTaskId=batch, MaxResults=100); keepalive %s s; agents at nice %s\n\n' \
        "$FLEET_RATE" "$FLEET_KEEPALIVE" "$FLEET_AGENT_NICE"
    local sf fl fs p50 p99 hwm rss_med rss_max hwm_med hwm_max wk ka
    sf="$(fleet_value sendfile_ms)"
    fl="$(fleet_value floor_s)"
    fs="$(fleet_value fleet_s)"
    p50="$(fleet_value describe_p50_ms)"
    p99="$(fleet_value describe_p99_ms)"
    hwm="$(fleet_value ctl_hwm_kib)"
    rss_med="$(fleet_value agent_rss_median_kib)"
    rss_max="$(fleet_value agent_rss_max_kib)"
    hwm_med="$(fleet_value agent_hwm_median_kib)"
    hwm_max="$(fleet_value agent_hwm_max_kib)"
    wk="$(fleet_value agent_wakeups_max)"
    ka="$(fleet_value keepalives)"
    local fmt='%-40s %-22s %-22s %s\n'
    # shellcheck disable=SC2059
    {
        printf "$fmt" measure got target verdict
        printf "$fmt" "SendFile answer ($FLEET_PHONES phones)" "$sf ms" "<= 200 ms" "$(verdict "$sf <= 200")"
        printf "$fmt" "floor: local API, all SUCCESS" "$fl s" "-" ""
        printf "$fmt" "fleet: SendFile to all FINISHED" "$fs s" "<= 1.5 x floor" "$(verdict "$fs <= 1.5 * $fl")"
        printf "$fmt" "  fleet / floor" "$(awk -v a="$fs" -v b="$fl" 'BEGIN {printf "%.2f", a / b}')" "<= 1.50" ""
        printf "$fmt" "DescribeTasks p50 / p99" "$p50 / $p99 ms" "p99 <= 50 ms" "$(verdict "$p99 <= 50")"
        printf "$fmt" "  requests / errors / max" "$(fleet_value describe_n) / $(fleet_value describe_errors) / $(fleet_value describe_max_ms) ms" "" ""
        printf "$fmt" "controller peak RSS (VmHWM)" "$(awk -v k="$hwm" 'BEGIN {printf "%.1f MiB", k / 1024}')" "<= 64 MiB" "$(verdict "$hwm <= 65536")"
        printf "$fmt" "controller CPU, fleet run / total" "$(fleet_value ctl_cpu_run_s) / $(fleet_value ctl_cpu_total_s) s" "-" ""
        printf "$fmt" "idle agent VmRSS median / max" "$(awk -v a="$rss_med" -v b="$rss_max" 'BEGIN {printf "%.1f / %.1f MiB", a / 1024, b / 1024}')" "<= 8 MiB" "$(verdict "$rss_max <= 8192")"
        printf "$fmt" "  of it RssAnon (own, not shared)" "$(awk -v a="$(fleet_value agent_anon_median_kib)" -v b="$(fleet_value agent_anon_max_kib)" 'BEGIN {printf "%.1f / %.1f MiB", a / 1024, b / 1024}')" "" ""
        printf "$fmt" "  PSS median (shared pages split)" "$(awk -v a="$(fleet_value agent_pss_median_kib)" 'BEGIN {printf "%.1f MiB", a / 1024}')" "" ""
        printf "$fmt" "agent VmHWM median / max" "$(awk -v a="$hwm_med" -v b="$hwm_max" 'BEGIN {printf "%.1f / %.1f MiB", a / 1024, b / 1024}')" "-" ""
        printf "$fmt" "idle agent wake-ups / ${FLEET_IDLE_SECS} s (max of $FLEET_WATCH)" "$wk ($(fleet_value agent_wakeups| xargs | tr ' ' ','))" "<= 6 x $ka keepalives" "$(verdict "$wk <= 6 * $ka")"
    }
}
