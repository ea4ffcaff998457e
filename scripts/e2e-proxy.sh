#!/usr/bin/env bash
# Functions run through wait_for look unused to shellcheck:
# shellcheck disable=SC2317,SC2329
#
# e2e-proxy.sh: dsproxy behind a corporate proxy, tested through a real
# proxy server (tinyproxy) on loopback.
#
# Go never sends requests for "localhost" or loopback IP literals through
# HTTPS_PROXY (net/http.ProxyFromEnvironment), so the hub is reached by the
# name hub.dsproxy.test, which this script adds to /etc/hosts as 127.0.0.1
# (and removes on exit) unless it already resolves. That needs root.
#
# Everything runs on 127.0.0.1, in a temporary work directory removed on exit
# together with every process the script started:
#
#   tinyproxy        (foreground, own config, CONNECT allowed to the hub port)
#   a TCP echo server (perl)
#   dsproxy hub      (--hostname hub.dsproxy.test)
#   dsproxy device / service --stdio with HTTPS_PROXY and NO_PROXY set
#
# and then checks, each printing PASS or FAIL, counting the CONNECT requests
# to the hub in tinyproxy's log:
#   a. REST calls (devices add, devices show) go through the proxy
#   b. the device's control session goes through the proxy
#   c. the device's side of a stream goes through the proxy (service direct);
#      1 MiB echoes back intact
#   d. the service's REST call and streaming WebSocket go through the proxy
#      (device direct); 1 MiB echoes back intact
#   e. NO_PROXY=hub.dsproxy.test: a device and a service connect with
#      HTTPS_PROXY set and zero CONNECTs reach the proxy
#   f. a proxy that refuses connections: the device keeps retrying and logs an
#      error that names the proxy; service --stdio exits non-zero saying so
#
# Usage: scripts/e2e-proxy.sh
# Environment:
#   DSPROXY_BIN   the dsproxy binary to test (default: built from this checkout)
#   E2E_KEEP=1    keep the work directory (its path is printed)
#
# Needs: bash, coreutils, tinyproxy (Debian: apt-get install -y tinyproxy),
# perl, Go (unless DSPROXY_BIN is set), root (or hub.dsproxy.test resolving
# to 127.0.0.1 already).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsproxy-proxy.XXXXXX")
LOGS=$WORK/logs
DATA=$WORK/data
mkdir -p "$LOGS" "$DATA"

E2E_NAME=e2e-proxy
# shellcheck source=scripts/lib/e2e.sh
source "$ROOT/scripts/lib/e2e.sh"

HUB_HOST=hub.dsproxy.test
# The line added to /etc/hosts carries this marker so that cleanup removes
# exactly it.
HOSTS_MARK="# dsproxy e2e-proxy $$"
HOSTS_ADDED=

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	if [[ -n $HOSTS_ADDED ]]; then
		# Rewrite in place: /etc/hosts is often a bind mount in containers,
		# which sed -i (a rename) cannot replace.
		grep -vF "$HOSTS_MARK" /etc/hosts >"$WORK/hosts.new" || true
		cat "$WORK/hosts.new" >/etc/hosts
	fi
	finish "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools

command -v tinyproxy >/dev/null || die "tinyproxy not found: install it (Debian/Ubuntu: apt-get install -y tinyproxy)"
command -v perl >/dev/null || die "perl not found"
use_binary

# ---------------------------------------------------------------- hub name

if addr=$(getent ahostsv4 "$HUB_HOST" 2>/dev/null | awk 'NR == 1 {print $1}') && [[ $addr == 127.* ]]; then
	log "$HUB_HOST already resolves to $addr"
elif ((EUID == 0)) && [[ -w /etc/hosts ]]; then
	printf '127.0.0.1 %s %s\n' "$HUB_HOST" "$HOSTS_MARK" >>/etc/hosts
	HOSTS_ADDED=1
	log "added '127.0.0.1 $HUB_HOST' to /etc/hosts (removed on exit)"
