#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# e2e-cluster.sh: the end-to-end test of hub replicas (docs/scaling.md), with
# real processes and real OpenSSH, everything on loopback:
#
#   a throwaway PostgreSQL (scripts/lib/postgres.sh), the shared registry
#   3 NATS nodes (scripts/natstool node) on 127.0.0.1, .2 and .3
#   3 dsproxy hub replicas A, B, C on 127.0.0.1, .2 and .3, sharing one CA,
#     each accepting tokens for the shared name hub.dsproxy.test
#   a private sshd, the device's target
#   dsproxy device   --hub B,C,A (so it connects to B, then to C)
#   dsproxy service  --hub A, in session mode and in per-stream mode
#
# and then checks, each printing PASS or FAIL:
#   a. the device is on B; ssh runs a command through A in both modes, and
#      the streams ran on B (B started them and relayed their bytes, A
#      relayed none)
#   b. scp of 8 MiB there and back through A in both modes, sha256 match
#   c. kill -9 of the NATS node that B is connected to: a running ssh
#      transfer is untouched, and new streams work again within 1 s
#      (the time is printed)
#   d. kill -9 of replica B: the device is back on A or C within 10 s and
#      ssh works again through A in both modes (the time is printed)
#   e. PostgreSQL stops: a running transfer is untouched, new per-stream
#      streams are refused; once it is back, they work again (the time is
#      printed)
#
# 200 concurrent reconnects of one device leaving exactly one live session
# are checked in process by hub/cluster_test.go (TestClusterNewestSessionWins),
# not here.
#
# Usage: scripts/e2e-cluster.sh
# Environment:
#   DSPROXY_BIN               the dsproxy binary to test (default: built here)
#   DSPROXY_REQUIRE_POSTGRES=1  no PostgreSQL is a failure; without it, the
#                             test is skipped, loudly, with exit status 0
#   E2E_KEEP=1                keep the work directory (its path is printed)
#
# Needs: bash, coreutils, curl, OpenSSH (sshd, ssh, scp, ssh-keygen),
# PostgreSQL (initdb, pg_ctl: apt-get install -y postgresql-15), Go (for
# natstool, and dsproxy unless DSPROXY_BIN is set), python3 or perl, and ss
# (iproute2) to find the NATS node a replica is connected to.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-cluster.XXXXXX")
LOGS=$WORK/logs
DATA=$WORK/data
mkdir -p "$LOGS" "$DATA"

E2E_NAME=cluster
# shellcheck source=scripts/lib/e2e.sh
source "$ROOT/scripts/lib/e2e.sh"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"

SUMMARY=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	postgres_stop
	finish "$rc" "$SUMMARY"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools

for tool in sshd ssh scp ssh-keygen sha256sum curl ss; do
	if ! command -v "$tool" >/dev/null && ! [[ -x /usr/sbin/$tool ]]; then
		die "$tool not found (Debian: apt-get install -y openssh-server openssh-client curl iproute2)"
	fi
done
if ! pg_bindir >/dev/null; then
	msg="PostgreSQL not found (initdb, pg_ctl): apt-get install -y postgresql-15"
	if [[ ${DSPROXY_REQUIRE_POSTGRES:-} == 1 ]]; then
		die "$msg (DSPROXY_REQUIRE_POSTGRES=1: this test is required)"
	fi
	printf '\n!!! SKIP: e2e-cluster.sh NOT RUN: %s\n\n' "$msg"
	exit 0
fi
use_binary
NATSTOOL=$WORK/natstool
(cd "$ROOT" && go build -o "$NATSTOOL" ./scripts/natstool) || die "go build ./scripts/natstool failed"

# ---------------------------------------------------------------- PostgreSQL

t0=$(now_ns)
postgres_start 2>"$LOGS/postgres.err" || die "PostgreSQL did not start: $(cat "$LOGS/postgres.err")"
PG_URL=$DSPROXY_TEST_POSTGRES
log "PostgreSQL in $PG_DIR ready after $(secs_since "$t0")s"

