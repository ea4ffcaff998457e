#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# e2e-ssh.sh: the end-to-end test of dsproxy with real OpenSSH.
#
# Everything runs on 127.0.0.1, in a temporary work directory that is removed
# on exit, together with every process the script started:
#
#   a private sshd (own host key, an authorized test key, a free port)
#   dsproxy hub      (own data dir, generated CA)
#   dsproxy device   (--target ssh=127.0.0.1:SSHD_PORT)
#   dsproxy service  (--device-id e2e-dev --listen 127.0.0.1:PORT)
#   dsproxy dev      (hub + device + service in one process)
#
# and then checks, each printing PASS or FAIL:
#   a. ssh runs a command on the "device"
#   b. scp copies a 32 MiB random file there and back; sha256 all match
#   c. ssh 'sha256sum' < file (needs half-close) prints the right hash
#   d. a-c again through `dsproxy dev`
#   e. kill -9 of the device process mid-transfer ends the ssh client with an
#      error within 10 s; the hub keeps serving another device; the restarted
#      device is reachable again.
#   f. ssh -o ProxyCommand='dsproxy service --stdio ...': a command, half-close,
#      a rejected stream's reason on ssh's stderr; ssh with the config blocks
#      that dsproxy ssh-config writes
#   g. one service proxy with two --forward ports
#   h. dsproxy hub show, streams, logs, and the hub's /metrics
#   i. a command configured from a YAML file (--config), and precedence
#
# Usage: scripts/e2e-ssh.sh
# Environment:
#   DSPROXY_BIN   the dsproxy binary to test (default: built from this checkout)
#   E2E_KEEP=1    keep the work directory (its path is printed)
#
# Needs: bash, coreutils, OpenSSH (sshd, ssh, scp, ssh-keygen), Go (unless
# DSPROXY_BIN is set), and python3 or perl to ask the kernel for free ports.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-e2e.XXXXXX")
LOGS=$WORK/logs
DATA=$WORK/data
mkdir -p "$LOGS" "$DATA"

E2E_NAME=e2e
# shellcheck source=scripts/lib/e2e.sh
source "$ROOT/scripts/lib/e2e.sh"


cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	finish "$rc" "${E_SECS:+; ssh ended ${E_SECS}s after kill -9 of the device}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools

for tool in sshd ssh scp ssh-keygen sha256sum; do
	if ! command -v "$tool" >/dev/null && ! [[ -x /usr/sbin/$tool ]]; then
		die "$tool not found: install OpenSSH (Debian/Ubuntu: apt-get install -y openssh-server openssh-client)"
	fi
done
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
use_binary

# ---------------------------------------------------------------- sshd

start_private_sshd
# Sanity check: sshd itself, without dsproxy, so that a failure below is
# dsproxy's.
if ! out=$(ssh "${SSH_OPTS[@]}" -p "$SSHD_PORT" "$USER_NAME@127.0.0.1" 'echo direct-ok' </dev/null 2>"$LOGS/ssh-direct.log") ||
	[[ $out != direct-ok ]]; then
	die "ssh straight to the private sshd does not work (the test setup, not dsproxy): $(cat "$LOGS/ssh-direct.log")"
fi
log "private sshd on 127.0.0.1:$SSHD_PORT works"

# ---------------------------------------------------------------- hub

HUB_DIR=$WORK/hub
CA=$HUB_DIR/tls/ca.pem
start_hub dsproxy-hub "$HUB_DIR" 127.0.0.1 --log-format json --log-level debug || die "dsproxy hub did not start"
OWNER_CS=$(cat "$HUB_DIR/iothubowner.connection-string")
if grep -qF "$OWNER_CS" "$LOGS/$HUB_NAME.out"; then
	pass "hub printed the owner connection string on first start"
else
	fail "hub did not print the owner connection string on stdout on first start"
fi
if [[ $(stat -c %a "$HUB_DIR/iothubowner.connection-string") == 600 ]]; then
	pass "owner connection string file is mode 0600"
else
	fail "owner connection string file is mode $(stat -c %a "$HUB_DIR/iothubowner.connection-string"), want 0600"
fi

CLIENT=(--connection-string "$OWNER_CS" --ca-file "$CA")

# ---------------------------------------------------------------- devices

