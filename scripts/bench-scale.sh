#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# bench-scale.sh: how many devices and streams one hub carries, and what
# each costs it (issue 6; docs/scale-benchmarks.md). Not part of
# scripts/test.sh or CI: it measures, it does not assert.
#
# Rows, each against its own fresh hub (127.0.0.1, a port the kernel picks,
# its own data directory, limits raised on the command line):
#
#   devices  scaletool devices: --devices simulated idle devices (real
#            hubclient.DeviceClients in one process) connect; the hub's RSS
#            and Go live heap per device; then the hub is restarted
#            (SIGTERM, same data dir and port) and the tool times the fleet
#            coming back and counts its failed attempts.
#   streams  scaletool streams: --streams concurrent TCP connections to a
#            dsproxy service port, each a stream through the hub and a
#            dsproxy device to an echo target, echo a few bytes once and
#            stay open; the hub's, the service proxy's and the device
#            proxy's memory per stream. Once per service --mode in --modes
#            (session: over the proxies' held sessions; per-stream: a
#            WebSocket per side and stream; "default": no --mode flag).
#            A mode whose streams do not fit in ulimit -n is measured with
#            as many as fit, and so are the devices.
#
# The Markdown table goes to stdout; progress and logs to stderr.
#
# It measures the committed HEAD of this checkout (exported with git archive
# and built in the work directory), so that uncommitted changes in the tree
# do not end up in the figures; --worktree builds the tree as it is.
#
# Usage: scripts/bench-scale.sh [--devices N] [--streams N] [--quick]
#                               [--only devices|streams] [--no-restart]
#                               [--modes session,per-stream]
#                               [--worktree] [--profile] [--gc-wait DURATION]
#                               [--min-backoff DURATION] [--sim-gogc N]
#                               [--json FILE]
# --sim-gogc N: the simulator's GOGC during the restart (scaletool's
# --restart-gogc; default 400, -1 leaves Go's 100): the simulated fleet
# shares one heap, which real devices do not.
# Environment:
#   DSPROXY_BIN   the dsproxy binary to measure (default: built from HEAD)
#   SCALETOOL_BIN the scaletool binary (default: built from HEAD): the
#                 simulated devices' hubclient, and the hub of --profile
#   E2E_KEEP=1    keep the work directory (its path is printed)
#
# --profile runs the hub as `scaletool hub` (the same hub package in the
# tool's process, with net/http/pprof on another loopback port) and keeps
# its heap profiles (after a GC) and goroutines before and after each row
# in JSON_FILE's name with -profiles instead of .json; with the restart,
# also CPU profiles of the restarted hub (hub-restart.cpu, from its start
# until it stops) and of the simulator (simulator-restart.cpu, from the
# ready file until the fleet is back).
#
# Needs: bash, coreutils, Go, curl or a bash with /dev/tcp, python3 or perl
# (free ports), and a hard `ulimit -n` above both counts (the hub holds one
# descriptor per device, two per stream).
set -euo pipefail

DEVICES=20000
STREAMS=10000
MODES=session,per-stream
GC_WAIT=130s
ONLY=
RESTART=1
WORKTREE=
PROFILE=
MIN_BACKOFF=
SIM_GOGC=
JSON_OUT=bench-scale-results.json

usage() {
	sed -n '/^# Usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
while (($# > 0)); do
	case $1 in
	--devices) DEVICES=${2:?}; shift 2 ;;
	--streams) STREAMS=${2:?}; shift 2 ;;
	--modes) MODES=${2:?}; shift 2 ;;
	--quick) DEVICES=500 STREAMS=300 GC_WAIT=5s; shift ;;
	--only) ONLY=${2:?}; shift 2 ;;
	--no-restart) RESTART=; shift ;;
	--worktree) WORKTREE=1; shift ;;
	--profile) PROFILE=1; shift ;;
	--gc-wait) GC_WAIT=${2:?}; shift 2 ;;
	--min-backoff) MIN_BACKOFF=${2:?}; shift 2 ;;
	--sim-gogc) SIM_GOGC=${2:?}; shift 2 ;;
	--json) JSON_OUT=${2:?}; shift 2 ;;
	-h | --help) usage ;;
	*) printf 'bench-scale: unknown argument %q\n' "$1" >&2; usage ;;
	esac