# ---------------------------------------------------------------- NATS

# start_nats I HOST ROUTES: NATS node nI on HOST, routed to ROUTES; sets
# NATS_CLIENT[I] and NATS_ROUTE[I].
declare -a NATS_CLIENT=() NATS_ROUTE=()
start_nats() {
	local i=$1 host=$2 routes=$3 line
	start "nats-n$i" "$NATSTOOL" node --name "n$i" --host "$host" --routes "$routes" --log
	wait_for "NATS node n$i" 10 "nats-n$i" grep -q '^client=' "$LOGS/nats-n$i.out" || die "NATS node n$i did not start"
	line=$(head -n 1 "$LOGS/nats-n$i.out")
	NATS_CLIENT[i]=$(sed -E 's/.*client=([^ ]*).*/\1/' <<<"$line")
	NATS_ROUTE[i]=$(sed -E 's/.*cluster=([^ ]*).*/\1/' <<<"$line")
}
start_nats 1 127.0.0.1 ""
start_nats 2 127.0.0.2 "${NATS_ROUTE[1]}"
start_nats 3 127.0.0.3 "${NATS_ROUTE[1]},${NATS_ROUTE[2]}"
NATS_URLS="${NATS_CLIENT[1]},${NATS_CLIENT[2]},${NATS_CLIENT[3]}"
"$NATSTOOL" ready --urls "$NATS_URLS" || die "the NATS nodes did not form one cluster"
pass "3 NATS nodes form one cluster: $NATS_URLS"

# ---------------------------------------------------------------- replicas

# The name in every connection string, which every replica accepts; it
# resolves nowhere: clients reach replicas through their --hub lists.
SHARED=hub.dsproxy.test
declare -A HUB_ADDR=() HUB_PROC=() HUB_DIRS=()

# start_replica R HOST: replica R on HOST, data in WORK/hub-R. Replicas
# after the first get a copy of the first one's tls directory: one CA, which
# issues each replica a certificate for its own names.
start_replica() {
	local r=$1 host=$2 dir=$WORK/hub-$1
	if [[ -n ${HUB_DIRS[A]:-} ]]; then
		mkdir -p "$dir"
		cp -r "${HUB_DIRS[A]}/tls" "$dir/tls"
	fi
	start_hub "dsproxy-hub-$r" "$dir" "$host" --hostname "$SHARED" --public-addr "$SHARED" \
		--registry "$PG_URL" --nats "$NATS_URLS" --shutdown-grace 0 \
		--log-format json --log-level debug || die "replica $r did not start"
	HUB_ADDR[$r]=$host:$HUB_PORT HUB_PROC[$r]=$HUB_NAME HUB_DIRS[$r]=$dir
}
start_replica A 127.0.0.1
start_replica B 127.0.0.2
start_replica C 127.0.0.3
CA=${HUB_DIRS[A]}/tls/ca.pem
pass "replicas A ${HUB_ADDR[A]}, B ${HUB_ADDR[B]}, C ${HUB_ADDR[C]} on one PostgreSQL registry and NATS"

# --public-addr: the connection strings name the shared name.
OWNER_CS=$(cat "${HUB_DIRS[A]}/iothubowner.connection-string")
[[ $OWNER_CS == "HostName=$SHARED;"* ]] || die "replica A's owner connection string names ${OWNER_CS%%;*}, want HostName=$SHARED (--public-addr)"
CLIENT=(--connection-string "$OWNER_CS" --ca-file "$CA" --hub "${HUB_ADDR[A]}")

# metric R NAME: the value of the metric line NAME (with its labels) on
# replica R as an integer, 0 when absent; "?" (and status 1) when the
# replica does not answer.
metric() {
	local out
	if ! out=$(curl -sf --max-time 5 --cacert "$CA" "https://${HUB_ADDR[$1]}/metrics"); then
		echo '?'
		return 1
	fi
	awk -v n="$2" '$1 == n {v = $2} END {printf "%.0f\n", v + 0}' <<<"$out"
}
# connected_on R: whether replica R holds the device's session.
connected_on() { [[ $(metric "$1" dsproxy_hub_connected_devices) == 1 ]]; }