# add_device ID: registers ID and prints its connection string; on failure
# it says why on stderr.
add_device() {
	local cs
	if ! cs=$("$BIN" devices add "${CLIENT[@]}" "$1" 2>>"$LOGS/devices-cli.log"); then
		printf 'dsproxy devices add %s failed: %s\n' "$1" "$(tail -n 3 "$LOGS/devices-cli.log")" >&2
		return 1
	fi
	if [[ $cs != *"DeviceId=$1;"* || $cs != *SharedAccessKey=* ]]; then
		printf 'dsproxy devices add %s printed no device connection string: %q\n' "$1" "$cs" >&2
		return 1
	fi
	printf '%s\n' "$cs"
}

# device_state ID: the hub's connectionState of ID.
device_state() {
	"$BIN" devices show --json "${CLIENT[@]}" "$1" 2>>"$LOGS/devices-cli.log" |
		sed -nE 's/.*"connectionState": *"([^"]*)".*/\1/p'
}
device_is() { [[ $(device_state "$1") == "$2" ]]; }

# start_device NAME ID CS: runs a device agent and waits until the hub shows
# it connected.
start_device() {
	start "$1" "$BIN" device --connection-string "$3" --ca-file "$CA" \
		--target "ssh=127.0.0.1:$SSHD_PORT" --log-format json --log-level debug
	wait_for "device $2 connected" 20 "$1" device_is "$2" Connected
}

# start_service NAME ID [FLAG...]: runs a service proxy for ID on a free
# port, with FLAGs; sets SVC_PORT.
start_service() {
	local name=$1 id=$2 attempt port
	shift 2
	SVC_PORT=
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		start "$name-$attempt" "$BIN" service "${CLIENT[@]}" --device-id "$id" \
			--listen "127.0.0.1:$port" --log-format json --log-level debug "$@"
		if wait_for "service for $id on port $port" 15 "$name-$attempt" port_open "$port"; then
			SVC_PORT=$port
			return 0
		fi
		bind_failed "$name-$attempt" || return 1
	done
	return 1
}

DEV_CS=$(add_device e2e-dev) || die "devices add e2e-dev"
pass "devices add e2e-dev printed the device connection string"
start_device dsproxy-device e2e-dev "$DEV_CS" || die "device e2e-dev did not connect"
start_service dsproxy-service e2e-dev || die "service proxy for e2e-dev did not start"
SVC1_PORT=$SVC_PORT

# ---------------------------------------------------------------- checks

head -c 32M /dev/urandom >"$DATA/src.bin"
SRC_SUM=$(sha256sum "$DATA/src.bin" | cut -d' ' -f1)
EXPECTED_A=$(printf 'hello-from-device\n%s' "$(hostname)")

# Every client command is bounded, so that a hang fails the run instead of
# stalling it: timeout exits 124.
CLIENT_TIMEOUT=60

# exit_reason RC: how a bounded client command ended.
exit_reason() {
	if (($1 == 124)); then echo "did not finish in $CLIENT_TIMEOUT s"; else echo "exited $1"; fi
}

# check_a VIA PORT: a command runs on the device.
check_a() {
	local via=$1 port=$2 out t0 rc=0
	t0=$(now_ns)
	out=$(timeout "$CLIENT_TIMEOUT" ssh "${SSH_OPTS[@]}" -p "$port" "$USER_NAME@127.0.0.1" \
		'echo hello-from-device; hostname' </dev/null 2>"$LOGS/ssh-a-$via.err") || rc=$?
	if ((rc != 0)); then
		fail "a [$via] ssh $(exit_reason "$rc"): $(tail -n 3 "$LOGS/ssh-a-$via.err")"
		return 0
	fi
	if [[ $out == "$EXPECTED_A" ]]; then
		pass "a [$via] ssh runs a command on the device ($(secs_since "$t0")s)"
	else
		fail "a [$via] ssh printed $(printf %q "$out"), want $(printf %q "$EXPECTED_A")"
	fi
}

