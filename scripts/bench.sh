#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# bench.sh: dsproxy against the alternatives, on loopback, in one run
# (issue 6; docs/benchmarks.md). Not part of scripts/test.sh or CI: it
# measures, it does not assert.
#
# Everything runs on 127.0.0.1, in a temporary work directory that is removed
# on exit, together with every process the script started:
#
#   benchtool sink, benchtool echo   the targets (scripts/benchtool)
#   direct                           the targets themselves: the physical limit
#   ssh                              ssh -N -L through a private sshd, -c aes128-gcm@openssh.com
#   dsproxy                          dsproxy service → dsproxy hub → dsproxy device,
#                                    TLS on both legs, three processes
#
# Rows, each path in every round, the path order reversed every other round:
#   throughput  one stream uploads --bytes to the sink, half-closes, waits for
#               its ack: Gbit/s, and CPU seconds per GB of the tunnel processes
#   setup       --conns sequential connections: dial, echo one byte, close:
#               p50 / p90 / p99
#
# The Markdown table goes to stdout; progress and logs to stderr.
#
# Usage: scripts/bench.sh [--rounds N] [--bytes SIZE] [--conns N]
#                         [--only throughput|setup] [--paths direct,ssh,dsproxy]
#                         [--json FILE]
# Environment:
#   DSPROXY_BIN   the dsproxy binary to measure (default: built from this checkout)
#   E2E_KEEP=1    keep the work directory (its path is printed)
#
# Needs: bash, coreutils, Go, OpenSSH (sshd, ssh, ssh-keygen) for the ssh path,
# and python3 or perl to ask the kernel for free ports.
set -euo pipefail

ROUNDS=3
BYTES=1GiB
CONNS=1000
ONLY=
PATHS=direct,ssh,dsproxy
JSON_OUT=bench-results.json

usage() {
	sed -n '/^# Usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
while (($# > 0)); do
	case $1 in
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--bytes) BYTES=${2:?}; shift 2 ;;
	--conns) CONNS=${2:?}; shift 2 ;;
	--only) ONLY=${2:?}; shift 2 ;;
	--paths) PATHS=${2:?}; shift 2 ;;
	--json) JSON_OUT=${2:?}; shift 2 ;;
	-h | --help) usage ;;
	*) printf 'bench: unknown argument %q\n' "$1" >&2; usage ;;
	esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: --rounds $ROUNDS: want a positive number" >&2; exit 2; }
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || { echo "bench: --conns $CONNS: want a positive number" >&2; exit 2; }
case $ONLY in
'') ROWS=(throughput setup) ;;
throughput | setup) ROWS=("$ONLY") ;;
*) echo "bench: --only $ONLY: want throughput or setup" >&2; exit 2 ;;
esac
IFS=, read -r -a PATH_LIST <<<"$PATHS"
for p in "${PATH_LIST[@]}"; do
	case $p in direct | ssh | dsproxy) ;; *) echo "bench: --paths: unknown path $p (want direct, ssh, dsproxy)" >&2; exit 2 ;; esac
