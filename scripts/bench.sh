#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# bench.sh: dsproxy against the alternatives, on loopback, in one run
# (issue 6; docs/benchmarks.md). Not part of scripts/test.sh or CI: it
# measures, it does not assert.
#
# Everything runs on 127.0.0.1 (the rtt row: in a network namespace of its
# own, joined by a link with an added round trip), in a temporary work
# directory that is removed on exit, together with every process the script
# started and the namespace:
#
#   targets          benchtool sink, source, echo, hold; iperf3 -s
#   direct           the targets themselves: the physical limit
#   ssh              ssh -N -L through a private sshd, -c aes128-gcm@openssh.com
#   dsproxy          dsproxy service --mode per-stream → hub → device, TLS on
#                    both legs, three processes (no --mode when the binary has none)
#   dsproxy-session  the same with dsproxy service --mode session (only when
#                    dsproxy service --help lists --mode)
#
# Rows (--only takes a comma-separated list; "throughput" is
# upload,download,parallel):
#   upload          one stream, --bytes to a sink: Gbit/s, CPU-s per GB
#   download        one stream, --bytes from a source: Gbit/s, CPU-s per GB
#   parallel        4 streams, --bytes in all to a sink: Gbit/s, CPU-s per GB
#   iperf3          iperf3 -c, -c -R, -c -P 4 for --iperf3-time each
#   setup           --conns sequential dial, echo 1 byte, close: p50/p90/p99,
#                   CPU-ms per setup
#   setup-parallel  --clients loops of the same for --parallel-time: setups/s,
#                   p50/p99, CPU-ms per setup
#   stall           stream B (--stall-bytes) alone and beside a stream A
#                   whose reader stopped, --stall-pairs times, upload and
#                   download: Gbit/s, ratio
#   rtt             --rtt-conns setups over a link with --rtt-ms round trip:
#                   ms and RTTs (root, ip, and netem or /dev/net/tun)
# Each path in every round; the path order is reversed every other round.
#
# The Markdown table goes to stdout; progress and logs to stderr.
#
# It measures the committed HEAD of this checkout (exported with git archive
# and built in the work directory), so that uncommitted changes in the tree
# do not end up in the figures; --worktree builds the tree as it is.
#
# Usage: scripts/bench.sh [--quick] [--worktree] [--perf] [--rounds N] [--only ROWS] [--paths PATHS]
#                         [--bytes SIZE] [--stall-bytes SIZE] [--stall-pairs N] [--conns N]
#                         [--iperf3-time SECS] [--clients N] [--parallel-time SECS]
#                         [--rtt-ms MS] [--rtt-conns N] [--json FILE]
#   --quick     a smoke run: 1 round and small sizes (options after it still apply)
#   --worktree  build the working tree as it is instead of a clean export of HEAD
#   --perf      sample the tunnel processes with Linux perf during the upload,
#               download and parallel runs, and split their CPU-s per GB into
#               the kernel, the cipher and the rest of user space (needs perf,
#               and root or kernel.perf_event_paranoid <= 1)
# Environment:
#   DSPROXY_BIN   the dsproxy binary to measure (default: built from HEAD)
#   E2E_KEEP=1    keep the work directory (its path is printed)
#
# Needs: bash, coreutils, Go, OpenSSH (sshd, ssh, ssh-keygen) for the ssh path,
# python3 or perl to ask the kernel for free ports; iperf3 for the iperf3
# row (installed with apt-get when missing and root); root and iproute2 for
# the rtt row; perf and root for --perf. A row whose tools are missing is
# skipped with a note; --perf without perf stops the run.
set -euo pipefail

ALL_ROWS=(upload download parallel iperf3 setup setup-parallel stall rtt)
ROUNDS=3
BYTES=1GiB
STALL_BYTES=256MiB
STALL_PAIRS=3
CONNS=1000
IPERF3_TIME=3
CLIENTS=64
PARALLEL_TIME=5
RTT_MS=50
RTT_CONNS=20
ONLY=
PATHS=
JSON_OUT=bench-results.json
WORKTREE=
PERF=