# check_b VIA PORT: scp 32 MiB there and back.
check_b() {
	local via=$1 port=$2 t0 there back sum_there sum_back up down rc=0
	there=$DATA/on-device-$via.bin
	back=$DATA/back-$via.bin
	t0=$(now_ns)
	timeout "$CLIENT_TIMEOUT" scp "${SSH_OPTS[@]}" -P "$port" "$DATA/src.bin" "$USER_NAME@127.0.0.1:$there" \
		</dev/null 2>"$LOGS/scp-b-$via.err" || rc=$?
	if ((rc != 0)); then
		fail "b [$via] scp to the device $(exit_reason "$rc"): $(tail -n 3 "$LOGS/scp-b-$via.err")"
		return 0
	fi
	up=$(secs_since "$t0")
	t0=$(now_ns)
	timeout "$CLIENT_TIMEOUT" scp "${SSH_OPTS[@]}" -P "$port" "$USER_NAME@127.0.0.1:$there" "$back" \
		</dev/null 2>>"$LOGS/scp-b-$via.err" || rc=$?
	if ((rc != 0)); then
		fail "b [$via] scp from the device $(exit_reason "$rc"): $(tail -n 3 "$LOGS/scp-b-$via.err")"
		return 0
	fi
	down=$(secs_since "$t0")
	sum_there=$(sha256sum "$there" | cut -d' ' -f1)
	sum_back=$(sha256sum "$back" | cut -d' ' -f1)
	if [[ $sum_there == "$SRC_SUM" && $sum_back == "$SRC_SUM" ]]; then
		pass "b [$via] scp 32 MiB to the device (${up}s) and back (${down}s), sha256 match"
	else
		fail "b [$via] sha256 mismatch: source $SRC_SUM, on device $sum_there, back $sum_back"
	fi
	rm -f "$there" "$back"
}

# check_c VIA PORT: stdin to a remote command, ended by half-close.
check_c() {
	local via=$1 port=$2 out t0 rc=0
	t0=$(now_ns)
	# Without half-close, sha256sum never sees EOF: bound the wait.
	out=$(timeout "$CLIENT_TIMEOUT" ssh "${SSH_OPTS[@]}" -p "$port" "$USER_NAME@127.0.0.1" sha256sum <"$DATA/src.bin" 2>"$LOGS/ssh-c-$via.err") || rc=$?
	if ((rc == 124)); then
		fail "c [$via] ssh 'sha256sum' < file did not finish in $CLIENT_TIMEOUT s: EOF (half-close) did not reach the device?"
	elif ((rc != 0)); then
		fail "c [$via] ssh 'sha256sum' < file exited $rc: $(tail -n 3 "$LOGS/ssh-c-$via.err")"
	elif [[ ${out%% *} == "$SRC_SUM" ]]; then
		pass "c [$via] ssh 'sha256sum' < 32 MiB file prints the right hash ($(secs_since "$t0")s)"
	else
		fail "c [$via] ssh 'sha256sum' printed $(printf %q "$out"), want $SRC_SUM"
	fi
}

log "checks through dsproxy service (127.0.0.1:$SVC1_PORT)"
check_a service "$SVC1_PORT"
check_b service "$SVC1_PORT"
check_c service "$SVC1_PORT"

# The default mode carries connections over one session; the Azure-style
# per-stream mode must work as well.
if start_service dsproxy-service-ps e2e-dev --mode per-stream; then
	log "checks through dsproxy service --mode per-stream (127.0.0.1:$SVC_PORT)"
	check_a service-per-stream "$SVC_PORT"
	check_b service-per-stream "$SVC_PORT"
	check_c service-per-stream "$SVC_PORT"
else
	fail "service proxy --mode per-stream for e2e-dev did not start"
fi

# ---------------------------------------------------------------- f: ProxyCommand

log "f: ssh -o ProxyCommand='dsproxy service --stdio --device-id %h'"
OWNER_CS_FILE=$WORK/owner.cs
(umask 077 && printf '%s\n' "$OWNER_CS" >"$OWNER_CS_FILE")
PROXY_CMD="$BIN service --stdio --connection-string-file $OWNER_CS_FILE --ca-file $CA --device-id %h"
rc=0
t0=$(now_ns)
out=$(timeout "$CLIENT_TIMEOUT" ssh "${SSH_OPTS[@]}" -o ProxyCommand="$PROXY_CMD" "$USER_NAME@e2e-dev" \
	'echo hello-from-device; hostname' </dev/null 2>"$LOGS/ssh-f.err") || rc=$?
