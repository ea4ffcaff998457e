#!/usr/bin/env bash
# shellcheck shell=bash
# scripts/lib/postgres.sh: a throwaway PostgreSQL server for the tests of the
# PostgreSQL registry. Source it and call:
#
#   postgres_start   initdb a cluster in a new directory under /tmp, start it
#                    on 127.0.0.1 and a free port (pg_ctl -w), and export
#                    DSPROXY_TEST_POSTGRES=postgres://postgres:PASSWORD@...
#                    Returns non-zero, with the reason on stderr, when
#                    PostgreSQL is not installed or does not start.
#   postgres_stop    stop it (pg_ctl -m immediate) and remove its directory
#
# or run it: `scripts/lib/postgres.sh start` prints the export line and the
# command that stops the server again (`scripts/lib/postgres.sh stop DIR`).
#
# initdb refuses to run as root, and the postgres user cannot enter the
# root-only directories that hold a root test's temporary files, so as root
# the server runs as the postgres user in a directory of its own.
# Durability is off (fsync, synchronous_commit): the data is thrown away.

PG_DIR=

# pg_bindir prints the directory of initdb and pg_ctl: PG_BINDIR, else the
# PATH, else Debian's newest /usr/lib/postgresql/N/bin.
pg_bindir() {
	local d
	if [[ -n ${PG_BINDIR:-} ]]; then
		echo "$PG_BINDIR"
		return
	fi
	if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
		dirname "$(command -v pg_ctl)"
		return
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
			echo "$d"
			return
		fi
	done
	return 1
}

# pg_as_owner CMD...: runs CMD as the cluster's owner (postgres when root).
pg_as_owner() {
	if ((EUID == 0)); then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# pg_free_port asks the kernel for a free port on 127.0.0.1.
pg_free_port() {
	if command -v python3 >/dev/null; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
	else
		# shellcheck disable=SC2016 # perl code, not shell
		perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1) or die "bind: $!"; print $s->sockport, "\n"'
	fi
}

postgres_start() {
	local bin password port try
	if ! bin=$(pg_bindir); then
		echo "postgres.sh: PostgreSQL server not found (initdb, pg_ctl): apt-get install -y postgresql-15" >&2
		return 1
	fi
	if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
		echo "postgres.sh: running as root and there is no postgres user to run the server as" >&2
		return 1
	fi
	PG_DIR=$(mktemp -d /tmp/dsproxy-pg.XXXXXX) || return 1
	chmod 0755 "$PG_DIR"
	((EUID == 0)) && chown postgres: "$PG_DIR"
	password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
	printf '%s\n' "$password" >"$PG_DIR/pwfile"
	((EUID == 0)) && chown postgres: "$PG_DIR/pwfile"
	if ! pg_as_owner "$bin/initdb" -D "$PG_DIR/data" -U postgres --pwfile="$PG_DIR/pwfile" \
		--auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
		echo "postgres.sh: initdb failed:" >&2
		cat "$PG_DIR/initdb.log" >&2
		postgres_stop
		return 1
	fi
	rm -f "$PG_DIR/pwfile"
	# Another process can take the port before the server binds it: retry.
	for try in 1 2 3 4 5; do
		port=$(pg_free_port) || return 1
		if pg_as_owner "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
			-o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$PG_DIR -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
			>"$PG_DIR/pg_ctl.log" 2>&1; then
			export DSPROXY_TEST_POSTGRES="postgres://postgres:$password@127.0.0.1:$port/postgres?sslmode=disable"
			return 0
		fi
		grep -q 'could not bind\|Address already in use' "$PG_DIR/server.log" 2>/dev/null || break
	done
	echo "postgres.sh: PostgreSQL did not start (try $try):" >&2
	tail -n 20 "$PG_DIR/pg_ctl.log" "$PG_DIR/server.log" >&2 2>/dev/null
	postgres_stop
	return 1
}

postgres_stop() {
	local bin
	[[ -n $PG_DIR && -d $PG_DIR ]] || return 0
	if [[ -f $PG_DIR/data/postmaster.pid ]] && bin=$(pg_bindir); then
		pg_as_owner "$bin/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$PG_DIR"
	PG_DIR=
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -euo pipefail
	case ${1:-} in
	start)
		postgres_start
		printf 'export DSPROXY_TEST_POSTGRES=%q\n' "$DSPROXY_TEST_POSTGRES"
		printf '# stop it with: %s stop %s\n' "$0" "$PG_DIR"
		;;
	stop)
		[[ -n ${2:-} ]] || {
			echo "usage: $0 stop DIR" >&2
			exit 2
		}
		PG_DIR=$2
		[[ $PG_DIR == /tmp/dsproxy-pg.* ]] || {
			echo "$0: $PG_DIR is not a directory this script made" >&2
			exit 2
		}
		postgres_stop
		;;
	*)
		sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
		exit 2
		;;
	esac
fi