done
((${#PATH_LIST[@]} > 0)) || { echo "bench: --paths is empty" >&2; exit 2; }
case $JSON_OUT in /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac

# The table is the only thing on stdout: keep it on fd 3, send the rest
# (the e2e helpers log to stdout) to stderr.
exec 3>&1 1>&2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-bench.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"

E2E_NAME=bench
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

want_path() { [[ ,$PATHS, == *,$1,* ]]; }

# ---------------------------------------------------------------- tools

BT=$WORK/benchtool
log "building benchtool: go build -o $BT ./scripts/benchtool"
(cd "$ROOT" && go build -o "$BT" ./scripts/benchtool) || die "go build ./scripts/benchtool failed"
NBYTES=$("$BT" size "$BYTES") || die "--bytes $BYTES"
if want_path ssh; then
	for tool in sshd ssh ssh-keygen; do
		if ! command -v "$tool" >/dev/null && ! [[ -x /usr/sbin/$tool ]]; then
			die "$tool not found for the ssh path: install OpenSSH (apt-get install -y openssh-server openssh-client) or leave it out with --paths direct,dsproxy"
		fi
	done
	SSHD=$(command -v sshd || echo /usr/sbin/sshd)
fi
if want_path dsproxy; then
	use_binary
elif ! command -v python3 >/dev/null && ! command -v perl >/dev/null; then
	die "need python3 or perl to find free ports"
fi

# ---------------------------------------------------------------- targets

# start_server KIND: runs benchtool KIND (sink or echo) on a port the kernel
# picks; sets PORT.
start_server() {
	start "$1" "$BT" "$1" --listen 127.0.0.1:0
	wait_for "benchtool $1" 10 "$1" test -s "$LOGS/$1.out" || die "benchtool $1 did not start"
	PORT=$(sed -n '1s/.*://p' "$LOGS/$1.out")
}
start_server sink
SINK_PORT=$PORT
start_server echo
ECHO_PORT=$PORT
log "sink on 127.0.0.1:$SINK_PORT, echo on 127.0.0.1:$ECHO_PORT"

# Per path: the entry port of each row and the PIDs whose CPU time counts.
declare -A SINK_ENTRY=([direct]=$SINK_PORT) ECHO_ENTRY=([direct]=$ECHO_PORT) CPU_PIDS=([direct]=)

# ---------------------------------------------------------------- ssh

if want_path ssh; then
	start_private_sshd

	SSH_OK=
	for attempt in 1 2 3 4 5; do
		p1=$(free_port)
		p2=$(free_port)
		start "ssh-L-$attempt" ssh -N -F none -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
			-o BatchMode=yes -o LogLevel=ERROR -o IdentitiesOnly=yes -o ExitOnForwardFailure=yes \
			-c aes128-gcm@openssh.com -i "$WORK/client_ed25519" -p "$SSHD_PORT" \
			-L "127.0.0.1:$p1:127.0.0.1:$SINK_PORT" -L "127.0.0.1:$p2:127.0.0.1:$ECHO_PORT" \
			"$(id -un)@127.0.0.1"
		if wait_for "ssh -L on ports $p1 and $p2" 15 "ssh-L-$attempt" port_open "$p1" &&
			wait_for "second forward" 5 "ssh-L-$attempt" port_open "$p2"; then
			SSH_OK=1
			break
		fi
		alive "${PROC_PID[ssh-L-$attempt]}" && die "ssh -L did not open its ports"
	done
	[[ -n $SSH_OK ]] || die "ssh -L did not start: $(tail -n 3 "$LOGS/ssh-L-$attempt.log")"
	SINK_ENTRY[ssh]=$p1 ECHO_ENTRY[ssh]=$p2
	# The client, and sshd with the children that serve the connection.
	CPU_PIDS[ssh]=${PROC_PID[ssh-L-$attempt]},${PROC_PID[$SSHD_NAME]}
fi

# ---------------------------------------------------------------- dsproxy

if want_path dsproxy; then
	HUB_DIR=$WORK/hub
	CA=$HUB_DIR/tls/ca.pem
	start_hub dsproxy-hub "$HUB_DIR" 127.0.0.1 --log-format json || die "dsproxy hub did not start"
	CLIENT=(--connection-string-file "$HUB_DIR/iothubowner.connection-string" --ca-file "$CA")
	DEV_CS=$("$BIN" devices add "${CLIENT[@]}" bench 2>"$LOGS/devices-cli.log") || die "dsproxy devices add bench failed"
	(umask 077 && printf '%s\n' "$DEV_CS" >"$WORK/device.cs")
	device_connected() {
		"$BIN" devices show --json "${CLIENT[@]}" bench 2>>"$LOGS/devices-cli.log" | grep -q '"connectionState": *"Connected"'
	}
	start dsproxy-device "$BIN" device --connection-string-file "$WORK/device.cs" --ca-file "$CA" \
		--target "sink=127.0.0.1:$SINK_PORT" --target "echo=127.0.0.1:$ECHO_PORT" --log-format json
	wait_for "device connected" 20 dsproxy-device device_connected || die "dsproxy device did not connect"
	SVC_NAME=
	for attempt in 1 2 3 4 5; do
		p1=$(free_port)
		p2=$(free_port)
		start "dsproxy-service-$attempt" "$BIN" service "${CLIENT[@]}" --device-id bench \
			--forward "127.0.0.1:$p1=sink" --forward "127.0.0.1:$p2=echo" --log-format json
		if wait_for "service on ports $p1 and $p2" 15 "dsproxy-service-$attempt" port_open "$p1" &&
			wait_for "second forward" 5 "dsproxy-service-$attempt" port_open "$p2"; then
			SVC_NAME=dsproxy-service-$attempt
			break
		fi
		bind_failed "dsproxy-service-$attempt" || die "dsproxy service did not start"
	done
	[[ -n $SVC_NAME ]] || die "service: no free ports after 5 attempts"
	SINK_ENTRY[dsproxy]=$p1 ECHO_ENTRY[dsproxy]=$p2
	CPU_PIDS[dsproxy]=${PROC_PID[$HUB_NAME]},${PROC_PID[dsproxy-device]},${PROC_PID[$SVC_NAME]}
fi

# ---------------------------------------------------------------- measuring

SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"

# measure ROW PATH ROUND [SIZE CONNS]: one benchtool client run; appends its
# sample line to SAMPLES unless ROUND is 0 (the check before the rounds).
measure() {
	local row=$1 path=$2 round=$3 size=${4:-$NBYTES} conns=${5:-$CONNS} out
	local args=(--path "$path" --round "$round")
	if [[ $row == throughput ]]; then
		args+=(--addr "127.0.0.1:${SINK_ENTRY[$path]}" --bytes "$size" --pids "${CPU_PIDS[$path]}")
	else
		args+=(--addr "127.0.0.1:${ECHO_ENTRY[$path]}" --conns "$conns")
	fi
	out=$("$BT" "$row" "${args[@]}" 2>"$LOGS/benchtool-$row.err") ||
		die "$row through $path (round $round): $(cat "$LOGS/benchtool-$row.err")"
	if ((round > 0)); then
		printf '%s\n' "$out" >>"$SAMPLES"
		log "round $round $row $path: $(sed -E 's/.*"metrics":\{([^}]*)\}.*/\1/' <<<"$out")"
	fi
}

# Every path once, small, before the rounds: a broken path fails here, and
# no round pays for first use.
for path in "${PATH_LIST[@]}"; do
	for row in "${ROWS[@]}"; do measure "$row" "$path" 0 64M 50; done
	pass "$path carries a throughput and a setup run"
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

COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $COMMIT != unknown && -n $(cd "$ROOT" && git status --porcelain 2>/dev/null) ]]; then
	COMMIT+="-dirty"
fi
"$BT" report --samples "$SAMPLES" --json "$JSON_OUT" --go "$(go version | sed 's/^go version //')" \
	--commit "$COMMIT" --rounds "$ROUNDS" --bytes "$NBYTES" --conns "$CONNS" --paths "$PATHS" >&3 ||
	die "benchtool report failed"
log "raw results in $JSON_OUT"