if ((rc == 0)) && [[ $out == "$EXPECTED_A" ]]; then
	pass "f [stdio] ssh through ProxyCommand runs a command on the device ($(secs_since "$t0")s)"
else
	fail "f [stdio] ssh through ProxyCommand $(exit_reason "$rc"), printed $(printf %q "$out"): $(tail -n 3 "$LOGS/ssh-f.err")"
fi
rc=0
out=$(timeout "$CLIENT_TIMEOUT" ssh "${SSH_OPTS[@]}" -o ProxyCommand="$PROXY_CMD" "$USER_NAME@e2e-dev" \
	sha256sum <"$DATA/src.bin" 2>>"$LOGS/ssh-f.err") || rc=$?
if ((rc == 0)) && [[ ${out%% *} == "$SRC_SUM" ]]; then
	pass "f [stdio] ssh 'sha256sum' < 32 MiB file through ProxyCommand prints the right hash"
else
	fail "f [stdio] ssh 'sha256sum' through ProxyCommand $(exit_reason "$rc"), printed $(printf %q "$out")"
fi
rc=0
timeout "$CLIENT_TIMEOUT" ssh "${SSH_OPTS[@]}" -o ProxyCommand="$PROXY_CMD --stream-name rdp" "$USER_NAME@e2e-dev" \
	true </dev/null 2>"$LOGS/ssh-f-rdp.err" || rc=$?
if ((rc != 0)) && grep -q 'no target named "rdp"' "$LOGS/ssh-f-rdp.err"; then
	pass "f [stdio] a rejected stream fails ssh with the device's reason on stderr: $(grep -m1 'dsproxy:' "$LOGS/ssh-f-rdp.err")"
else
	fail "f [stdio] rejected stream: ssh exited $rc, stderr: $(tail -n 3 "$LOGS/ssh-f-rdp.err")"
fi

log "f: ssh with the blocks from dsproxy ssh-config"
rc=0
"$BIN" ssh-config --connection-string-file "$OWNER_CS_FILE" --ca-file "$CA" --device-id e2e-dev \
	--user "$USER_NAME" >"$WORK/ssh_config" 2>>"$LOGS/devices-cli.log" || rc=$?
if ((rc != 0)) || grep -q SharedAccessKey "$WORK/ssh_config"; then
	fail "f [ssh-config] dsproxy ssh-config exited $rc or wrote a key: $(head -c 300 "$WORK/ssh_config")"
else
	out=$(timeout "$CLIENT_TIMEOUT" ssh -F "$WORK/ssh_config" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o BatchMode=yes -o LogLevel=ERROR -o IdentitiesOnly=yes -i "$WORK/client_ed25519" e2e-dev \
		'echo hello-from-device; hostname' </dev/null 2>"$LOGS/ssh-f-config.err") || rc=$?
	if ((rc == 0)) && [[ $out == "$EXPECTED_A" ]]; then
		pass "f [ssh-config] ssh e2e-dev works with the generated ~/.ssh/config block"
	else
		fail "f [ssh-config] ssh e2e-dev $(exit_reason "$rc"), printed $(printf %q "$out"): $(tail -n 3 "$LOGS/ssh-f-config.err")"
	fi
fi

# ---------------------------------------------------------------- g: --forward

log "g: one service proxy, two ports (--forward)"
FWD_OK=
for attempt in 1 2 3 4 5; do
	p1=$(free_port)
	p2=$(free_port)
	start "dsproxy-forward-$attempt" "$BIN" service "${CLIENT[@]}" --device-id e2e-dev \
		--forward "127.0.0.1:$p1=ssh" --forward "127.0.0.1:$p2=ssh" --log-format json --log-level debug
	if wait_for "forwards on ports $p1 and $p2" 15 "dsproxy-forward-$attempt" port_open "$p1" &&
		wait_for "second forward" 5 "dsproxy-forward-$attempt" port_open "$p2"; then
		FWD_OK=1
		break
	fi
	bind_failed "dsproxy-forward-$attempt" || break
done
if [[ -n $FWD_OK ]]; then
	check_a forward-1 "$p1"
	check_a forward-2 "$p2"
else
	fail "g service proxy with two --forward ports did not start"
fi

# ---------------------------------------------------------------- h: watching the hub

