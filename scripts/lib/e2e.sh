# shellcheck shell=bash
# scripts/lib/e2e.sh: what the process-level test scripts share: PASS/FAIL
# bookkeeping, starting and stopping background processes, polling with a
# deadline, free ports. Source it after setting:
#
#   E2E_NAME   prefix of log lines (e.g. e2e, faults)
#   WORK       the work directory; LOGS, a directory in it for process logs
#
# It defines FAILS, PASSES, START_NS and the process tables PROC_NAMES,
# PROC_PIDS (in start order) and PROC_PID (by name).

FAILS=0
PASSES=0
START_NS=$(date +%s%N)
PROC_NAMES=()
PROC_PIDS=()
declare -A PROC_PID=()

log() { printf '%s %s: %s\n' "$(date +%T)" "$E2E_NAME" "$*"; }
pass() {
	PASSES=$((PASSES + 1))
	printf 'PASS: %s\n' "$*"
}
fail() {
	FAILS=$((FAILS + 1))
	printf 'FAIL: %s\n' "$*"
}
die() {
	fail "$*"
	exit 1
}

now_ns() { date +%s%N; }
# secs_since NS: seconds since NS, with millisecond precision.
secs_since() {
	local d
	d=$(($(now_ns) - $1))
	printf '%d.%03d' $((d / 1000000000)) $((d / 1000000 % 1000))
}

# redact hides keys in commands and logs that are printed.
redact() { sed -E 's/(SharedAccessKey=)[^;" ]*/\1<redacted>/g'; }

