#!/usr/bin/env bash
# test.sh: dsproxy's one test command. Run it from anywhere in the checkout.
#
#   scripts/test.sh           gofmt, go vet, go test -race, every fuzz target
#                             for $FUZZTIME, and the end-to-end tests with real
#                             OpenSSH (scripts/e2e-ssh.sh, then the faults:
#                             scripts/e2e-faults.sh), and through a real
#                             HTTP proxy (scripts/e2e-proxy.sh, tinyproxy),
#                             and of hub replicas on PostgreSQL and NATS
#                             (scripts/e2e-cluster.sh)
#   scripts/test.sh --quick   the same without fuzzing, and go test -short
#
# Environment:
#   DSPROXY_REQUIRE_SSH=1   OpenSSH missing is a failure (CI sets it); without
#                           it the end-to-end tests are skipped, loudly (so is
#                           the network namespace part of e2e-faults.sh
#                           without root, ip and nft or iptables); so is
#                           tinyproxy (or root) for scripts/e2e-proxy.sh
#   DSPROXY_TEST_POSTGRES   a PostgreSQL URL for the PostgreSQL registry's
#                           tests; when unset, test.sh starts a throwaway
#                           server (scripts/lib/postgres.sh) if PostgreSQL is
#                           installed, and the tests skip, loudly, if not
#   DSPROXY_REQUIRE_POSTGRES=1  no PostgreSQL is a failure (set under CI=true)
#   FUZZTIME                how long each fuzz target runs (default 5s)
#
# Every step runs even when an earlier one failed; the summary at the end
# lists them, and the exit status is non-zero when any failed.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

quick=0
for arg in "$@"; do
	case $arg in
	--quick) quick=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		echo "test.sh: unknown argument $arg" >&2
		usage >&2
		exit 2
		;;
	esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZTIME=${FUZZTIME:-5s}
START=$SECONDS
SUMMARY=()
FAILED=0

# step NAME CMD...: runs CMD, records PASS or FAIL with its duration.
step() {
	local name=$1 t0=$SECONDS
	shift
	printf '\n==> %s\n' "$name"
	if "$@"; then
		SUMMARY+=("PASS  $name ($((SECONDS - t0))s)")
	else
		SUMMARY+=("FAIL  $name ($((SECONDS - t0))s)")
		FAILED=1
	fi
}

gofmt_clean() {
	local out
	out=$(gofmt -l .)
	if [[ -n $out ]]; then
		printf 'gofmt: these files need formatting (run gofmt -w):\n%s\n' "$out"
		return 1
	fi
}

go_test() {
	local flags=(-race -count=1)
	((quick)) && flags+=(-short)
	if [[ $(go env CGO_ENABLED) != 1 ]]; then
		echo "go test -race needs cgo and a C compiler: apt-get install -y gcc libc6-dev (or set CGO_ENABLED=1)"
		return 1
	fi
	go test "${flags[@]}" ./...
}

# fork_test runs the tests of the yamux fork (third_party/README.md), a
# module of its own that ./... does not reach. -short skips upstream's
# TestSendData_VeryLarge (16 streams of 1 GiB), which upstream itself says
# may time out under the race detector, as it does on a 2-core machine.
fork_test() {
	(cd third_party/yamux && go test -race -short -count=1 .)
}