else
	die "$HUB_HOST does not resolve to 127.0.0.1 and /etc/hosts is not writable: run as root, or add '127.0.0.1 $HUB_HOST' to /etc/hosts"
fi

# ---------------------------------------------------------------- echo server

# One process per connection; echoes until EOF, then half-closes.
ECHO_PL='
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 16, ReuseAddr => 1) or die "bind: $!";
$| = 1;
print $s->sockport, "\n";
$SIG{CHLD} = "IGNORE";
while (1) {
	my $c = $s->accept or next;
	if (fork() == 0) {
		my $buf;
		while (my $n = sysread($c, $buf, 65536)) {
			my $off = 0;
			while ($off < $n) { my $w = syswrite($c, $buf, $n - $off, $off) or exit 1; $off += $w; }
		}
		shutdown($c, 1);
		exit 0;
	}
	close $c;
}'
start echo perl -e "$ECHO_PL"
wait_for "echo server" 10 echo test -s "$LOGS/echo.out" || die "echo server did not start"
ECHO_PORT=$(head -n 1 "$LOGS/echo.out")

# ---------------------------------------------------------------- hub

HUB_DIR=$WORK/hub
CA=$HUB_DIR/tls/ca.pem
hub_ready() { [[ -s $HUB_DIR/iothubowner.connection-string && -s $CA ]] && port_open "$1"; }
HUB_PORT=
for attempt in 1 2 3 4 5; do
	port=$(free_port)
	start "dsproxy-hub-$attempt" "$BIN" hub --listen "127.0.0.1:$port" --hostname "$HUB_HOST" \
		--data-dir "$HUB_DIR" --log-format json --log-level debug
	if wait_for "hub on port $port" 20 "dsproxy-hub-$attempt" hub_ready "$port"; then
		HUB_PORT=$port
		break
	fi
	bind_failed "dsproxy-hub-$attempt" || die "dsproxy hub did not start"
	log "hub: port $port was taken, retrying"
done
[[ -n $HUB_PORT ]] || die "hub: no free port after 5 attempts"
OWNER_CS=$(cat "$HUB_DIR/iothubowner.connection-string")
[[ $OWNER_CS == *"HostName=$HUB_HOST"* ]] || die "owner connection string does not name $HUB_HOST: $(redact <<<"$OWNER_CS")"
OWNER_CS_FILE=$WORK/owner.cs
(umask 077 && printf '%s\n' "$OWNER_CS" >"$OWNER_CS_FILE")
CLIENT=(--connection-string-file "$OWNER_CS_FILE" --ca-file "$CA")
MODE=() # extra flags of the service proxy in echo_through

# ---------------------------------------------------------------- tinyproxy

PROXY_LOG=
PROXY_PORT=
for attempt in 1 2 3 4 5; do
	port=$(free_port)
	cat >"$WORK/tinyproxy-$attempt.conf" <<EOF
Port $port
Listen 127.0.0.1
Timeout 600
LogLevel Connect
Allow 127.0.0.1
ConnectPort $HUB_PORT
MaxClients 100
EOF
	# -d: foreground, log to stdout.
	start "tinyproxy-$attempt" tinyproxy -d -c "$WORK/tinyproxy-$attempt.conf"
	if wait_for "tinyproxy on port $port" 10 "tinyproxy-$attempt" port_open "$port"; then
		PROXY_PORT=$port
		PROXY_LOG=$LOGS/tinyproxy-$attempt.out
		PROXY_CONF=$WORK/tinyproxy-$attempt.conf
		break
	fi
	grep -qiE 'address already in use|could not create listening socket' "$LOGS/tinyproxy-$attempt".* ||
		die "tinyproxy did not start"
done
[[ -n $PROXY_PORT ]] || die "tinyproxy: no free port after 5 attempts"
PROXY_URL=http://127.0.0.1:$PROXY_PORT