# ---------------------------------------------------------------- sshd, device, services

start_private_sshd
if ! out=$(ssh "${SSH_OPTS[@]}" -p "$SSHD_PORT" "$USER_NAME@127.0.0.1" 'echo direct-ok' </dev/null 2>"$LOGS/ssh-direct.log") ||
	[[ $out != direct-ok ]]; then
	die "ssh straight to the private sshd does not work (the test setup, not dsproxy): $(cat "$LOGS/ssh-direct.log")"
fi

DEV_CS=$("$BIN" devices add "${CLIENT[@]}" e2e-dev 2>>"$LOGS/devices-cli.log") || die "devices add through replica A: $(tail -n 3 "$LOGS/devices-cli.log")"
start dsproxy-device "$BIN" device --connection-string "$DEV_CS" --ca-file "$CA" \
	--hub "${HUB_ADDR[B]},${HUB_ADDR[C]},${HUB_ADDR[A]}" --target "ssh=127.0.0.1:$SSHD_PORT" \
	--keepalive 2s --keepalive-timeout 2s --log-format json --log-level debug
if wait_for "device on replica B" 20 dsproxy-device connected_on B; then
	pass "a device e2e-dev (--hub B,C,A) holds its session on replica B"
else
	die "device e2e-dev did not connect to replica B"
fi

# start_service NAME MODE: a service proxy for e2e-dev that knows replica A
# only; sets SVC_PORT.
start_service() {
	local name=$1 mode=$2 attempt port
	SVC_PORT=
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		start "$name-$attempt" "$BIN" service "${CLIENT[@]}" --device-id e2e-dev --mode "$mode" \
			--listen "127.0.0.1:$port" --log-format json --log-level debug
		if wait_for "service ($mode) on port $port" 15 "$name-$attempt" port_open "$port"; then
			SVC_PORT=$port
			return 0
		fi
		bind_failed "$name-$attempt" || return 1
	done
	return 1
}
start_service dsproxy-service-session session || die "service proxy (session) did not start"
SVC_SESSION=$SVC_PORT
start_service dsproxy-service-per-stream per-stream || die "service proxy (per-stream) did not start"
SVC_STREAM=$SVC_PORT
declare -A MODE_PORT=([session]=$SVC_SESSION [per-stream]=$SVC_STREAM)

# ---------------------------------------------------------------- a, b

CLIENT_TIMEOUT=30
EXPECTED=hello-from-device

# ssh_ok PORT [LOG]: ssh through PORT runs a command on the device.
ssh_ok() {
	local out
	out=$(timeout "$CLIENT_TIMEOUT" ssh "${SSH_OPTS[@]}" -o ConnectTimeout=5 -p "$1" "$USER_NAME@127.0.0.1" \
		"echo $EXPECTED" </dev/null 2>>"$LOGS/${2:-ssh}.err") && [[ $out == "$EXPECTED" ]]
}

for mode in session per-stream; do
	t0=$(now_ns)
	if ssh_ok "${MODE_PORT[$mode]}" "ssh-a-$mode"; then
		pass "a [$mode] ssh through replica A runs a command on the device on B ($(secs_since "$t0")s)"
	else
		fail "a [$mode] ssh through replica A: $(tail -n 3 "$LOGS/ssh-a-$mode.err")"
	fi
done