usage() {
	sed -n '/^# Usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
while (($# > 0)); do
	case $1 in
	--quick) ROUNDS=1 BYTES=128MiB STALL_BYTES=64MiB STALL_PAIRS=1 CONNS=200 IPERF3_TIME=1 PARALLEL_TIME=1 RTT_CONNS=5; shift ;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--bytes) BYTES=${2:?}; shift 2 ;;
	--stall-bytes) STALL_BYTES=${2:?}; shift 2 ;;
	--stall-pairs) STALL_PAIRS=${2:?}; shift 2 ;;
	--conns) CONNS=${2:?}; shift 2 ;;
	--iperf3-time) IPERF3_TIME=${2:?}; shift 2 ;;
	--clients) CLIENTS=${2:?}; shift 2 ;;
	--parallel-time) PARALLEL_TIME=${2:?}; shift 2 ;;
	--rtt-ms) RTT_MS=${2:?}; shift 2 ;;
	--rtt-conns) RTT_CONNS=${2:?}; shift 2 ;;
	--only) ONLY=${2:?}; shift 2 ;;
	--paths) PATHS=${2:?}; shift 2 ;;
	--json) JSON_OUT=${2:?}; shift 2 ;;
	--worktree) WORKTREE=1; shift ;;
	--perf) PERF=1; shift ;;
	-h | --help) usage ;;
	*) printf 'bench: unknown argument %q\n' "$1" >&2; usage ;;
	esac
done
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "bench: $1 $2: want a positive whole number" >&2; exit 2; }; }
positive --rounds "$ROUNDS"
positive --conns "$CONNS"
positive --stall-pairs "$STALL_PAIRS"
positive --iperf3-time "$IPERF3_TIME"
positive --clients "$CLIENTS"
positive --parallel-time "$PARALLEL_TIME"
positive --rtt-ms "$RTT_MS"
positive --rtt-conns "$RTT_CONNS"

ROWS=()
if [[ -z $ONLY ]]; then
	ROWS=("${ALL_ROWS[@]}")
else
	IFS=, read -r -a only <<<"$ONLY"
	for r in "${only[@]}"; do
		case " throughput ${ALL_ROWS[*]} " in
		*" $r "*) ;;
		*) echo "bench: --only: unknown row $r (want throughput or ${ALL_ROWS[*]})" >&2; exit 2 ;;
		esac
		if [[ $r == throughput ]]; then ROWS+=(upload download parallel); else ROWS+=("$r"); fi
	done
fi
want_row() { [[ " ${ROWS[*]} " == *" $1 "* ]]; }
drop_row() {
	local r keep=()
	for r in "${ROWS[@]}"; do [[ $r == "$1" ]] || keep+=("$r"); done
	ROWS=("${keep[@]}")
}
case $JSON_OUT in /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac

# The table is the only thing on stdout: keep it on fd 3, send the rest
# (the e2e helpers log to stdout) to stderr.
exec 3>&1 1>&2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The machine is shared: the load before and after goes into the header.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-bench.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"

E2E_NAME=bench
# shellcheck source=scripts/lib/e2e.sh
source "$ROOT/scripts/lib/e2e.sh"

# The rtt row's namespace and link device, removed by cleanup.
NS= LINK_DEV=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	if [[ -n $NS ]]; then ip netns del "$NS" 2>/dev/null || true; fi
	if [[ -n $LINK_DEV ]] && ip link show "$LINK_DEV" >/dev/null 2>&1; then ip link del "$LINK_DEV" || true; fi
	finish "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NOTES=()
# skip_row ROW WHY: leaves ROW out of the run, loudly, and in the table.
skip_row() {
	printf 'WARN: %s row skipped: %s\n' "$1" "$2"
	NOTES+=("$1 row skipped: $2")
	drop_row "$1"
}