done
[[ $DEVICES =~ ^[1-9][0-9]*$ ]] || { echo "bench-scale: --devices $DEVICES: want a positive number" >&2; exit 2; }
[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || { echo "bench-scale: --streams $STREAMS: want a positive number" >&2; exit 2; }
case $ONLY in
'') ROWS=(devices streams) ;;
devices | streams) ROWS=("$ONLY") ;;
*) echo "bench-scale: --only $ONLY: want devices or streams" >&2; exit 2 ;;
esac
case $JSON_OUT in /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac

# The table is the only thing on stdout: keep it on fd 3, send the rest
# (the e2e helpers log to stdout) to stderr.
exec 3>&1 1>&2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-bench-scale.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"

E2E_NAME=bench-scale
# shellcheck source=scripts/lib/e2e.sh
source "$ROOT/scripts/lib/e2e.sh"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	finish "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

want_row() { [[ " ${ROWS[*]} " == *" $1 "* ]]; }

# Every process here inherits the hard limit on open files. The hub holds
# one descriptor per device and two per stream, and so does each proxy per
# stream; a few dozen more go to listeners, the registry and logs.
ulimit -n "$(ulimit -Hn)"
FILES=$(ulimit -n)
log "open files limit (ulimit -n): $FILES"
if want_row devices && ((DEVICES + 100 > FILES)); then
	log "WARN: $DEVICES devices need ulimit -n above $((DEVICES + 100)), the hard limit is $FILES (raise it: limits.conf, systemd LimitNOFILE, docker --ulimit nofile=): measuring $((FILES - 100))"
	DEVICES=$((FILES - 100))
fi

measured_source # sets SRC and COMMIT
if [[ -z ${SCALETOOL_BIN:-} ]]; then
	ST=$WORK/scaletool
	log "building scaletool: go build -o $ST ./scripts/scaletool"
	(cd "$SRC" && go build -o "$ST" ./scripts/scaletool) || die "go build ./scripts/scaletool failed"
else
	ST=$SCALETOOL_BIN
	COMMIT="$COMMIT (SCALETOOL_BIN=$ST)"
fi
if [[ -z ${DSPROXY_BIN:-} ]]; then
	log "building dsproxy: go build -o $WORK/dsproxy ./cmd/dsproxy"
	(cd "$SRC" && go build -o "$WORK/dsproxy" ./cmd/dsproxy) || die "go build ./cmd/dsproxy failed"
	DSPROXY_BIN=$WORK/dsproxy
else
	COMMIT="$COMMIT (DSPROXY_BIN=$DSPROXY_BIN)"
fi
use_binary

# HUB_BIN runs the hub: dsproxy hub, or with --profile scaletool hub.
HUB_BIN=$BIN
PROFILE_ARGS=()
if [[ -n $PROFILE ]]; then
	HUB_BIN=$WORK/hub-profiled
	printf '#!/bin/sh\nexec %q "$@"\n' "$ST" >"$HUB_BIN"
	chmod +x "$HUB_BIN"
	PROFILE_DIR=${JSON_OUT%.json}-profiles
	mkdir -p "$PROFILE_DIR"
	log "profiling: the hub runs as scaletool hub; profiles go to $PROFILE_DIR"
fi
# start_scale_hub NAME DIR FLAGS...: start_hub with HUB_BIN.
start_scale_hub() {
	local bin=$BIN rc=0
	BIN=$HUB_BIN
	start_hub "$@" || rc=$?
	BIN=$bin
	return "$rc"
}

# ---------------------------------------------------------------- devices

