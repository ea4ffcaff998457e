#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# bench-cluster.sh: what hub replicas cost against a single hub (issue 8;
# docs/benchmarks.md "Hub replicas", docs/scaling.md). Not part of
# scripts/test.sh or CI: it measures, it does not assert.
#
# One run, everything on loopback: a throwaway PostgreSQL
# (scripts/lib/postgres.sh), three NATS nodes (scripts/natstool node, one
# process each, on 127.0.0.1, .2 and .3), replicas A (127.0.0.1) and B
# (127.0.0.2) on them, and a single hub S (SQLite, no NATS) beside them.
#
# Rows:
#   setup   benchtool setup (--conns sequential TCP connections, each a new
#           stream that echoes one byte) through dsproxy service in both
#           modes (per-stream, session), on three paths:
#             single   service and device on hub S
#             replica  service and device on replica B (the cluster's own
#                      cost: PostgreSQL registry, NATS subscriptions)
#             across   service on replica A, device on replica B (routed
#                      over NATS; the stream's URL is on B)
#           p50/p90 per run; the table has the median over --rounds and
#           the ratio to single. The path order is reversed every other
#           round.
#   memory  scaletool devices: --devices idle devices connect to a fresh
#           single hub (SQLite), then to a fresh replica C (127.0.0.3); the
#           hub's RSS and live heap per device (scaletool waits up to
#           --gc-wait for a GC), each NATS node's RSS per device while the
#           devices are connected (natstool's process RSS, sampled every
#           0.5 s), and the PostgreSQL rows written per device connected
#           and disconnected (pg_stat_user_tables).
#
# The Markdown table goes to stdout; progress and logs to stderr; the raw
# results (every sample, scaletool's documents) to --json.
#
# It measures the committed HEAD of this checkout (exported with git archive
# and built in the work directory); --worktree builds the tree as it is.
#
# Usage: scripts/bench-cluster.sh [--quick] [--rounds N] [--conns N]
#                                 [--devices N] [--gc-wait DURATION]
#                                 [--only setup|memory] [--worktree]
#                                 [--json FILE]
# Environment:
#   DSPROXY_BIN   the dsproxy binary to measure (default: built from HEAD)
#   E2E_KEEP=1    keep the work directory (its path is printed)
#
# Needs: bash, coreutils, Go, curl, PostgreSQL (initdb, pg_ctl, psql:
# apt-get install -y postgresql-15), python3 or perl (free ports), and a
# hard `ulimit -n` above 2 × --devices.
set -euo pipefail

ROUNDS=3
CONNS=1000
DEVICES=5000
GC_WAIT=130s
ONLY=
WORKTREE=
JSON_OUT=./bench-cluster-results.json

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
while (($# > 0)); do
	case $1 in
	--quick)
		ROUNDS=1 CONNS=200 DEVICES=500 GC_WAIT=5s
		shift
		;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--conns) CONNS=${2:?}; shift 2 ;;
	--devices) DEVICES=${2:?}; shift 2 ;;
	--gc-wait) GC_WAIT=${2:?}; shift 2 ;;
	--only)
		ONLY=${2:?}
		[[ $ONLY == setup || $ONLY == memory ]] || {
			echo "bench-cluster: --only $ONLY: want setup or memory" >&2
			exit 2
		}
		shift 2
		;;
	--worktree) WORKTREE=1; shift ;;
	--json) JSON_OUT=${2:?}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*)
		echo "bench-cluster: unknown argument $1" >&2
		usage >&2
		exit 2
		;;
	esac