# fuzz_all runs each fuzz target alone: -fuzz takes one package and one target.
fuzz_all() {
	local listing line pkg name rc=0 names=() targets=()
	if ! listing=$(go test -run='^$' -list='^Fuzz' ./...); then
		printf '%s\n' "$listing"
		return 1
	fi
	# The listing prints each package's names, then "ok <package> <time>".
	while IFS= read -r line; do
		case $line in
		Fuzz*) names+=("$line") ;;
		ok*)
			pkg=$(awk '{print $2}' <<<"$line")
			for name in "${names[@]}"; do targets+=("$pkg $name"); done
			names=()
			;;
		esac
	done <<<"$listing"
	if ((${#targets[@]} == 0)); then
		echo "no fuzz targets found"
		return 1
	fi
	for line in "${targets[@]}"; do
		pkg=${line% *} name=${line#* }
		if ! fuzz_one "$pkg" "$name"; then
			echo "FAIL: fuzz $pkg $name (a failing input is saved under that package's testdata/fuzz/$name)"
			rc=1
		fi
	done
	return "$rc"
}

# fuzz_one PKG NAME fuzzes one target for FUZZTIME. Go 1.26's fuzzing
# coordinator can end a run that found nothing with "context deadline
# exceeded" as -fuzztime expires (golang/go#75804, fixed in Go 1.27): such
# a run, which saved no failing input, is run once more.
fuzz_one() {
	local pkg=$1 name=$2 dir before out try
	dir=$(go list -f '{{.Dir}}' "$pkg")/testdata/fuzz/$name
	for try in 1 2; do
		before=$(ls "$dir" 2>/dev/null | wc -l)
		echo "fuzz $pkg $name for $FUZZTIME"
		if out=$(go test -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" "$pkg" 2>&1); then
			printf '%s\n' "$out"
			return 0
		fi
		printf '%s\n' "$out"
		if ((try == 2)) || [[ $out != *"context deadline exceeded"* ]] ||
			(($(ls "$dir" 2>/dev/null | wc -l) != before)); then
			return 1
		fi
		echo "fuzz $pkg $name: the run ended with Go's fuzztime race (golang/go#75804) and saved no input: once more"
	done
}

have() { command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 ]]; }

e2e() {
	local missing=() tool
	for tool in sshd ssh scp ssh-keygen; do
		have "$tool" || missing+=("$tool")
	done
	if ((${#missing[@]} > 0)); then
		local msg="OpenSSH not found (${missing[*]}): install it with: apt-get install -y openssh-server openssh-client"
		if [[ ${DSPROXY_REQUIRE_SSH:-} == 1 ]]; then
			echo "FAIL: $msg (DSPROXY_REQUIRE_SSH=1: the end-to-end test is required)"
			return 1
		fi
		printf '\n'
		printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
		printf '!!! SKIP: end-to-end test with real OpenSSH NOT RUN\n'
		printf '!!! %s\n' "$msg"
		printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
		E2E_SKIPPED=1
		return 0
	fi
	"$1"
}

# postgres_for_tests gives the PostgreSQL registry's tests a server.
# shellcheck source=lib/postgres.sh
source scripts/lib/postgres.sh
[[ ${CI:-} == true ]] && export DSPROXY_REQUIRE_POSTGRES=1
PG_SKIPPED=
postgres_for_tests() {
	if [[ -n ${DSPROXY_TEST_POSTGRES:-} ]]; then
		echo "using DSPROXY_TEST_POSTGRES from the environment"
		return 0
	fi
	if postgres_start; then
		trap postgres_stop EXIT
		echo "PostgreSQL in $PG_DIR, for DSPROXY_TEST_POSTGRES"
		return 0
	fi
	if [[ ${DSPROXY_REQUIRE_POSTGRES:-} == 1 ]]; then
		echo "FAIL: no PostgreSQL for the registry's tests (DSPROXY_REQUIRE_POSTGRES=1): apt-get install -y postgresql-15"
		return 1
	fi
	printf '\n!!! SKIP: the PostgreSQL registry tests will NOT RUN: no server (apt-get install -y postgresql-15)\n'
	PG_SKIPPED=1
}

step "gofmt -l ." gofmt_clean
step "go vet ./..." go vet ./...
step "PostgreSQL for the tests (scripts/lib/postgres.sh)" postgres_for_tests
if [[ -n $PG_SKIPPED ]]; then
	SUMMARY[-1]="SKIP  PostgreSQL for the tests: not installed (apt-get install -y postgresql-15); its tests skip"
fi
if ((quick)); then
	step "go test -race -short ./..." go_test
else
	step "go test -race ./..." go_test
	step "go test -race of the yamux fork (third_party/yamux)" fork_test
	step "fuzz each target for $FUZZTIME" fuzz_all
fi
E2E_SKIPPED=0
step "e2e with OpenSSH (scripts/e2e-ssh.sh)" e2e scripts/e2e-ssh.sh
if ((E2E_SKIPPED)); then
	SUMMARY[-1]="SKIP  e2e with OpenSSH: sshd/ssh not installed (apt-get install -y openssh-server openssh-client)"
fi
E2E_SKIPPED=0
step "e2e faults (scripts/e2e-faults.sh)" e2e scripts/e2e-faults.sh
if ((E2E_SKIPPED)); then
	SUMMARY[-1]="SKIP  e2e faults: sshd/ssh not installed (apt-get install -y openssh-server openssh-client)"
fi

# e2e_proxy: scripts/e2e-proxy.sh needs tinyproxy and root (for /etc/hosts).
e2e_proxy() {
	local msg=
	if ! have tinyproxy; then
		msg="tinyproxy not found: install it with: apt-get install -y tinyproxy"
	elif ((EUID != 0)) && ! getent hosts hub.dsproxy.test >/dev/null; then
		msg="not root: e2e-proxy.sh adds hub.dsproxy.test to /etc/hosts"
	fi
	if [[ -n $msg ]]; then
		if [[ ${DSPROXY_REQUIRE_SSH:-} == 1 ]]; then
			echo "FAIL: $msg (DSPROXY_REQUIRE_SSH=1: the end-to-end tests are required)"
			return 1
		fi
		printf '\n!!! SKIP: e2e behind a proxy NOT RUN: %s\n' "$msg"
		E2E_SKIPPED=$msg
		return 0
	fi
	scripts/e2e-proxy.sh
}
E2E_SKIPPED=0
step "e2e behind a proxy (scripts/e2e-proxy.sh)" e2e_proxy
if [[ $E2E_SKIPPED != 0 ]]; then
	SUMMARY[-1]="SKIP  e2e behind a proxy: $E2E_SKIPPED"
fi

# e2e_cluster: scripts/e2e-cluster.sh needs OpenSSH and PostgreSQL.
e2e_cluster() {
	if ! pg_bindir >/dev/null; then
		local msg="PostgreSQL not found: install it with: apt-get install -y postgresql-15"
		if [[ ${DSPROXY_REQUIRE_POSTGRES:-} == 1 ]]; then
			echo "FAIL: $msg (DSPROXY_REQUIRE_POSTGRES=1: the replica test is required)"
			return 1
		fi
		printf '\n!!! SKIP: e2e of hub replicas NOT RUN: %s\n' "$msg"
		E2E_SKIPPED=$msg
		return 0
	fi
	e2e scripts/e2e-cluster.sh
}
E2E_SKIPPED=0
step "e2e hub replicas (scripts/e2e-cluster.sh)" e2e_cluster
if [[ $E2E_SKIPPED == 1 ]]; then
	SUMMARY[-1]="SKIP  e2e hub replicas: sshd/ssh not installed (apt-get install -y openssh-server openssh-client)"
elif [[ $E2E_SKIPPED != 0 ]]; then
	SUMMARY[-1]="SKIP  e2e hub replicas: $E2E_SKIPPED"
fi

printf '\n==> summary (%ds)\n' "$((SECONDS - START))"
printf '  %s\n' "${SUMMARY[@]}"
if ((FAILED)); then
	echo "test.sh: FAILED"
	exit 1
fi
echo "test.sh: OK"