# show_logs prints the tail of every log file of the started processes.
show_logs() {
	local f
	for f in "$LOGS"/*; do
		[[ -s $f ]] || continue
		printf '\n----- last 30 lines of %s -----\n' "${f#"$WORK"/}"
		tail -n 30 "$f" | redact
	done
	printf '\n'
}

alive() {
	local state
	state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $state && $state != Z ]]
}

# stop_proc NAME PID: SIGCONT (in case it was stopped), SIGTERM, up to 5 s to
# exit, then SIGKILL; reaps it. Returns 1 when it had to be killed. A dsproxy
# process that was running and exits non-zero on SIGTERM gets a warning.
stop_proc() {
	local name=$1 pid=$2 deadline rc=0 was_alive=0 status=0
	if alive "$pid"; then
		was_alive=1
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid" 2>/dev/null || true
		deadline=$(($(now_ns) + 5000000000))
		while alive "$pid" && (($(now_ns) < deadline)); do sleep 0.05; done
		if alive "$pid"; then
			printf 'WARN: %s (pid %s) still running 5 s after SIGTERM: killing it\n' "$name" "$pid"
			kill -KILL "$pid" 2>/dev/null || true
			rc=1
		fi
	fi
	{ wait "$pid"; } 2>/dev/null || status=$?
	if ((was_alive && rc == 0 && status != 0 && status != 127)) && [[ $name == dsproxy-* ]]; then
		printf 'WARN: %s exited %d on SIGTERM, want 0\n' "$name" "$status"
	fi
	return "$rc"
}

# start NAME CMD...: runs CMD in the background, stdout to LOGS/NAME.out and
# stderr to LOGS/NAME.log. NAME must be new.
start() {
	local name=$1
	shift
	log "start $name: $(printf '%q ' "$@" | redact)"
	"$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log" </dev/null &
	PROC_NAMES+=("$name")
	PROC_PIDS+=("$!")
	PROC_PID[$name]=$!
}

# wait_for DESC SECONDS NAME CMD...: polls CMD until it succeeds. Fails when
# the process NAME (unless empty) exits first or the deadline passes.
wait_for() {
	local desc=$1 secs=$2 name=$3 t0 deadline
	shift 3
	t0=$(now_ns)
	deadline=$((t0 + secs * 1000000000))
	while :; do
		if "$@" 2>/dev/null; then
			log "$desc: ready after $(secs_since "$t0")s"
			return 0
		fi
		if [[ -n $name ]] && ! alive "${PROC_PID[$name]}"; then
			log "$desc: $name exited before it was ready"
			return 1
		fi
		if (($(now_ns) > deadline)); then
			log "$desc: not ready after ${secs}s"
			return 1
		fi
		sleep 0.05
	done
}

# free_port asks the kernel for a free port on 127.0.0.1. Another process can
# take it before ours binds it, so starters retry on a bind failure.
free_port() {
	if command -v python3 >/dev/null; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
	else
		# shellcheck disable=SC2016 # perl code, not shell
		perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1) or die "bind: $!"; print $s->sockport, "\n"'
	fi
}

# port_open PORT [HOST]: whether something accepts on HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# bind_failed NAME: whether NAME's log says its port was taken.
bind_failed() { grep -qiE 'address already in use|cannot bind|bind to port .* failed' "$LOGS/$1.log"; }

# measured_source: sets SRC, what a benchmark builds, and COMMIT, what it
# reports: a clean export of HEAD into $WORK/src, or the working tree
# itself when WORKTREE is set (COMMIT then ends in -dirty when it differs
# from HEAD).
measured_source() {
	SRC=$ROOT
	COMMIT=unknown
	git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null || return 0
	COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)
	if [[ -n ${WORKTREE:-} ]]; then
		[[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] || COMMIT+="-dirty"
		return 0
	fi
	SRC=$WORK/src
	mkdir -p "$SRC"
	git -C "$ROOT" archive HEAD | tar -x -C "$SRC" || die "git archive HEAD failed"
	log "measuring HEAD ($COMMIT), exported to $SRC"
}

# use_binary sets BIN to $DSPROXY_BIN, or builds dsproxy from this checkout
# (ROOT) into WORK, and checks free_port has what it needs.
use_binary() {
	if ! command -v python3 >/dev/null && ! command -v perl >/dev/null; then
		die "need python3 or perl to find free ports"
	fi
	if [[ -n ${DSPROXY_BIN:-} ]]; then
		BIN=$DSPROXY_BIN
		[[ -x $BIN ]] || die "DSPROXY_BIN=$BIN is not an executable"
	else
		BIN=$WORK/dsproxy
		log "building dsproxy: go build -o $BIN ./cmd/dsproxy"
		(cd "$ROOT" && go build -o "$BIN" ./cmd/dsproxy) || die "go build ./cmd/dsproxy failed"
	fi
	log "work dir $WORK, binary $BIN"
}

# stop_all stops every started process, newest first (proxies before the
# hub, the hub before sshd). A dsproxy process that has to be killed fails
# the run.
stop_all() {
	local i name pid
	for ((i = ${#PROC_PIDS[@]} - 1; i >= 0; i--)); do
		name=${PROC_NAMES[i]} pid=${PROC_PIDS[i]}
		if ! stop_proc "$name" "$pid" && [[ $name == dsproxy-* ]]; then
			fail "$name did not stop within 5 s of SIGTERM"
		fi
	done
}

# finish RC [SUMMARY]: on failure prints the processes' logs; removes WORK
# unless E2E_KEEP=1; prints "SCRIPT: n passed, m failed, SUMMARY" and OK or
# FAILED; exits with RC, or 1 when a check failed.
finish() {
	local rc=$1 summary=${2:-} script
	script=$(basename "$0" .sh)
	if ((FAILS > 0 || rc != 0)); then
		show_logs
		((rc != 0)) || rc=1
	fi
	if [[ ${E2E_KEEP:-} == 1 ]]; then
		log "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	printf '\n%s: %d passed, %d failed, %ss%s\n' "$script" "$PASSES" "$FAILS" "$(secs_since "$START_NS")" "$summary"
	if ((rc == 0)); then echo "$script: OK"; else echo "$script: FAILED"; fi
	exit "$rc"
}

# start_private_sshd: a private sshd on a free 127.0.0.1 port, with its own
# host key and one authorized client key (WORK/client_ed25519), for the
# user running the script. Sets SSHD (the binary), SSHD_PORT, SSHD_NAME,
# USER_NAME and SSH_OPTS (ssh options that use the client key and trust
# any host key). Retries when the port was taken; dies when sshd fails.
start_private_sshd() {
	local attempt port
	SSHD=$(command -v sshd || echo /usr/sbin/sshd)
	USER_NAME=$(id -un)
	mkdir -p "$WORK/sshd"
	ssh-keygen -q -t ed25519 -N '' -C "$E2E_NAME-host" -f "$WORK/sshd/host_ed25519"
	ssh-keygen -q -t ed25519 -N '' -C "$E2E_NAME-client" -f "$WORK/client_ed25519"
	cp "$WORK/client_ed25519.pub" "$WORK/sshd/authorized_keys"
	chmod 600 "$WORK/sshd/authorized_keys"
	# sshd's privilege separation directory (root only; Debian keeps it in /run).
	if ((EUID == 0)); then mkdir -p /run/sshd && chmod 755 /run/sshd; fi
	SSHD_PORT= SSHD_NAME=
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		cat >"$WORK/sshd/config" <<EOF
Port $port
HostKey $WORK/sshd/host_ed25519
AuthorizedKeysFile $WORK/sshd/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
EOF
		start "sshd-$attempt" "$SSHD" -D -e -f "$WORK/sshd/config" -o ListenAddress=127.0.0.1
		if wait_for "sshd on port $port" 10 "sshd-$attempt" port_open "$port"; then
			SSHD_PORT=$port SSHD_NAME=sshd-$attempt
			break
		fi
		bind_failed "sshd-$attempt" || die "sshd did not start"
		log "sshd: port $port was taken, retrying"
	done
	[[ -n $SSHD_PORT ]] || die "sshd: no free port after 5 attempts"
	SSH_OPTS=(-F none -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
		-o BatchMode=yes -o LogLevel=ERROR -o IdentitiesOnly=yes -o ConnectTimeout=15
		-i "$WORK/client_ed25519")
}

# hub_ready DIR HOST PORT: the hub with data in DIR answers on HOST:PORT
# (/healthz with curl, a TCP connect without).
hub_ready() {
	[[ -s $1/iothubowner.connection-string && -s $1/tls/ca.pem ]] || return 1
	if command -v curl >/dev/null; then
		curl -sf --max-time 2 --cacert "$1/tls/ca.pem" "https://$2:$3/healthz" >/dev/null
	else
		port_open "$3" "$2"
	fi
}

# start_hub NAME DIR HOST [FLAGS...]: runs dsproxy hub on HOST:<free port>
# with data in DIR and FLAGS, and waits until it answers. Sets HUB_PORT and
# HUB_NAME (NAME, or NAME-N after N-1 taken ports).
start_hub() {
	local name=$1 dir=$2 host=$3 attempt port try
	shift 3
	HUB_PORT= HUB_NAME=
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		try=$name
		((attempt == 1)) || try=$name-$attempt
		start "$try" "$BIN" hub --listen "$host:$port" --hostname "$host" --data-dir "$dir" "$@"
		if wait_for "hub $try on $host:$port" 20 "$try" hub_ready "$dir" "$host" "$port"; then
			HUB_PORT=$port HUB_NAME=$try
			return 0
		fi
		bind_failed "$try" || return 1
	done
	return 1
}

# start_transfer NAME PORT DIR [COMMAND]: runs `ssh ... COMMAND` (default
# 'cat /dev/zero') through the proxy on PORT in the background; when ssh
# ends, DIR/end holds the time (ns) and DIR/rc its exit status. Sets
# TRANSFER_PID (ssh) and TRANSFER_WRAPPER (the subshell that records); both
# are stopped by stop_all.
start_transfer() {
	local name=$1 port=$2 dir=$3 cmd=${4:-cat /dev/zero}
	mkdir -p "$dir"
	(
		ssh "${SSH_OPTS[@]}" -p "$port" "$USER_NAME@127.0.0.1" "$cmd" \
			</dev/null >/dev/null 2>"$LOGS/$name.err" &
		echo "$!" >"$dir/pid"
		rc=0
		wait "$!" || rc=$?
		date +%s%N >"$dir/end"
		echo "$rc" >"$dir/rc"
	) &
	TRANSFER_WRAPPER=$!
	PROC_NAMES+=("$name-wrapper")
	PROC_PIDS+=("$TRANSFER_WRAPPER")
	wait_for "ssh client started" 10 "" test -s "$dir/pid" || die "$name: could not start the ssh client"
	TRANSFER_PID=$(cat "$dir/pid")
	PROC_NAMES+=("$name")
	PROC_PIDS+=("$TRANSFER_PID")
}

# transfer_bytes: bytes the transfer's ssh client has read so far.
transfer_bytes() { awk '/^rchar:/ {print $2}' "/proc/$TRANSFER_PID/io" 2>/dev/null; }

# transfer_at_least N: whether the transfer has read N bytes.
transfer_at_least() {
	local n
	n=$(transfer_bytes) && [[ -n $n ]] && ((n >= $1))
}

# nats_node_of_pid PID: the index I of the NATS node (client port in
# NATS_CLIENT[I], I = 1..3) that process PID is connected to; status 1 when
# none (needs ss).
nats_node_of_pid() {
	local i port
	for i in 1 2 3; do
		port=${NATS_CLIENT[i]##*:}
		if ss -Htnp state established "( dport = :$port )" 2>/dev/null | grep -q "pid=$1,"; then
			echo "$i"
			return 0
		fi
	done
	return 1
}
