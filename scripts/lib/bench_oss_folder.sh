# shellcheck shell=bash
# Part oss-folder of scripts/bench.sh: how much `ferry daemon` writes to disk while it lands
# a folder of FOLDER_OBJECTS (3,000) small objects from s3s-fs, against the data's own size.
# Each landed object once made the daemon rewrite and fsync the whole task record, which
# listed every object so far (3,000 objects: 2.75 GB written); now it appends one line to the
# task's landed log.  Measured: write_bytes of /proc/PID/io of the daemon (page-cache pages
# it dirtied, i.e. what goes to the disk; wchar would count socket and stderr writes too)
# from just before the submit to SUCCESS.  Objects are FOLDER_OBJECT_BYTES (4096, one page,
# so the data size is also what the data files cost in pages).  Target: <= data + 1 MiB.
# Creating a file costs a filesystem more than its data (ext4: a share of an inode table
# block, 0.3 to 1 MiB more per 1,000 files here, not the same every time), so the floor is
# printed too: the write_bytes of landing the same files the way ferry does (write, fsync,
# rename, folder fsync) from a minimal Python writer, measured just before.  Also printed: the daemon's wall time and CPU.  Source after bench.sh's
# helpers; needs FERRY, RUN_DIR, SYS, S3_* and S3S_FS_PORT from scripts/bench.sh.

FOLDER_OBJECTS="${FOLDER_OBJECTS:-3000}"
FOLDER_OBJECT_BYTES="${FOLDER_OBJECT_BYTES:-4096}"
FOLDER_PREFIX="folder/"
FOLDER_RESULTS=""
FOLDER_FLOOR=0
FOLDER_DAEMON_PID=""

# folder_objects_put ROOT BUCKET: FOLDER_OBJECTS random objects under FOLDER_PREFIX (ten
# sub-folders), laid out as s3s-fs keeps them (see s3s_fs_put), with their MD5 as ETag.
folder_objects_put() {
    local root="$1" bucket="$2"
    python3 - "$root" "$bucket" "$FOLDER_PREFIX" "$FOLDER_OBJECTS" "$FOLDER_OBJECT_BYTES" <<'PY'
import base64, hashlib, json, os, sys
root, bucket, prefix, count, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
b64 = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
for i in range(count):
    key = f"{prefix}d{i % 10}/f{i:05}.bin"
    data = os.urandom(size)
    path = os.path.join(root, bucket, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    info = os.path.join(root, f".bucket-{b64(bucket)}.object-{b64(key)}.internal.json")
    with open(info, "w") as f:
        json.dump({"e_tag": hashlib.md5(data).hexdigest()}, f)
PY
}

stop_folder_daemon() {
    if [[ -n "$FOLDER_DAEMON_PID" ]] && kill -0 "$FOLDER_DAEMON_PID" 2>/dev/null; then
        kill -TERM "$FOLDER_DAEMON_PID" 2>/dev/null || true
        wait "$FOLDER_DAEMON_PID" 2>/dev/null || true
    fi
    FOLDER_DAEMON_PID=""
}

# proc_io PID FIELD: one counter of /proc/PID/io.
proc_io() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/io"; }

# proc_cpu_ticks PID: utime + stime of the process, in clock ticks.
proc_cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_oss_folder() {
    local dev="$RUN_DIR/folder-dev" state="$RUN_DIR/folder-state" log="$RUN_DIR/folder-daemon.log"
    local payload="$RUN_DIR/folder.json" _ api addr token before cpu0 t0 t1 written cpu phase view
    rm -rf "$dev" "$state"
    mkdir -p "$dev/sdcard/Download" "$state"
    cat >"$payload" <<JSON
{"TaskId": "bench-folder", "UploadType": "OSS", "SourceFilePath": "/sdcard/Download/folder",
 "UploadUrl": "oss://$S3_BUCKET/$FOLDER_PREFIX", "UploadEndpoint": "http://oss.test:$S3S_FS_PORT",
 "Credentials": {"AccessKeyId": "$S3_AK", "AccessKeySecret": "$S3_SK"}}
JSON
    # The floor first: on a filesystem region fresh to both, the first writer may pay more.
    FOLDER_FLOOR="$(folder_floor "$RUN_DIR/s3/$S3_BUCKET/${FOLDER_PREFIX%/}" "$RUN_DIR/folder-floor")"
    log "oss-folder: $FOLDER_OBJECTS objects of $FOLDER_OBJECT_BYTES bytes through ferry daemon"
    # error: the daemon's stderr is a file on disk, and a line per object would count (this
    # machine has no `am`: every media scan warns).
    "$FERRY" --device-root "$dev" --system-root "$SYS" --state-dir "$state" --log-level error \
        daemon --listen 127.0.0.1:0 2>"$log" &
    FOLDER_DAEMON_PID=$!
    api="$state/api.json"
    for _ in $(seq 100); do
        [[ -s "$api" ]] && break
        kill -0 "$FOLDER_DAEMON_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -s "$api" ]] || { cat "$log" >&2; die "oss-folder: the daemon did not start"; }
    addr="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Listen"])' "$api")"
    token="$(tr -d '\n' <"$state/token")"
    sync
    before="$(proc_io "$FOLDER_DAEMON_PID" write_bytes)"
    cpu0="$(proc_cpu_ticks "$FOLDER_DAEMON_PID")"
    t0="$EPOCHREALTIME"
    curl -sSf -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data-binary "@$payload" "http://$addr/v1/tasks" || die "oss-folder: submit failed"
    phase=""
    while :; do
        view="$(curl -sSf -H "Authorization: Bearer $token" "http://$addr/v1/tasks/bench-folder")"
        phase="$(printf '%s' "$view" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Phase"])')"
        [[ "$phase" == PENDING || "$phase" == RUNNING ]] || break
        sleep 0.05
    done
    t1="$EPOCHREALTIME"
    written=$(($(proc_io "$FOLDER_DAEMON_PID" write_bytes) - before))
    cpu=$(($(proc_cpu_ticks "$FOLDER_DAEMON_PID") - cpu0))
    stop_folder_daemon
    [[ "$phase" == SUCCESS ]] || die "oss-folder: the task ended $phase: $view"
    local got
    got="$(find "$dev/sdcard/Download/folder" -type f -name '*.bin' | wc -l)"
    [[ "$got" == "$FOLDER_OBJECTS" ]] || die "oss-folder: $got files landed, expected $FOLDER_OBJECTS"
    FOLDER_RESULTS="$(awk -v w="$written" -v c="$cpu" -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t1" \
        'BEGIN {printf "%d %.3f %.2f", w, b - a, c / hz}')"
    log "oss-folder: $FOLDER_RESULTS (write_bytes wall_s cpu_s)"
}