log "h: hub show, streams, logs and /metrics"
if out=$("$BIN" hub show "${CLIENT[@]}" 2>>"$LOGS/devices-cli.log") && [[ $out == *'"streamingEndpoints"'* ]]; then
	pass "h hub show prints the streaming endpoints"
else
	fail "h hub show printed $(printf %q "$out")"
fi
if out=$("$BIN" streams "${CLIENT[@]}" 2>>"$LOGS/devices-cli.log") && [[ $out == *DEVICE*STATE* ]]; then
	pass "h streams prints its table"
else
	fail "h streams printed $(printf %q "$out")"
fi
if out=$("$BIN" logs --device e2e-dev --json "${CLIENT[@]}" 2>>"$LOGS/devices-cli.log") &&
	[[ $out == *'"result": "ended"'* && $out == *'"result": "rejected"'* ]]; then
	pass "h logs --device e2e-dev shows the ended and the rejected streams"
else
	fail "h logs printed $(printf %q "${out:0:300}")"
fi
if command -v curl >/dev/null; then
	if out=$(curl -sf --max-time 5 --cacert "$CA" "https://127.0.0.1:$HUB_PORT/metrics") &&
		grep -qE '^dsproxy_hub_streams_ended_total\{result="ended"\} [1-9]' <<<"$out" &&
		grep -qE '^dsproxy_hub_connected_devices [1-9]' <<<"$out"; then
		pass "h /metrics counts the connected device and the ended streams"
	else
		fail "h /metrics: $(grep -E 'dsproxy_hub_(streams_ended_total|connected_devices)' <<<"$out" | head -5)"
	fi
else
	log "h: curl not found: /metrics not checked"
fi

# ---------------------------------------------------------------- i: --config

log "i: a command configured from a YAML file, and precedence"
cat >"$WORK/devices.yaml" <<EOF
connection-string-file: $OWNER_CS_FILE
ca-file: $CA
json: true
EOF
if out=$("$BIN" devices list --config "$WORK/devices.yaml" 2>>"$LOGS/devices-cli.log") && [[ $out == *'"deviceId": "e2e-dev"'* ]]; then
	pass "i devices list --config FILE takes its credential and --json from the file"
else
	fail "i devices list --config printed $(printf %q "${out:0:300}")"
fi
if out=$(DSPROXY_JSON=false "$BIN" devices list --config "$WORK/devices.yaml" 2>>"$LOGS/devices-cli.log") && [[ $out == DEVICE* ]]; then
	pass "i the environment (DSPROXY_JSON=false) beats the file"
else
	fail "i DSPROXY_JSON=false with --config printed $(printf %q "${out:0:300}")"
fi
printf 'listen: 1\n' >>"$WORK/devices.yaml"
if out=$("$BIN" devices list --config "$WORK/devices.yaml" 2>&1 >/dev/null); then
	fail "i an unknown key in the file was accepted"
elif [[ $out == *listen* ]]; then
	pass "i an unknown key in the file is an error naming it"
else
	fail "i unknown key: $(printf %q "$out")"
fi

# ---------------------------------------------------------------- d: dev

DEV_PORT=
for attempt in 1 2 3 4 5; do
	port=$(free_port)
	start "dsproxy-dev-$attempt" "$BIN" dev --target "127.0.0.1:$SSHD_PORT" \
		--listen "127.0.0.1:$port" --log-format json --log-level debug
	if wait_for "dsproxy dev on port $port" 20 "dsproxy-dev-$attempt" port_open "$port"; then
		DEV_PORT=$port
		DEV_NAME=dsproxy-dev-$attempt
		break
	fi
	bind_failed "dsproxy-dev-$attempt" || break
done
if [[ -z $DEV_PORT ]]; then
	fail "d dsproxy dev did not start"
elif ! wait_for "dsproxy dev 'ssh -p' line" 20 "$DEV_NAME" grep -q "ssh -p $DEV_PORT" "$LOGS/$DEV_NAME.out"; then
	fail "d dsproxy dev did not print 'ssh -p $DEV_PORT' on stdout"
else
	pass "d dsproxy dev printed: $(grep -m1 "ssh -p" "$LOGS/$DEV_NAME.out" | sed 's/^ *//')"
	log "checks through dsproxy dev (127.0.0.1:$DEV_PORT)"
	check_a dev "$DEV_PORT"
	check_b dev "$DEV_PORT"
	check_c dev "$DEV_PORT"