# connects: how many CONNECT requests to the hub tinyproxy has logged.
connects() { grep -cF "CONNECT $HUB_HOST:$HUB_PORT HTTP/" "$PROXY_LOG" || true; }
connects_above() { (($(connects) > $1)); }

# The environments a process runs in: through the proxy, exempt by NO_PROXY,
# and without any proxy variables at all.
VIA_PROXY=(env -u NO_PROXY -u no_proxy -u HTTP_PROXY -u http_proxy "HTTPS_PROXY=$PROXY_URL" "https_proxy=$PROXY_URL")
EXEMPT=(env -u HTTP_PROXY -u http_proxy "HTTPS_PROXY=$PROXY_URL" "https_proxy=$PROXY_URL" "NO_PROXY=$HUB_HOST" "no_proxy=$HUB_HOST")
DIRECT=(env -u NO_PROXY -u no_proxy -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy)

# device_state ID: the hub's connectionState of ID (asked directly).
device_state() {
	"${DIRECT[@]}" "$BIN" devices show --json "${CLIENT[@]}" "$1" 2>>"$LOGS/devices-cli.log" |
		sed -nE 's/.*"connectionState": *"([^"]*)".*/\1/p'
}
device_is() { [[ $(device_state "$1") == "$2" ]]; }

# start_device NAME ID CS ENV...: runs a device agent in ENV and waits until
# the hub shows it connected.
start_device() {
	local name=$1 id=$2 cs=$3
	shift 3
	start "$name" "$@" "$BIN" device --connection-string "$cs" --ca-file "$CA" \
		--target "echo=127.0.0.1:$ECHO_PORT" --log-format json --log-level debug
	wait_for "device $id connected" 20 "$name" device_is "$id" Connected
}

head -c 1M /dev/urandom >"$DATA/src.bin"
SRC_SUM=$(sha256sum "$DATA/src.bin" | cut -d' ' -f1)

# echo_through TAG ID ENV...: sends 1 MiB through `dsproxy service --stdio`
# (run in ENV) to ID's echo target; succeeds when it comes back intact.
echo_through() {
	local tag=$1 id=$2 rc=0 sum
	shift 2
	timeout 60 "$@" "$BIN" service --stdio "${CLIENT[@]}" "${MODE[@]}" --device-id "$id" --stream-name echo \
		<"$DATA/src.bin" >"$DATA/back-$tag.bin" 2>"$LOGS/service-$tag.log" || rc=$?
	if ((rc != 0)); then
		printf 'service --stdio exited %d: %s\n' "$rc" "$(tail -n 3 "$LOGS/service-$tag.log")"
		return 1
	fi
	sum=$(sha256sum "$DATA/back-$tag.bin" | cut -d' ' -f1)
	if [[ $sum != "$SRC_SUM" ]]; then
		printf 'echoed %d bytes with sha256 %s, want 1 MiB with %s\n' "$(stat -c %s "$DATA/back-$tag.bin")" "$sum" "$SRC_SUM"
		return 1
	fi
}

# ---------------------------------------------------------------- a: REST

log "a: REST calls through $PROXY_URL"
n0=$(connects)
if DEV_CS=$("${VIA_PROXY[@]}" "$BIN" devices add "${CLIENT[@]}" proxied-dev 2>"$LOGS/devices-add.log") &&
	[[ $DEV_CS == *"DeviceId=proxied-dev;"* ]]; then
	n1=$(connects)
	if ((n1 > n0)); then
		pass "a devices add through the proxy: $((n1 - n0)) CONNECT to $HUB_HOST:$HUB_PORT"
	else
		fail "a devices add with HTTPS_PROXY set made no CONNECT through the proxy"
	fi
else
	die "a devices add through the proxy failed: $(tail -n 3 "$LOGS/devices-add.log")"