head -c 8M /dev/urandom >"$DATA/src.bin"
SRC_SUM=$(sha256sum "$DATA/src.bin" | cut -d' ' -f1)
for mode in session per-stream; do
	port=${MODE_PORT[$mode]} there=$DATA/on-device-$mode.bin back=$DATA/back-$mode.bin rc=0
	t0=$(now_ns)
	timeout "$CLIENT_TIMEOUT" scp "${SSH_OPTS[@]}" -P "$port" "$DATA/src.bin" "$USER_NAME@127.0.0.1:$there" \
		</dev/null 2>"$LOGS/scp-b-$mode.err" || rc=$?
	((rc == 0)) && { timeout "$CLIENT_TIMEOUT" scp "${SSH_OPTS[@]}" -P "$port" "$USER_NAME@127.0.0.1:$there" "$back" \
		</dev/null 2>>"$LOGS/scp-b-$mode.err" || rc=$?; }
	if ((rc != 0)); then
		fail "b [$mode] scp through replica A exited $rc: $(tail -n 3 "$LOGS/scp-b-$mode.err")"
	elif [[ $(sha256sum <"$there" | cut -d' ' -f1) == "$SRC_SUM" && $(sha256sum <"$back" | cut -d' ' -f1) == "$SRC_SUM" ]]; then
		pass "b [$mode] scp 8 MiB to the device and back through replica A ($(secs_since "$t0")s), sha256 match"
	else
		fail "b [$mode] sha256 mismatch after scp through replica A"
	fi
	rm -f "$there" "$back"
done

# The streams ran on B: B started them and relayed their bytes; A relayed
# nothing. (Relayed bytes are counted when a stream ends.)
started_a=$(metric A dsproxy_hub_streams_started_total) || true
started_b=$(metric B dsproxy_hub_streams_started_total) || true
bytes_a=$(metric A 'dsproxy_hub_relayed_bytes_total{direction="up"}') || true
bytes_b=$(metric B 'dsproxy_hub_relayed_bytes_total{direction="up"}') || true
if [[ $started_a == 0 && $started_b != [0?] && $bytes_a == 0 && $bytes_b != [0?] ]]; then
	pass "a the streams ran on replica B ($started_b started, $bytes_b bytes up), none on A"
else
	fail "a streams started on A $started_a, on B $started_b; bytes relayed up on A $bytes_a, on B $bytes_b: want all on B"
fi

# ---------------------------------------------------------------- c: a NATS node dies

# nats_node_of R: the index of the NATS node replica R is connected to.
nats_node_of() { nats_node_of_pid "${PROC_PID[${HUB_PROC[$1]}]}"; }

# banner_ok PORT: a new stream through PORT reaches sshd (its banner comes
# back): the cheapest probe of stream setup, without ssh's own handshake.
banner_ok() {
	timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 2 line <&3 && [[ $line == SSH-* ]]' _ "$1" 2>/dev/null
}

# start_paced NAME PORT DIR: start_transfer, with the device sending about
# 2.5 MB/s, so that the transfer does not take the CPU the timings need. The
# loop ends when a write fails (head dies of SIGPIPE once the session is
# gone); a loop that went on regardless outlived the test under init.
# The command carries this run's work directory, so that paced_gone finds
# this run's senders and no one else's.
start_paced() {
	start_transfer "$1" "$2" "$3" "while head -c 262144 /dev/zero; do sleep 0.1; done # paced $WORK"
}

# paced_gone: no paced sender of this run is left on the device side.
paced_gone() { ! pgrep -f "# paced $WORK\$" >/dev/null; }

# stop_paced NAME: stops the paced transfer NAME and checks that its sender
# on the device side ended with the session.
stop_paced() {
	stop_proc "$1" "$TRANSFER_PID" || true
	wait "$TRANSFER_WRAPPER" 2>/dev/null || true
	if wait_for "$1: the sender on the device side to end" 5 "" paced_gone; then
		pass "${1#ssh-} the paced sender on the device side ended with its session"
	else
		fail "${1#ssh-} the paced sender on the device side outlived its session: $(pgrep -fa "# paced $WORK\$" | head -n 2)"
	fi
}

log "c: kill -9 of a NATS node while a transfer runs"
N=$(nats_node_of B) || N=2
log "c: replica B is connected to NATS node n$N; A to n$(nats_node_of A || echo '?')"
C=$WORK/c
start_paced ssh-c "$SVC_SESSION" "$C"
if ! wait_for "transfer through replica A" 20 "" transfer_at_least $((1 << 20)); then
	fail "c no bytes flowed through the service proxy: $(tail -n 3 "$LOGS/ssh-c.err")"
