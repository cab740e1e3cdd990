# Shared by scripts/demo and scripts/soak (source it): mediagate and sipp run in the lab of
# scripts/lab with prefix $P, their logs in $WORK, mediagate's status on $STATUS_URL inside
# ${P}mg. Processes are stopped by the PIDs these functions record (MG_PID, and the sipp
# PIDs the callers keep), never by name.

STATUS_URL=${STATUS_URL:-http://127.0.0.1:9100/status}
MG_PID=

# GET /status of the mediagate in ${P}mg.
lab_status() { ip netns exec "${P}mg" curl -s -m 2 --fail "$STATUS_URL"; }

# Starts mediagate BIN with CONFIG in ${P}mg (log: $WORK/mediagate.log) and waits up to 10 s
# for /status to answer. Sets MG_PID.
lab_start_mediagate() {
    local bin=$1 config=$2 i
    ip netns exec "${P}mg" "$bin" --config "$config" </dev/null >"$WORK/mediagate.log" 2>&1 &
    MG_PID=$!
    for i in $(seq 1 100); do
        lab_status >/dev/null 2>&1 && return 0
        if ! kill -0 "$MG_PID" 2>/dev/null; then
            echo "mediagate exited:" >&2
            tail -20 "$WORK/mediagate.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "mediagate's /status did not answer within 10 s" >&2
    return 1
}

# Stops mediagate with SIGINT (SIGTERM would give calls a grace period), KILL after 5 s.
lab_stop_mediagate() {
    [[ -n $MG_PID ]] && kill -0 "$MG_PID" 2>/dev/null || return 0
    kill -INT "$MG_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$MG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$MG_PID" 2>/dev/null || true
}

# Kills sipp runs started as `timeout ... sipp` (timeout(1) leads its own process group).
lab_kill_sipp() {
    local pid
    for pid in "$@"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}

# The last value of column COL of a sipp -trace_stat FILE ("?" when absent).
lab_sipp_stat() {
    awk -F';' -v col="$2" 'NR==1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
                           c { v = $c } END { print (v == "" ? "?" : v) }' "$1" 2>/dev/null || echo "?"
}

# Waits up to SECONDS for /status to show no calls and every media port free; the final
# status is left in FILE.
lab_wait_idle() {
    local seconds=$1 file=$2
    for _ in $(seq 1 $((seconds * 10))); do
        lab_status >"$file" 2>/dev/null || true
        jq -e '.active_calls == 0 and (.calls | length) == 0 and .ports.free == .ports.total' \
            "$file" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