done
want_row() { [[ -z $ONLY || $ONLY == "$1" ]]; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JSON_OUT=$(realpath -m "$JSON_OUT")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-bench-cluster.XXXXXX")
LOGS=$WORK/logs
RES=$WORK/results
mkdir -p "$LOGS" "$RES"

# The table is the only thing on stdout: keep it on fd 3.
exec 3>&1 1>&2

E2E_NAME=bench-cluster
# shellcheck source=scripts/lib/e2e.sh
source "$ROOT/scripts/lib/e2e.sh"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	postgres_stop
	finish "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v psql >/dev/null || die "psql not found: apt-get install -y postgresql-15 (or postgresql-client)"
command -v curl >/dev/null || die "curl not found: apt-get install -y curl"

# ---------------------------------------------------------------- build

measured_source
if [[ -n ${DSPROXY_BIN:-} ]]; then
	use_binary
else
	BIN=$WORK/dsproxy
	log "building dsproxy, benchtool, scaletool, natstool from $SRC"
	(cd "$SRC" && go build -o "$BIN" ./cmd/dsproxy) || die "go build ./cmd/dsproxy failed"
fi
# The measuring tools come from this checkout as it is, like the scripts.
for tool in benchtool scaletool natstool clusterbench; do
	(cd "$ROOT" && go build -o "$WORK/$tool" "./scripts/$tool") || die "go build ./scripts/$tool failed"
done

# ---------------------------------------------------------------- PostgreSQL, NATS

postgres_start 2>"$LOGS/postgres.err" || die "PostgreSQL did not start: $(cat "$LOGS/postgres.err")"
PG_URL=$DSPROXY_TEST_POSTGRES

declare -a NATS_CLIENT=() NATS_ROUTE=()
start_nats() {
	local i=$1 host=$2 routes=$3 line
	start "nats-n$i" "$WORK/natstool" node --name "n$i" --host "$host" --routes "$routes"
	wait_for "NATS node n$i" 10 "nats-n$i" grep -q '^client=' "$LOGS/nats-n$i.out" || die "NATS node n$i did not start"
	line=$(head -n 1 "$LOGS/nats-n$i.out")
	NATS_CLIENT[i]=$(sed -E 's/.*client=([^ ]*).*/\1/' <<<"$line")
	NATS_ROUTE[i]=$(sed -E 's/.*cluster=([^ ]*).*/\1/' <<<"$line")
}
start_nats 1 127.0.0.1 ""
start_nats 2 127.0.0.2 "${NATS_ROUTE[1]}"
start_nats 3 127.0.0.3 "${NATS_ROUTE[1]},${NATS_ROUTE[2]}"
NATS_URLS="${NATS_CLIENT[1]},${NATS_CLIENT[2]},${NATS_CLIENT[3]}"
"$WORK/natstool" ready --urls "$NATS_URLS" || die "the NATS nodes did not form one cluster"

SHARED=hub.dsproxy.test
# The limits that would cap a setup loop are raised, as in bench.sh.
HUB_FLAGS=(--stream-rate 1000000 --stream-burst 1000000 --shutdown-grace 1s --hostname "$SHARED")
declare -A HUB_ADDR=() HUB_PROC=() HUB_DIR=()

# start_node R HOST KIND: hub R on HOST, KIND single (SQLite) or replica
# (PostgreSQL, NATS, the tls directory of the first replica).
FIRST_REPLICA=
start_node() {
	local r=$1 host=$2 kind=$3 dir=$WORK/hub-$1 extra=()
	if [[ $kind == replica ]]; then
		extra=(--registry "$PG_URL" --nats "$NATS_URLS")
		if [[ -n $FIRST_REPLICA ]]; then
			mkdir -p "$dir"
			cp -r "${HUB_DIR[$FIRST_REPLICA]}/tls" "$dir/tls"
		fi
	fi
	start_hub "dsproxy-hub-$r" "$dir" "$host" "${HUB_FLAGS[@]}" "${extra[@]}" || die "hub $r did not start"
	HUB_ADDR[$r]=$host:$HUB_PORT HUB_PROC[$r]=$HUB_NAME HUB_DIR[$r]=$dir
	[[ $kind != replica || -n $FIRST_REPLICA ]] || FIRST_REPLICA=$r
}
hub_pid() { echo "${PROC_PID[${HUB_PROC[$1]}]}"; }

# owner_cs R: R's owner connection string, signed for the shared name.
owner_cs() { sed -E "s/HostName=[^;]*/HostName=$SHARED/" "${HUB_DIR[$1]}/iothubowner.connection-string"; }

# rss PID: VmRSS of PID in bytes.
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }

# ---------------------------------------------------------------- setup row