fi

# ---------------------------------------------------------------- e: kill -9

log "e: kill -9 of the device process in the middle of a transfer"
E=$WORK/e
start_transfer ssh-e "$SVC1_PORT" "$E"
SSH_E_PID=$TRANSFER_PID E_WRAPPER=$TRANSFER_WRAPPER

if ! [[ -r /proc/$SSH_E_PID/io ]]; then
	fail "e cannot read /proc/$SSH_E_PID/io to watch the transfer (not Linux, or /proc is restricted)"
elif ! wait_for "transfer through the service proxy" 20 "" transfer_at_least $((4 << 20)); then
	fail "e no bytes flowed through the service proxy (ssh 'cat /dev/zero'): $(tail -n 3 "$LOGS/ssh-e.err")"
else
	b0=$(transfer_bytes)
	t0=$(now_ns)
	# Let it run for about a second, watching it.
	while (($(now_ns) - t0 < 1000000000)) && [[ ! -e $E/rc ]]; do sleep 0.05; done
	b1=$(transfer_bytes || echo 0)
	if [[ -e $E/rc ]]; then
		fail "e the transfer ended by itself before the kill (exit $(cat "$E/rc")): $(tail -n 3 "$LOGS/ssh-e.err")"
	elif ((b1 <= b0)); then
		fail "e the transfer stalled before the kill ($b0 bytes, then $b1)"
	else
		log "e: transfer running: $(((b1 - b0) >> 20)) MiB in the last $(secs_since "$t0")s; kill -9 the device (pid ${PROC_PID[dsproxy-device]})"
		kill -KILL "${PROC_PID[dsproxy-device]}"
		t_kill=$(now_ns)
		# Reap it here, quietly (bash reports killed jobs).
		{ wait "${PROC_PID[dsproxy-device]}"; } 2>/dev/null || true
		deadline=$((t_kill + 10000000000))
		while [[ ! -e $E/rc ]] && (($(now_ns) < deadline)); do sleep 0.02; done
		if [[ ! -e $E/rc ]]; then
			fail "e ssh client still running 10 s after kill -9 of the device process: the hub or the service proxy did not end the stream"
			kill -KILL "$SSH_E_PID" 2>/dev/null || true
		else
			end_ns=$(cat "$E/end")
			d=$((end_ns - t_kill))
			E_SECS=$(printf '%d.%03d' $((d / 1000000000)) $((d / 1000000 % 1000)))
			rc=$(cat "$E/rc")
			if ((rc != 0)); then
				msg=$(head -n 1 "$LOGS/ssh-e.err")
				pass "e ssh client ended with exit $rc ${E_SECS}s after kill -9 of the device${msg:+ ($msg)}"
			else
				fail "e ssh client exited 0 ${E_SECS}s after kill -9 of the device: want an error"
			fi
		fi
	fi
fi
stop_proc ssh-e "$SSH_E_PID" || true
wait "$E_WRAPPER" 2>/dev/null || true

if alive "${PROC_PID[$HUB_NAME]}"; then
	pass "e hub still running after the device was killed"
else
	die "e the hub exited after the device was killed"
fi
if wait_for "hub marks e2e-dev disconnected" 40 "" device_is e2e-dev Disconnected; then
	pass "e hub shows e2e-dev Disconnected after kill -9"
else
	fail "e hub still shows e2e-dev $(device_state e2e-dev) 40 s after kill -9 of its agent"
fi

# Another device on the same hub.
DEV2_CS=$(add_device e2e-dev2) || die "devices add e2e-dev2"
if start_device dsproxy-device2 e2e-dev2 "$DEV2_CS" && start_service dsproxy-service2 e2e-dev2; then
	check_a service2-dev2 "$SVC_PORT"
else
	fail "e second device or its service proxy did not start"
fi

# The first device again, through the first service proxy.
if start_device dsproxy-device-restarted e2e-dev "$DEV_CS"; then
	check_a service-restarted "$SVC1_PORT"
else
	fail "e the restarted device e2e-dev did not reconnect"
fi

# Every process still running is stopped by cleanup; a dsproxy one that
# ignores SIGTERM fails the run.