fi
DEV2_CS=$("${DIRECT[@]}" "$BIN" devices add "${CLIENT[@]}" direct-dev 2>>"$LOGS/devices-add.log") || die "devices add direct-dev"
DEV3_CS=$("${DIRECT[@]}" "$BIN" devices add "${CLIENT[@]}" exempt-dev 2>>"$LOGS/devices-add.log") || die "devices add exempt-dev"

# ---------------------------------------------------------------- b: control session

log "b: device control session through the proxy"
n0=$(connects)
if start_device dsproxy-device-proxied proxied-dev "$DEV_CS" "${VIA_PROXY[@]}"; then
	n1=$(connects)
	if ((n1 > n0)); then
		pass "b device proxied-dev connected through the proxy: $((n1 - n0)) CONNECT"
	else
		fail "b device proxied-dev connected with HTTPS_PROXY set but made no CONNECT through the proxy"
	fi
else
	fail "b device proxied-dev did not connect through the proxy"
fi

# ---------------------------------------------------------------- c: device stream

log "c: the device's side of a stream through the proxy (service direct, per-stream mode)"
# In session mode the device's side of a stream rides on its control
# session (b); per-stream, it is a WebSocket of its own.
MODE=(--mode per-stream)
n0=$(connects)
if out=$(echo_through c proxied-dev "${DIRECT[@]}"); then
	n1=$(connects)
	if ((n1 - n0 >= 1)); then
		pass "c 1 MiB echoed intact; the device's stream WebSocket went through the proxy ($((n1 - n0)) CONNECT)"
	else
		fail "c 1 MiB echoed, but the device's stream WebSocket bypassed HTTPS_PROXY (0 CONNECT)"
	fi
else
	fail "c echo through proxied-dev: $out"
fi

# ---------------------------------------------------------------- d: service

log "d: service REST call and stream through the proxy (device direct)"
start_device dsproxy-device-direct direct-dev "$DEV2_CS" "${DIRECT[@]}" || die "device direct-dev did not connect"
n0=$(connects)
if out=$(echo_through d direct-dev "${VIA_PROXY[@]}"); then
	n1=$(connects)
	# One CONNECT for the REST call, one for the streaming WebSocket (its
	# own transport).
	if ((n1 - n0 >= 2)); then
		pass "d [per-stream] 1 MiB echoed intact; service REST call and stream WebSocket went through the proxy ($((n1 - n0)) CONNECT)"
	else
		fail "d [per-stream] 1 MiB echoed, but only $((n1 - n0)) CONNECT through the proxy, want 2 (REST call and stream WebSocket)"
	fi
else
	fail "d [per-stream] echo through direct-dev: $out"
fi
MODE=()
n0=$(connects)
if out=$(echo_through d-session direct-dev "${VIA_PROXY[@]}"); then
	n1=$(connects)
	if ((n1 - n0 >= 1)); then
		pass "d [session] 1 MiB echoed intact; the service's session went through the proxy ($((n1 - n0)) CONNECT)"
	else
		fail "d [session] 1 MiB echoed, but the service's session bypassed HTTPS_PROXY (0 CONNECT)"
	fi
else
	fail "d echo with a proxied service: $out"
fi

# ---------------------------------------------------------------- e: NO_PROXY

log "e: NO_PROXY=$HUB_HOST exempts the hub"
n0=$(connects)
if start_device dsproxy-device-exempt exempt-dev "$DEV3_CS" "${EXEMPT[@]}"; then
	if out=$(echo_through e exempt-dev "${EXEMPT[@]}"); then
		n1=$(connects)
		if ((n1 == n0)); then
			pass "e device and service with HTTPS_PROXY and NO_PROXY=$HUB_HOST: 1 MiB echoed, 0 CONNECT through the proxy"
		else
			fail "e NO_PROXY=$HUB_HOST ignored: $((n1 - n0)) CONNECT through the proxy"
		fi
	else
		fail "e echo with NO_PROXY: $out"
	fi
else
	fail "e device exempt-dev with NO_PROXY did not connect"