DEVICES_JSON=
if want_row devices; then
	HUB_DIR=$WORK/hub-devices
	# Short grace: idle devices have no streams to drain.
	HUB_FLAGS=(--shutdown-grace 1s --log-format json)
	start_scale_hub dsproxy-hub-devices "$HUB_DIR" 127.0.0.1 "${HUB_FLAGS[@]}" || die "dsproxy hub did not start"
	DEV_HUB_PORT=$HUB_PORT
	echo "${PROC_PID[$HUB_NAME]}" >"$WORK/hub.pid"
	DEVICES_JSON=$WORK/devices.json
	ARGS=(devices --hub-cs "$HUB_DIR/iothubowner.connection-string" --ca-file "$HUB_DIR/tls/ca.pem"
		--n "$DEVICES" --hub-pid-file "$WORK/hub.pid" --gc-wait "$GC_WAIT")
	[[ -z $PROFILE ]] || ARGS+=(--hub-data-dir "$HUB_DIR" --profile-dir "$PROFILE_DIR")
	[[ -z $PROFILE || -z $RESTART ]] || ARGS+=(--cpu-profile "$PROFILE_DIR/simulator-restart.cpu")
	[[ -z $MIN_BACKOFF ]] || ARGS+=(--min-backoff "$MIN_BACKOFF")
	[[ -z $SIM_GOGC ]] || ARGS+=(--restart-gogc "$SIM_GOGC")
	if [[ -n $RESTART ]]; then
		ARGS+=(--restart --ready-file "$WORK/ready" --hub-exited-file "$WORK/hub-exited" --hub-started-file "$WORK/hub-started")
	fi
	log "scaletool ${ARGS[*]}"
	"$ST" "${ARGS[@]}" >"$DEVICES_JSON" 2>"$LOGS/scaletool-devices.log" &
	SIM=$!
	PROC_NAMES+=(scaletool-devices)
	PROC_PIDS+=("$SIM")
	if [[ -n $RESTART ]]; then
		# The fleet is connected and measured: restart the hub as an
		# operator would (SIGTERM, then the same command again).
		while [[ ! -e $WORK/ready ]]; do
			alive "$SIM" || die "scaletool devices failed: $(tail -n 5 "$LOGS/scaletool-devices.log")"
			sleep 0.5
		done
		log "restarting the hub (SIGTERM, same data dir and port $DEV_HUB_PORT)"
		# Closing thousands of sessions takes the hub a few seconds: give it
		# a minute (stop_proc gives 5 s), as an init system would.
		pid=${PROC_PID[$HUB_NAME]} t0=$(now_ns)
		kill -TERM "$pid"
		while alive "$pid" && (($(now_ns) - t0 < 60000000000)); do sleep 0.05; done
		alive "$pid" && die "the hub did not stop within 60 s of SIGTERM"
		wait "$pid" || log "the hub exited $? on SIGTERM"
		log "the hub stopped $(secs_since "$t0") s after SIGTERM"
		now_ns >"$WORK/hub-exited"
		now_ns >"$WORK/hub-started"
		RESTARTED_FLAGS=("${HUB_FLAGS[@]}")
		[[ -z $PROFILE ]] || RESTARTED_FLAGS+=(--cpu-profile "$PROFILE_DIR/hub-restart.cpu")
		start dsproxy-hub-devices-restarted "$HUB_BIN" hub --listen "127.0.0.1:$DEV_HUB_PORT" --hostname 127.0.0.1 \
			--data-dir "$HUB_DIR" "${RESTARTED_FLAGS[@]}"
		echo "${PROC_PID[dsproxy-hub-devices-restarted]}" >"$WORK/hub.pid"
	fi
	SIM_RC=0
	wait "$SIM" || SIM_RC=$?
	cat "$LOGS/scaletool-devices.log" >&2
	((SIM_RC == 0)) || die "scaletool devices failed (exit $SIM_RC)"
	pass "devices row: $DEVICES devices"
	# The fleet is gone; stop its hub before the next row.
	if [[ -n $RESTART ]]; then
		stop_proc dsproxy-hub-devices-restarted "${PROC_PID[dsproxy-hub-devices-restarted]}" || true
	else
		stop_proc "$HUB_NAME" "${PROC_PID[$HUB_NAME]}" || true
	fi
fi

# ---------------------------------------------------------------- streams