# ---------------------------------------------------------------- tools

measured_source # sets SRC and COMMIT
BT=$WORK/benchtool
log "building benchtool: go build -o $BT ./scripts/benchtool"
(cd "$SRC" && go build -o "$BT" ./scripts/benchtool) || die "go build ./scripts/benchtool failed"
"$BT" size "$BYTES" >/dev/null || die "--bytes $BYTES"
"$BT" size "$STALL_BYTES" >/dev/null || die "--stall-bytes $STALL_BYTES"

# The paths: dsproxy-session only when the binary has service --mode.
MODES=
if [[ -z $PATHS || $PATHS == *dsproxy* ]]; then
	if [[ -z ${DSPROXY_BIN:-} ]]; then
		log "building dsproxy: go build -o $WORK/dsproxy ./cmd/dsproxy"
		(cd "$SRC" && go build -o "$WORK/dsproxy" ./cmd/dsproxy) || die "go build ./cmd/dsproxy failed"
		DSPROXY_BIN=$WORK/dsproxy
	else
		COMMIT="$COMMIT (DSPROXY_BIN=$DSPROXY_BIN)"
	fi
	use_binary
	# Not piped into grep -q: with pipefail, grep exiting at the first match
	# can fail the pipeline with SIGPIPE.
	svc_help=$("$BIN" service --help 2>&1 || true)
	if [[ $svc_help == *--mode* ]]; then MODES=1; fi
elif ! command -v python3 >/dev/null && ! command -v perl >/dev/null; then
	die "need python3 or perl to find free ports"
fi
if [[ -z $PATHS ]]; then
	PATHS=direct,ssh,dsproxy
	if [[ -n $MODES ]]; then PATHS+=,dsproxy-session; else NOTES+=("dsproxy-session path left out: this dsproxy service has no --mode"); fi
fi
IFS=, read -r -a PATH_LIST <<<"$PATHS"
((${#PATH_LIST[@]} > 0)) || { echo "bench: --paths is empty" >&2; exit 2; }
for p in "${PATH_LIST[@]}"; do
	case $p in
	direct | ssh | dsproxy) ;;
	dsproxy-session) [[ -n $MODES ]] || die "--paths: dsproxy-session needs dsproxy service --mode, which $BIN does not have" ;;
	*) die "--paths: unknown path $p (want direct, ssh, dsproxy, dsproxy-session)" ;;
	esac
done
want_path() { [[ ,$PATHS, == *,$1,* ]]; }

if want_path ssh; then
	for tool in sshd ssh ssh-keygen; do
		if ! command -v "$tool" >/dev/null && ! [[ -x /usr/sbin/$tool ]]; then
			die "$tool not found for the ssh path: install OpenSSH (apt-get install -y openssh-server openssh-client) or leave it out with --paths direct,dsproxy"
		fi
	done
fi

if want_row iperf3 && ! command -v iperf3 >/dev/null; then
	if ((EUID == 0)) && command -v apt-get >/dev/null; then
		log "iperf3 is missing: apt-get install -y iperf3"
		DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >"$LOGS/apt-iperf3.log" 2>&1 ||
			log "apt-get install iperf3 failed: $(tail -n 2 "$LOGS/apt-iperf3.log")"
	fi
	command -v iperf3 >/dev/null || skip_row iperf3 "iperf3 is not installed (apt-get install -y iperf3)"
fi

if [[ -n $PERF ]]; then
	command -v perf >/dev/null || die "--perf: perf is not installed (Debian: apt-get install -y linux-perf)"
	perf record -q -a -o "$WORK/perf-check.data" -- true >"$LOGS/perf-check.log" 2>&1 ||
		die "--perf: perf cannot record here (root, or sysctl kernel.perf_event_paranoid=1): $(tail -n 2 "$LOGS/perf-check.log")"
fi