else
	# What a probe costs with everything up, for comparison.
	t0=$(now_ns)
	banner_ok "$SVC_STREAM" || fail "c a new stream (per-stream) did not reach sshd before any kill"
	C_BEFORE=$(secs_since "$t0")
	kill -KILL "${PROC_PID[nats-n$N]}"
	t_kill=$(now_ns)
	{ wait "${PROC_PID[nats-n$N]}"; } 2>/dev/null || true
	b0=$(transfer_bytes)
	# New per-stream streams (each routed over NATS), back to back, until
	# one reaches sshd.
	ok=0 tries=0
	while (($(now_ns) - t_kill < 10000000000)); do
		tries=$((tries + 1))
		if banner_ok "$SVC_STREAM"; then
			ok=1
			break
		fi
	done
	C_SECS=$(secs_since "$t_kill")
	if ((ok == 0)); then
		fail "c no new stream reached sshd within 10 s of kill -9 of NATS node n$N"
	elif (($(now_ns) - t_kill <= 1000000000)); then
		pass "c a new stream reaches sshd ${C_SECS}s after kill -9 of NATS node n$N (attempt $tries; one took ${C_BEFORE}s before the kill; goal: 1 s)"
	else
		fail "c the first new stream reached sshd only ${C_SECS}s after kill -9 of NATS node n$N (attempt $tries; one took ${C_BEFORE}s before the kill; goal: 1 s)"
	fi
	# The running transfer goes on.
	sleep 1
	b1=$(transfer_bytes || echo 0)
	if [[ -e $C/rc ]]; then
		fail "c the running transfer ended after kill -9 of NATS node n$N (exit $(cat "$C/rc")): $(tail -n 3 "$LOGS/ssh-c.err")"
	elif ((b1 > b0)); then
		pass "c the running transfer went on: $(((b1 - b0) >> 10)) KiB in the second after kill -9 of NATS node n$N"
	else
		fail "c the running transfer stalled after kill -9 of NATS node n$N ($b0 bytes, then $b1)"
	fi
	for mode in session per-stream; do
		if ssh_ok "${MODE_PORT[$mode]}" "ssh-c-$mode"; then
			pass "c [$mode] ssh through replica A works with NATS node n$N gone"
		else
			fail "c [$mode] ssh through replica A with NATS node n$N gone: $(tail -n 3 "$LOGS/ssh-c-$mode.err")"
		fi
	done
fi
stop_paced ssh-c

# ---------------------------------------------------------------- d: replica B dies

log "d: kill -9 of replica B (pid ${PROC_PID[${HUB_PROC[B]}]})"
kill -KILL "${PROC_PID[${HUB_PROC[B]}]}"
t_kill=$(now_ns)
{ wait "${PROC_PID[${HUB_PROC[B]}]}"; } 2>/dev/null || true
back_on() { connected_on A || connected_on C; }
if wait_for "device back on A or C" 10 dsproxy-device back_on; then
	D_SECS=$(secs_since "$t_kill")
	where=C
	connected_on A && where=A
	# New streams through A, in session mode (whose session was sent to
	# B for this device), until one reaches sshd.
	ok=0
	while (($(now_ns) - t_kill < 10000000000)); do
		if banner_ok "$SVC_SESSION"; then
			ok=1
			break
		fi
		sleep 0.05
	done
	D_STREAM_SECS=$(secs_since "$t_kill")
	if ((ok)); then
		pass "d the device is back on replica $where ${D_SECS}s after kill -9 of B; a new stream through A reaches sshd after ${D_STREAM_SECS}s (goal: 10 s)"
	else
		fail "d the device is back on replica $where after ${D_SECS}s, but no new stream through A reaches sshd 10 s after the kill"
	fi
	for mode in session per-stream; do
		if ssh_ok "${MODE_PORT[$mode]}" "ssh-d-$mode"; then
			pass "d [$mode] ssh through replica A works with B gone"
		else
			fail "d [$mode] ssh through replica A with B gone: $(tail -n 3 "$LOGS/ssh-d-$mode.err")"
		fi
	done
	if [[ $where == C ]]; then
		started_a=$(metric A dsproxy_hub_streams_started_total) || true
		started_c=$(metric C dsproxy_hub_streams_started_total) || true
		if [[ $started_a == 0 && $started_c != [0?] ]]; then
			pass "d the streams after the failover ran on replica C ($started_c started), none on A"
		else
			fail "d streams started on A $started_a, on C $started_c: want all on C"
		fi
	fi