run_setup() {
	local echo_addr r path mode port order i
	start echo "$WORK/benchtool" echo --listen 127.0.0.1:0
	wait_for "echo target" 10 echo test -s "$LOGS/echo.out" || die "echo target did not start"
	echo_addr=$(head -n 1 "$LOGS/echo.out")

	start_node S 127.0.0.1 single
	start_node A 127.0.0.1 replica
	start_node B 127.0.0.2 replica

	# devices: dev-s on S, dev-b on B.
	declare -A dev_hub=([dev-s]=S [dev-b]=B)
	for id in dev-s dev-b; do
		r=${dev_hub[$id]}
		cs=$("$BIN" devices add --connection-string "$(owner_cs "$r")" --ca-file "${HUB_DIR[$r]}/tls/ca.pem" \
			--hub "${HUB_ADDR[$r]}" "$id" 2>>"$LOGS/devices-cli.log") || die "devices add $id: $(tail -n 3 "$LOGS/devices-cli.log")"
		cs=$(sed -E "s/HostName=[^;]*/HostName=$SHARED/" <<<"$cs")
		start "dsproxy-device-$id" "$BIN" device --connection-string "$cs" --ca-file "${HUB_DIR[$r]}/tls/ca.pem" \
			--hub "${HUB_ADDR[$r]}" --target "echo=$echo_addr"
		wait_for "device $id on $r" 20 "dsproxy-device-$id" connected "$r" || die "device $id did not connect to $r"
	done

	# services: PATH/MODE → port.
	declare -gA SVC=()
	for path in single replica across; do
		case $path in
		single) r=S id=dev-s ;;
		replica) r=B id=dev-b ;;
		across) r=A id=dev-b ;;
		esac
		for mode in per-stream session; do
			start_forwarder "dsproxy-service-$path-$mode" "$BIN" service \
				--connection-string "$(owner_cs "$r")" --ca-file "${HUB_DIR[$r]}/tls/ca.pem" --hub "${HUB_ADDR[$r]}" \
				--device-id "$id" --stream-name echo --mode "$mode" || die "service $path $mode did not start"
			SVC[$path/$mode]=$FWD_PORT
		done
	done

	local configs=(single/per-stream replica/per-stream across/per-stream single/session replica/session across/session)
	# One small run of each first: a broken path fails the run, and no
	# round pays for first use.
	for c in "${configs[@]}"; do
		"$WORK/benchtool" setup --addr "127.0.0.1:${SVC[$c]}" --conns 20 --path "$c" >/dev/null ||
			die "setup through $c failed"
	done
	for ((round = 1; round <= ROUNDS; round++)); do
		order=("${configs[@]}")
		if ((round % 2 == 0)); then
			order=()
			for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[i]}"); done
		fi
		for c in "${order[@]}"; do
			log "setup round $round/$ROUNDS: $c ($CONNS setups)"
			"$WORK/benchtool" setup --addr "127.0.0.1:${SVC[$c]}" --conns "$CONNS" --path "$c" --round "$round" \
				>>"$RES/setup.jsonl" || die "setup through $c failed"
		done
	done
	pass "setup: $ROUNDS rounds of $CONNS setups on ${#configs[@]} paths"
	for c in "${configs[@]}"; do stop_proc "dsproxy-service-${c%/*}-${c#*/}" "${PROC_PID[dsproxy-service-${c%/*}-${c#*/}]}" || true; done
	for id in dev-s dev-b; do stop_proc "dsproxy-device-$id" "${PROC_PID[dsproxy-device-$id]}" || true; done
	for r in S A B; do stop_proc "${HUB_PROC[$r]}" "$(hub_pid "$r")" || true; done
}

# connected R: whether hub R counts a connected device.
connected() {
	local v
	v=$(curl -sf --max-time 2 --cacert "${HUB_DIR[$1]}/tls/ca.pem" "https://${HUB_ADDR[$1]}/metrics" |
		awk '$1 == "dsproxy_hub_connected_devices" {print $2}')
	[[ ${v:-0} != 0 ]]
}

# start_forwarder NAME CMD...: CMD --listen 127.0.0.1:PORT on a free port,
# retried when the port was taken; sets FWD_PORT.
start_forwarder() {
	local name=$1 attempt port try
	shift
	FWD_PORT=
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		try=$name
		((attempt == 1)) || try=$name-$attempt
		start "$try" "$@" --listen "127.0.0.1:$port"
		if wait_for "$try on port $port" 15 "$try" port_open "$port"; then
			FWD_PORT=$port
			# stop_proc by NAME finds the first try's name.
			PROC_PID[$name]=${PROC_PID[$try]}
			return 0
		fi
		bind_failed "$try" || return 1
	done
	return 1
}

# ---------------------------------------------------------------- memory row