# The rtt row's link: sch_netem on a veth pair when the kernel has it, else
# benchtool's delayed TUN link.
RTT_LINK=
if want_row rtt; then
	if ((EUID != 0)); then
		skip_row rtt "needs root for a network namespace"
	elif ! command -v ip >/dev/null; then
		skip_row rtt "needs ip (iproute2)"
	else
		probe=dsbp$$
		if command -v tc >/dev/null && ip link add "$probe" type veth peer name "${probe}x" 2>/dev/null; then
			if tc qdisc add dev "$probe" root netem delay 1ms 2>/dev/null; then RTT_LINK=netem; fi
			ip link del "$probe" 2>/dev/null || true
		fi
		if [[ -z $RTT_LINK && -c /dev/net/tun ]]; then RTT_LINK=tun; fi
		[[ -n $RTT_LINK ]] || skip_row rtt "needs tc with sch_netem, or /dev/net/tun"
	fi
fi
((${#ROWS[@]} > 0)) || die "no row left to run"
log "rows: ${ROWS[*]}; paths: ${PATH_LIST[*]}"

# ---------------------------------------------------------------- targets

# start_server KIND [HOST]: runs benchtool KIND on HOST (127.0.0.1) and a
# port the kernel picks; sets PORT.
start_server() {
	local name=$1${2:+-far}
	start "$name" "$BT" "$1" --listen "${2:-127.0.0.1}:0"
	wait_for "benchtool $1" 10 "$name" test -s "$LOGS/$name.out" || die "benchtool $1 did not start"
	PORT=$(sed -n '1s/.*://p' "$LOGS/$name.out")
}

# Per target, its port; per path and target, the entry port of the path.
declare -A TARGET_PORT=() ENTRY=() CPU_PIDS=([direct]=)
TARGETS=(sink source echo hold)
for t in "${TARGETS[@]}"; do
	start_server "$t"
	TARGET_PORT[$t]=$PORT
done
if want_row iperf3; then
	IPERF_OK=
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		start "iperf3-server-$attempt" iperf3 -s -B 127.0.0.1 -p "$port"
		if wait_for "iperf3 -s on $port" 10 "iperf3-server-$attempt" port_open "$port"; then
			IPERF_OK=1
			break
		fi
	done
	[[ -n $IPERF_OK ]] || die "iperf3 -s did not start: $(tail -n 3 "$LOGS/iperf3-server-$attempt.log")"
	TARGETS+=(iperf3)
	TARGET_PORT[iperf3]=$port
fi
for t in "${TARGETS[@]}"; do ENTRY[direct/$t]=${TARGET_PORT[$t]}; done
log "targets: $(for t in "${TARGETS[@]}"; do printf '%s 127.0.0.1:%s  ' "$t" "${TARGET_PORT[$t]}"; done)"

# start_forwarder PATH NAME: runs FWD_CMD (an array) followed by, for every
# target, the arguments that `fwd_args TARGET PORT` prints (one a line) to
# forward a new free port to it, and waits until every port accepts; with
# new ports when one was taken. Sets FWD_NAME (the process's name) and
# ENTRY[PATH/target].
start_forwarder() {
	local path=$1 name=$2 attempt t ok args ports
	for attempt in 1 2 3 4 5; do
		args=() ports=()
		for t in "${TARGETS[@]}"; do
			ports+=("$(free_port)")
			# shellcheck disable=SC2207 # fwd_args prints one argument a line
			args+=($(fwd_args "$t" "${ports[-1]}"))
		done
		start "$name-$attempt" "${FWD_CMD[@]}" "${args[@]}"
		ok=1
		for p in "${ports[@]}"; do
			wait_for "$name on port $p" 15 "$name-$attempt" port_open "$p" || { ok=; break; }
		done
		if [[ -n $ok ]]; then
			FWD_NAME=$name-$attempt
			local i=0
			for t in "${TARGETS[@]}"; do ENTRY[$path/$t]=${ports[i]}; i=$((i + 1)); done
			return 0
		fi
		alive "${PROC_PID[$name-$attempt]}" && die "$name did not open its ports"
		bind_failed "$name-$attempt" || die "$name did not start: $(tail -n 3 "$LOGS/$name-$attempt.log")"
	done
	die "$name: no free ports after 5 attempts"
}

# ---------------------------------------------------------------- ssh

if want_path ssh; then
	start_private_sshd
	fwd_args() { printf '%s\n' -L "127.0.0.1:$2:127.0.0.1:${TARGET_PORT[$1]}"; }
	FWD_CMD=(ssh -N "${SSH_OPTS[@]}" -o ExitOnForwardFailure=yes -c aes128-gcm@openssh.com
		-p "$SSHD_PORT" "$USER_NAME@127.0.0.1")
	start_forwarder ssh ssh-L
	# The client, and sshd with the children that serve the connection.
	CPU_PIDS[ssh]=${PROC_PID[$FWD_NAME]},${PROC_PID[$SSHD_NAME]}
fi

# ---------------------------------------------------------------- dsproxy

# Raised far above what the rows make, so that the hub's stream rate
# limiter is not what setup-parallel measures.
HUB_LIMITS=(--stream-rate 1000000 --stream-burst 1000000)

# mode_args PATH: the service flags of a dsproxy path.
mode_args() {
	[[ -n $MODES ]] || return 0
	case $1 in
	dsproxy) printf '%s\n' --mode per-stream ;;
	dsproxy-session) printf '%s\n' --mode session ;;
	esac
}

# start_dsproxy_world NAME HOST DEVICE-ID TARGET...: a hub on HOST with data
# in WORK/NAME, a device DEVICE-ID registered in it and connected, with
# --target TARGET... Sets WORLD_HUB (the hub's process name), WORLD_DEVICE
# and WORLD_CLIENT (the flags a service proxy needs).
start_dsproxy_world() {
	local name=$1 host=$2 id=$3 dir=$WORK/$1 cs
	shift 3
	start_hub "dsproxy-$name" "$dir" "$host" --log-format json "${HUB_LIMITS[@]}" || die "dsproxy hub $name did not start"
	WORLD_HUB=$HUB_NAME
	WORLD_CLIENT=(--connection-string-file "$dir/iothubowner.connection-string" --ca-file "$dir/tls/ca.pem")
	cs=$("$BIN" devices add "${WORLD_CLIENT[@]}" "$id" 2>>"$LOGS/devices-cli.log") || die "dsproxy devices add $id failed"
	(umask 077 && printf '%s\n' "$cs" >"$WORK/$id.cs")
	device_connected() {
		"$BIN" devices show --json "${WORLD_CLIENT[@]}" "$id" 2>>"$LOGS/devices-cli.log" | grep -q '"connectionState": *"Connected"'
	}
	WORLD_DEVICE=dsproxy-device-$name
	start "$WORLD_DEVICE" "$BIN" device --connection-string-file "$WORK/$id.cs" --ca-file "$dir/tls/ca.pem" "$@" --log-format json
	wait_for "device $id connected" 20 "$WORLD_DEVICE" device_connected || die "dsproxy device $id did not connect"
}

if want_path dsproxy || want_path dsproxy-session; then
	targets=()
	for t in "${TARGETS[@]}"; do targets+=(--target "$t=127.0.0.1:${TARGET_PORT[$t]}"); done
	start_dsproxy_world hub 127.0.0.1 bench "${targets[@]}"
	fwd_args() { printf '%s\n' --forward "127.0.0.1:$2=$1"; }
	for path in dsproxy dsproxy-session; do
		want_path "$path" || continue
		mapfile -t mode < <(mode_args "$path")
		FWD_CMD=("$BIN" service "${WORLD_CLIENT[@]}" --device-id bench "${mode[@]}" --log-format json)
		start_forwarder "$path" "$path-service"
		CPU_PIDS[$path]=${PROC_PID[$WORLD_HUB]},${PROC_PID[$WORLD_DEVICE]},${PROC_PID[$FWD_NAME]}
	done
fi

# ---------------------------------------------------------------- rtt

# The long-round-trip row's topology: the engineer's side (the dialing
# client, the service proxy, the ssh client) in a network namespace of its
# own; the far side (hub, device, sshd, echo target) in this one, all near
# each other. Between them, one link that adds --rtt-ms of round trip. See
# docs/benchmarks.md for why.
declare -A RTT_ADDR=()
if want_row rtt; then
	NS=dsproxy-bench-$$
	octet=
	for o in $(seq 0 254); do
		if ! ip -4 addr show | grep -q " 10\.77\.$o\."; then octet=$o; break; fi
	done
	[[ -n $octet ]] || die "rtt: no free 10.77.x.0 subnet"
	FAR=10.77.$octet.1 NEAR=10.77.$octet.2
	LINK_DEV=dsb$$a
	peer=dsb$$b
	half_us=$((RTT_MS * 500))
	ip netns add "$NS" || die "ip netns add $NS failed"
	if [[ $RTT_LINK == netem ]]; then
		ip link add "$LINK_DEV" type veth peer name "$peer" || die "ip link add veth failed"
	else
		start rtt-link "$BT" delay --tun-a "$LINK_DEV" --tun-b "$peer" --delay "${half_us}us"
		wait_for "delayed TUN link" 10 rtt-link grep -q ready "$LOGS/rtt-link.out" || die "benchtool delay did not start"
	fi
	ip link set "$peer" netns "$NS"
	ip addr add "$FAR" peer "$NEAR" dev "$LINK_DEV"
	ip link set "$LINK_DEV" up
	ip netns exec "$NS" ip addr add "$NEAR" peer "$FAR" dev "$peer"
	ip netns exec "$NS" ip link set "$peer" up
	ip netns exec "$NS" ip link set lo up
	if [[ $RTT_LINK == netem ]]; then
		tc qdisc add dev "$LINK_DEV" root netem delay "${half_us}us"
		ip netns exec "$NS" tc qdisc add dev "$peer" root netem delay "${half_us}us"
	fi
	log "rtt: namespace $NS ($NEAR) ↔ $FAR here, $RTT_MS ms round trip ($RTT_LINK)"
	in_ns() { ip netns exec "$NS" "$@"; }
	ns_port_open() { in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

	# direct dials an echo server on the far side's address; the far side's
	# sshd and device reach the usual echo server on 127.0.0.1.
	start_server echo "$FAR"
	RTT_ADDR[direct]=$FAR:$PORT
	# Ports inside the namespace: nothing else listens there.
	ns_port=7000
	if want_path ssh; then
		port=$(free_port)
		start sshd-far "$SSHD" -D -e -f "$WORK/sshd/config" -p "$port" -o "ListenAddress=$FAR"
		wait_for "sshd on $FAR:$port" 10 sshd-far port_open "$port" "$FAR" || die "sshd on $FAR did not start"
		ns_port=$((ns_port + 1))
		start ssh-L-far ip netns exec "$NS" ssh -N "${SSH_OPTS[@]}" -o ExitOnForwardFailure=yes \
			-c aes128-gcm@openssh.com -p "$port" -L "127.0.0.1:$ns_port:127.0.0.1:${TARGET_PORT[echo]}" "$USER_NAME@$FAR"
		wait_for "ssh -L in $NS" 15 ssh-L-far ns_port_open "$ns_port" || die "ssh -L across the link did not start"
		RTT_ADDR[ssh]=127.0.0.1:$ns_port
	fi
	if want_path dsproxy || want_path dsproxy-session; then
		start_dsproxy_world hub-far "$FAR" bench-far --target "echo=127.0.0.1:${TARGET_PORT[echo]}"
		for path in dsproxy dsproxy-session; do
			want_path "$path" || continue
			ns_port=$((ns_port + 1))
			mapfile -t mode < <(mode_args "$path")
			start "$path-service-far" ip netns exec "$NS" "$BIN" service "${WORLD_CLIENT[@]}" --device-id bench-far \
				"${mode[@]}" --forward "127.0.0.1:$ns_port=echo" --log-format json
			wait_for "$path service in $NS" 15 "$path-service-far" ns_port_open "$ns_port" || die "$path service across the link did not start"
			RTT_ADDR[$path]=127.0.0.1:$ns_port
		done
	fi
fi

# ---------------------------------------------------------------- measuring

SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"

# bt ROUND LABEL BENCHTOOL-ARGS...: one benchtool client run; appends its
# sample line to SAMPLES unless ROUND is 0 (the check before the rounds).
bt() {
	local round=$1 label=$2 out
	shift 2
	out=$("$@" 2>"$LOGS/benchtool-client.err") ||
		die "$label (round $round): $(cat "$LOGS/benchtool-client.err")"
	if ((round > 0)); then
		printf '%s\n' "$out" >>"$SAMPLES"
		log "round $round $label: $(sed -E 's/.*"metrics":\{([^}]*)\}.*/\1/' <<<"$out")"
	fi
}

# measure ROW PATH ROUND: every benchtool run of ROW through PATH. Round 0
# is small: it proves the path carries the row before the rounds start.
measure() {
	local row=$1 path=$2 round=$3 small=
	((round > 0)) || small=1
	local at=127.0.0.1 bytes=$BYTES sbytes=$STALL_BYTES pairs=$STALL_PAIRS
	[[ -z $small ]] || bytes=16MiB sbytes=8MiB pairs=1
	local c=(--path "$path" --round "$round")
	local cpu=(--pids "${CPU_PIDS[$path]}")
	local split=("${cpu[@]}")
	[[ -z $PERF ]] || split+=(--perf)
	entry() { printf '%s:%s' "$at" "${ENTRY[$path/$1]}"; }
	case $row in
	upload) bt "$round" "upload $path" "$BT" throughput --row upload "${c[@]}" "${split[@]}" --addr "$(entry sink)" --bytes "$bytes" ;;
	download) bt "$round" "download $path" "$BT" throughput --row download --dir down "${c[@]}" "${split[@]}" --addr "$(entry source)" --bytes "$bytes" ;;
	parallel) bt "$round" "parallel $path" "$BT" throughput --row parallel --streams 4 "${c[@]}" "${split[@]}" --addr "$(entry sink)" --bytes "$bytes" ;;
	iperf3)
		local t=$IPERF3_TIME
		[[ -z $small ]] || t=1
		bt "$round" "iperf3 up $path" "$BT" iperf3 --row iperf3-up "${c[@]}" "${cpu[@]}" --addr "$(entry iperf3)" --time "${t}s"
		[[ -n $small ]] && return
		bt "$round" "iperf3 -R $path" "$BT" iperf3 --row iperf3-down --reverse "${c[@]}" "${cpu[@]}" --addr "$(entry iperf3)" --time "${t}s"
		bt "$round" "iperf3 -P 4 $path" "$BT" iperf3 --row iperf3-p4 --parallel 4 "${c[@]}" "${cpu[@]}" --addr "$(entry iperf3)" --time "${t}s"
		;;
	setup)
		local n=$CONNS
		[[ -z $small ]] || n=50
		bt "$round" "setup $path" "$BT" setup --row setup "${c[@]}" "${cpu[@]}" --addr "$(entry echo)" --conns "$n"
		;;
	setup-parallel)
		local d=${PARALLEL_TIME}s
		[[ -z $small ]] || d=500ms
		bt "$round" "setup-parallel $path" "$BT" setup --row setup-parallel "${c[@]}" "${cpu[@]}" --addr "$(entry echo)" \
			--clients "$CLIENTS" --duration "$d"
		;;
	stall)
		bt "$round" "stall up $path" "$BT" stall --row stall-up --dir up "${c[@]}" \
			--addr "$(entry sink)" --stall-addr "$(entry hold)" --bytes "$sbytes" --pairs "$pairs"
		bt "$round" "stall down $path" "$BT" stall --row stall-down --dir down "${c[@]}" \
			--addr "$(entry source)" --stall-addr "$(entry source)" --bytes "$sbytes" --pairs "$pairs"
		;;
	rtt)
		local n=$RTT_CONNS
		[[ -z $small ]] || n=2
		bt "$round" "rtt $path" ip netns exec "$NS" "$BT" setup --row rtt "${c[@]}" --addr "${RTT_ADDR[$path]}" \
			--conns "$n" --rtt-ms "$RTT_MS"
		;;
	*) die "measure: unknown row $row" ;;
	esac
}