else
	fail "d the device is not back on A or C 10 s after kill -9 of replica B"
fi
# ---------------------------------------------------------------- e: PostgreSQL stops

# pg_ctl_owner ARGS...: pg_ctl on the test's PostgreSQL, as its owner.
pg_ctl_owner() { pg_as_owner "$(pg_bindir)/pg_ctl" -D "$PG_DIR/data" "$@" >>"$LOGS/pg_ctl.log" 2>&1; }

log "e: PostgreSQL stops while a transfer runs, and starts again"
E=$WORK/e
start_paced ssh-e "$SVC_SESSION" "$E"
if ! wait_for "transfer through replica A" 20 "" transfer_at_least $((1 << 20)); then
	fail "e no bytes flowed through the service proxy: $(tail -n 3 "$LOGS/ssh-e.err")"
elif ! pg_ctl_owner -m immediate -w stop; then
	fail "e could not stop PostgreSQL: $(tail -n 3 "$LOGS/pg_ctl.log")"
else
	t_stop=$(now_ns)
	b0=$(transfer_bytes)
	if banner_ok "$SVC_STREAM"; then
		fail "e a new per-stream stream worked with PostgreSQL down: want it refused (every request authenticates against the registry)"
	else
		pass "e a new per-stream stream is refused with PostgreSQL down ($(secs_since "$t_stop")s after the stop)"
	fi
	if banner_ok "$SVC_SESSION"; then E_SESSION=works; else E_SESSION=refused; fi
	log "e: a new session-mode stream with PostgreSQL down: $E_SESSION"
	sleep 1
	b1=$(transfer_bytes || echo 0)
	if [[ -e $E/rc ]]; then
		fail "e the running transfer ended when PostgreSQL stopped (exit $(cat "$E/rc")): $(tail -n 3 "$LOGS/ssh-e.err")"
	elif ((b1 > b0)); then
		pass "e the running transfer went on with PostgreSQL down: $(((b1 - b0) >> 10)) KiB in a second"
	else
		fail "e the running transfer stalled with PostgreSQL down ($b0 bytes, then $b1)"
	fi
	# pg_ctl restart starts it again with the options it ran with.
	if ! pg_ctl_owner -w -t 60 restart; then
		fail "e could not start PostgreSQL again: $(tail -n 3 "$LOGS/pg_ctl.log")"
	else
		t_start=$(now_ns)
		ok=0
		while (($(now_ns) - t_start < 10000000000)); do
			if banner_ok "$SVC_STREAM"; then
				ok=1
				break
			fi
			sleep 0.05
		done
		E_SECS=$(secs_since "$t_start")
		if ((ok)); then
			pass "e new streams work again ${E_SECS}s after PostgreSQL is back"
		else
			fail "e new streams still fail 10 s after PostgreSQL is back"
		fi
	fi
fi
stop_paced ssh-e

SUMMARY="; new stream ${C_SECS:-?}s after a NATS node died; device back ${D_SECS:-?}s (streams ${D_STREAM_SECS:-?}s) after its replica died; streams ${E_SECS:-?}s after PostgreSQL was back"
log "200 concurrent reconnects of one device: see hub/cluster_test.go TestClusterNewestSessionWins (go test ./hub)"