# pg_counts: "inserts updates" of device_sessions, the writes to devices,
# and the database's committed transactions, from PostgreSQL's statistics
# (which an idle connection reports within PGSTAT_IDLE_INTERVAL, 10 s);
# then the session table itself: rows, rows released (replica ''), and
# the sum of epochs (one per claim).
pg_counts() {
	sleep 11
	psql "$PG_URL" -At -F ' ' -c "SELECT
		(SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'device_sessions'),
		(SELECT coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'device_sessions'),
		(SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'devices'),
		(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
		(SELECT count(*) FROM device_sessions),
		(SELECT count(*) FROM device_sessions WHERE replica = ''),
		(SELECT coalesce(sum(epoch), 0) FROM device_sessions)"
}

# nats_node_of R: the index of the NATS node hub R is connected to.
nats_node_of() { nats_node_of_pid "$(hub_pid "$1")" || echo 0; }

# sample_nats FILE PIDFILE: until PIDFILE's process exits, appends every
# 0.5 s a line "connected rss1 rss2 rss3" (replica C's connected devices,
# each NATS node's RSS).
sample_nats() {
	local file=$1 watched=$2 n
	while alive "$watched"; do
		n=$(curl -sf --max-time 2 --cacert "${HUB_DIR[C]}/tls/ca.pem" "https://${HUB_ADDR[C]}/metrics" |
			awk '$1 == "dsproxy_hub_connected_devices" {print $2}') || n=
		echo "${n:-0} $(rss "${PROC_PID[nats-n1]}") $(rss "${PROC_PID[nats-n2]}") $(rss "${PROC_PID[nats-n3]}")" >>"$file"
		sleep 0.5
	done
}

# run_devices R: starts scaletool devices against hub R (its own owner
# connection string names its own address); the JSON goes to
# LOGS/scaletool-R.out.
run_devices() {
	local r=$1
	start "scaletool-$r" "$WORK/scaletool" devices --hub-cs "${HUB_DIR[$r]}/iothubowner.connection-string" \
		--ca-file "${HUB_DIR[$r]}/tls/ca.pem" --n "$DEVICES" --hub-pid "$(hub_pid "$r")" --gc-wait "$GC_WAIT"
}
not_connected() { ! connected "$1"; }

run_memory() {
	local lim pid before after sampler
	lim=$(ulimit -Hn)
	ulimit -n "$lim"
	if ((lim < 2 * DEVICES + 1000)); then
		log "WARN: ulimit -n is $lim: fewer than --devices $DEVICES may fit (scaletool measures as many as do)"
	fi
	# single: a fresh hub with SQLite.
	start_node M 127.0.0.1 single
	run_devices M
	pid=${PROC_PID[scaletool-M]}
	wait "$pid" || die "scaletool devices against the single hub failed: $(tail -n 5 "$LOGS/scaletool-M.log")"
	cp "$LOGS/scaletool-M.out" "$RES/memory-single.json"
	stop_proc "${HUB_PROC[M]}" "$(hub_pid M)" || true

	# replica: a fresh replica C, with the NATS nodes and PostgreSQL watched.
	start_node C 127.0.0.3 replica
	sleep 2
	printf '%s %s %s\n' "$(rss "${PROC_PID[nats-n1]}")" "$(rss "${PROC_PID[nats-n2]}")" "$(rss "${PROC_PID[nats-n3]}")" >"$RES/nats-before.txt"
	nats_node_of C >"$RES/nats-node.txt"
	before=$(pg_counts)
	run_devices C
	pid=${PROC_PID[scaletool-C]}
	sample_nats "$RES/nats-samples.txt" "$pid" &
	sampler=$!
	wait "$pid" || die "scaletool devices against replica C failed: $(tail -n 5 "$LOGS/scaletool-C.log")"
	wait "$sampler" || true
	cp "$LOGS/scaletool-C.out" "$RES/memory-replica.json"
	# The devices are gone: wait until C has released them.
	wait_for "replica C without devices" 60 "${HUB_PROC[C]}" not_connected C || true
	after=$(pg_counts)
	printf '%s\n%s\n' "$before" "$after" >"$RES/pg-counts.txt"
	pass "memory: $DEVICES devices on a single hub and on a replica"
}

{
	echo "commit=$COMMIT"
	echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus=$(nproc)"
	echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	echo "go=$(go env GOVERSION)"
	echo "rounds=$ROUNDS"
	echo "conns=$CONNS"
	echo "devices=$DEVICES"
	echo "gcWait=$GC_WAIT"
	echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RES/meta.txt"

if want_row setup; then run_setup; fi
if want_row memory; then run_memory; fi
echo "loadEnd=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/meta.txt"

"$WORK/clusterbench" table --results "$RES" --json "$JSON_OUT" >&3 || die "clusterbench table failed"
log "raw results in $JSON_OUT"