# Every path and row once, small, before the rounds: a broken path fails
# here, and no round pays for first use.
for path in "${PATH_LIST[@]}"; do
	for row in "${ROWS[@]}"; do measure "$row" "$path" 0; done
	pass "$path carries ${ROWS[*]}"
done

for ((round = 1; round <= ROUNDS; round++)); do
	order=("${PATH_LIST[@]}")
	if ((round % 2 == 0)); then
		order=()
		for ((i = ${#PATH_LIST[@]} - 1; i >= 0; i--)); do order+=("${PATH_LIST[i]}"); done
	fi
	log "round $round of $ROUNDS: ${order[*]}"
	for row in "${ROWS[@]}"; do
		for path in "${order[@]}"; do measure "$row" "$path" "$round"; done
	done
done

params=(--param "rows=${ROWS[*]}")
[[ -z $PERF ]] || params+=(--param "perf=the tunnel processes sampled with perf at 999 Hz during each upload, download and parallel run; their CPU-s per GB split by share of the samples")
for r in "${ROWS[@]}"; do
	case $r in
	upload | download | parallel) params+=(--param "bytes=$BYTES per run (parallel: over 4 streams)") ;;
	iperf3) params+=(--param "iperf3-time=${IPERF3_TIME} s per run (iperf3 $(iperf3 --version | sed -n '1s/^iperf \([^ ]*\).*/\1/p'))") ;;
	setup) params+=(--param "conns=$CONNS sequential setups (dial, echo 1 byte, close)") ;;
	setup-parallel) params+=(--param "clients=$CLIENTS parallel clients for $PARALLEL_TIME s") ;;
	stall) params+=(--param "stall-bytes=$STALL_BYTES per run of stream B" --param "stall-pairs=$STALL_PAIRS pairs of runs (alone, beside a stalled A) per round: medians") ;;
	rtt)
		params+=(--param "rtt=$RTT_MS ms round trip added between the engineer's side and the rest")
		params+=(--param "rtt-link=$([[ $RTT_LINK == netem ]] && echo "tc netem delay $((RTT_MS / 2)) ms on each end of a veth pair" || echo "benchtool delay: a TUN pair, $((RTT_MS / 2)) ms each way (no sch_netem in this kernel)")")
		params+=(--param "rtt-conns=$RTT_CONNS sequential setups per run")
		params+=(--param "topology=client, service proxy, ssh client | link | hub, device, sshd, target")
		;;
	esac
done
params+=(--param "load=load average (1, 5, 15 min) $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end")
if want_path dsproxy || want_path dsproxy-session; then
	params+=(--param "hub-limits=${HUB_LIMITS[*]} (so that the rate limiter is not measured)")
fi
notes=()
for n in "${NOTES[@]}"; do notes+=(--note "$n"); done
"$BT" report --samples "$SAMPLES" --json "$JSON_OUT" --go "$(go version | sed 's/^go version //')" \
	--commit "$COMMIT" --rounds "$ROUNDS" --paths "$PATHS" "${params[@]}" "${notes[@]}" >&3 ||
	die "benchtool report failed"
log "raw results in $JSON_OUT"