fi

# ---------------------------------------------------------------- f: refusing proxy

log "f: a proxy that refuses connections"
DEAD_PORT=$(free_port)
DEAD=(env -u NO_PROXY -u no_proxy "HTTPS_PROXY=http://127.0.0.1:$DEAD_PORT" "https_proxy=http://127.0.0.1:$DEAD_PORT")
stop_proc dsproxy-device-exempt "${PROC_PID[dsproxy-device-exempt]}" || true
wait_for "device exempt-dev disconnected" 40 "" device_is exempt-dev Disconnected || true
proxy_error_logged() { grep -q "127.0.0.1:$DEAD_PORT" "$LOGS/dsproxy-device-dead.log" && grep -qi proxy "$LOGS/dsproxy-device-dead.log"; }
start dsproxy-device-dead "${DEAD[@]}" "$BIN" device --connection-string "$DEV3_CS" --ca-file "$CA" \
	--target "echo=127.0.0.1:$ECHO_PORT" --log-format json --log-level debug
if wait_for "device error naming the proxy" 15 dsproxy-device-dead proxy_error_logged; then
	pass "f device logs: $(grep -m1 -o 'proxyconnect[^"\\]*' "$LOGS/dsproxy-device-dead.log")"
	if alive "${PROC_PID[dsproxy-device-dead]}"; then
		pass "f device keeps retrying while the proxy refuses"
	else
		fail "f device exited while the proxy refused"
	fi
else
	fail "f device with a refusing proxy logged no error naming the proxy at 127.0.0.1:$DEAD_PORT"
fi
rc=0
timeout 30 "${DEAD[@]}" "$BIN" service --stdio "${CLIENT[@]}" --device-id proxied-dev --stream-name echo \
	</dev/null >/dev/null 2>"$LOGS/service-f.log" || rc=$?
if ((rc != 0 && rc != 124)) && grep -qi "proxy" "$LOGS/service-f.log"; then
	pass "f service --stdio exits $rc: $(head -n 1 "$LOGS/service-f.log")"
else
	fail "f service --stdio with a refusing proxy exited $rc: $(head -n 3 "$LOGS/service-f.log")"
fi

# A proxy that answers CONNECT to the hub with 403: tinyproxy allowing
# CONNECT only to port 1.
DENY_PORT=
for attempt in 1 2 3 4 5; do
	port=$(free_port)
	sed -e "s/^Port .*/Port $port/" -e "s/^ConnectPort .*/ConnectPort 1/" \
		"$PROXY_CONF" >"$WORK/tinyproxy-deny-$attempt.conf"
	start "tinyproxy-deny-$attempt" tinyproxy -d -c "$WORK/tinyproxy-deny-$attempt.conf"
	if wait_for "denying tinyproxy on port $port" 10 "tinyproxy-deny-$attempt" port_open "$port"; then
		DENY_PORT=$port
		break
	fi
done
if [[ -z $DENY_PORT ]]; then
	fail "f a second (denying) tinyproxy did not start"
else
	rc=0
	timeout 30 env -u NO_PROXY -u no_proxy "HTTPS_PROXY=http://127.0.0.1:$DENY_PORT" "$BIN" service --stdio "${CLIENT[@]}" \
		--device-id proxied-dev --stream-name echo </dev/null >/dev/null 2>"$LOGS/service-f-deny.log" || rc=$?
	if ((rc != 0 && rc != 124)) && grep -q "proxy http://127.0.0.1:$DENY_PORT refused CONNECT $HUB_HOST:$HUB_PORT" "$LOGS/service-f-deny.log"; then
		pass "f a proxy that answers CONNECT with 403: service --stdio exits $rc: $(head -n 1 "$LOGS/service-f-deny.log")"
	else
		fail "f a proxy that denies CONNECT: service --stdio exited $rc: $(head -n 3 "$LOGS/service-f-deny.log")"
	fi
fi