# folder_floor SRC DEST: write_bytes of landing SRC's files again under DEST as ferry lands
# them (staging file written and fsync'd, renamed, folder fsync'd), by a minimal writer.
folder_floor() {
    python3 - "$1" "$2" <<'PY'
import os, sys
src, dest = sys.argv[1], sys.argv[2]
def wb():
    with open("/proc/self/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("write_bytes"))
files = sorted(os.path.relpath(os.path.join(d, n), src) for d, _, ns in os.walk(src) for n in ns)
blobs = [open(os.path.join(src, f), "rb").read() for f in files]
before = wb()
for rel, data in zip(files, blobs):
    folder = os.path.join(dest, os.path.dirname(rel))
    os.makedirs(folder, exist_ok=True)
    stage = os.path.join(folder, ".stage")
    fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(stage, os.path.join(dest, rel))
    dfd = os.open(folder, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
print(wb() - before)
PY
}

oss_folder_report() {
    local data=$((FOLDER_OBJECTS * FOLDER_OBJECT_BYTES)) written wall cpu
    read -r written wall cpu <<<"$FOLDER_RESULTS"
    printf '\n== oss-folder: %s objects of %s bytes on s3s-fs through ferry daemon ==\n' \
        "$FOLDER_OBJECTS" "$FOLDER_OBJECT_BYTES"
    awk -v w="$written" -v d="$data" -v f="$FOLDER_FLOOR" -v wall="$wall" -v cpu="$cpu" 'BEGIN {
        printf "daemon write volume (/proc/PID/io write_bytes) %.2f MiB for %.2f MiB of data: %.2f MiB over (target <= data + 1 MiB: %s)\n",
            w / 1048576, d / 1048576, (w - d) / 1048576, (w <= d + 1048576 ? "met" : "MISSED")
        printf "floor: the same files landed by a minimal writer (write, fsync, rename, folder fsync) %.2f MiB; ferry %.2f MiB over it\n",
            f / 1048576, (w - f) / 1048576
        printf "daemon wall %.2f s, cpu %.2f s for the folder\n", wall, cpu
    }'
}