# run_streams MODE: the streams row with dsproxy service --mode MODE
# ("default": without --mode, for binaries that predate it), each mode
# against its own fresh hub, device and service proxy. Appends the JSON
# file to STREAMS_JSONS.
STREAMS_JSONS=()
run_streams() {
	local mode=$1 n=$STREAMS fds=2 dir name p attempt svc_name rc=0
	local -a mode_flag=()
	[[ $mode == default ]] || mode_flag=(--mode "$mode")
	# A per-stream stream holds two descriptors in the hub (a WebSocket per
	# side) and in the service proxy; over a session, one in the service
	# proxy and none in the hub.
	[[ $mode == session ]] && fds=1
	if ((fds * n + 100 > FILES)); then
		n=$(((FILES - 100) / fds))
		log "WARN: $mode mode: $STREAMS streams need ulimit -n above $((fds * STREAMS + 100)), the hard limit is $FILES: measuring $n"
	fi
	dir=$WORK/hub-streams-$mode
	# Limits raised so that only memory and descriptors bound the row: all
	# streams go to one device, and the tool opens them as fast as it can.
	start_scale_hub "dsproxy-hub-$mode" "$dir" 127.0.0.1 --log-format json --shutdown-grace 1s \
		--max-streams "$n" --max-streams-per-device "$n" --max-pending-handshakes 4096 \
		--stream-rate 100000 --stream-burst 100000 || die "dsproxy hub did not start"
	local hub_name=$HUB_NAME hub_port=$HUB_PORT ca=$dir/tls/ca.pem
	local -a client=(--connection-string-file "$dir/iothubowner.connection-string" --ca-file "$ca")
	start "echo-$mode" "$ST" echo --listen 127.0.0.1:0
	wait_for "scaletool echo" 10 "echo-$mode" test -s "$LOGS/echo-$mode.out" || die "scaletool echo did not start"
	local echo_addr dev_cs
	echo_addr=$(head -n 1 "$LOGS/echo-$mode.out")
	dev_cs=$("$BIN" devices add "${client[@]}" scale-streams 2>"$LOGS/devices-cli.log") || die "dsproxy devices add failed"
	(umask 077 && printf '%s\n' "$dev_cs" >"$WORK/device-$mode.cs")
	device_connected() {
		"$BIN" devices show --json "$@" scale-streams 2>>"$LOGS/devices-cli.log" | grep -q '"connectionState": *"Connected"'
	}
	start "dsproxy-device-$mode" "$BIN" device --connection-string-file "$WORK/device-$mode.cs" --ca-file "$ca" \
		--target "echo=$echo_addr" --log-format json --log-level warn
	wait_for "device connected" 20 "dsproxy-device-$mode" device_connected "${client[@]}" || die "dsproxy device did not connect"
	svc_name=
	for attempt in 1 2 3 4 5; do
		p=$(free_port)
		name=dsproxy-service-$mode-$attempt
		start "$name" "$BIN" service "${client[@]}" --device-id scale-streams "${mode_flag[@]}" \
			--forward "127.0.0.1:$p=echo" --log-format json --log-level warn
		if wait_for "service on port $p" 15 "$name" port_open "$p"; then
			svc_name=$name
			break
		fi
		bind_failed "$name" || die "dsproxy service did not start"
	done
	[[ -n $svc_name ]] || die "service: no free port after 5 attempts"
	local out=$WORK/streams-$mode.json
	local -a args=(streams --mode "$mode" --addr "127.0.0.1:$p" --n "$n" --hub "127.0.0.1:$hub_port" --ca-file "$ca"
		--hub-pid "${PROC_PID[$hub_name]}" --service-pid "${PROC_PID[$svc_name]}"
		--device-pid "${PROC_PID[dsproxy-device-$mode]}" --gc-wait "$GC_WAIT")
	[[ -z $PROFILE ]] || args+=(--hub-data-dir "$dir" --profile-dir "$PROFILE_DIR")
	log "scaletool ${args[*]}"
	"$ST" "${args[@]}" >"$out" 2>"$LOGS/scaletool-streams-$mode.log" || rc=$?
	cat "$LOGS/scaletool-streams-$mode.log" >&2
	((rc == 0)) || die "scaletool streams ($mode) failed (exit $rc)"
	pass "streams row, $mode mode: $n streams"
	STREAMS_JSONS+=("$out")
	# The streams have drained (the tool waits for that): stop this mode's
	# processes before the next one.
	stop_proc "$svc_name" "${PROC_PID[$svc_name]}" || fail "$svc_name did not stop within 5 s of SIGTERM"
	stop_proc "dsproxy-device-$mode" "${PROC_PID[dsproxy-device-$mode]}" || fail "dsproxy-device-$mode did not stop within 5 s of SIGTERM"
	stop_proc "$hub_name" "${PROC_PID[$hub_name]}" || fail "$hub_name did not stop within 5 s of SIGTERM"
	stop_proc "echo-$mode" "${PROC_PID[echo-$mode]}" || true
}

if want_row streams; then
	IFS=, read -r -a MODE_LIST <<<"$MODES"
	for mode in "${MODE_LIST[@]}"; do run_streams "$mode"; done
fi

# ---------------------------------------------------------------- table

TABLE_ARGS=(table --json "$JSON_OUT" --go "$(go version | sed 's/^go version //')" --commit "$COMMIT")
[[ -z $DEVICES_JSON ]] || TABLE_ARGS+=(--devices "$DEVICES_JSON")
for f in "${STREAMS_JSONS[@]}"; do TABLE_ARGS+=(--streams "$f"); done
"$ST" "${TABLE_ARGS[@]}" >&3 || die "scaletool table failed"
log "raw results in $JSON_OUT"
