#!/usr/bin/env bash
# The host tools the tests start, in one list. `make test` and `.ci/run` call this before
# anything compiles: a missing tool is installed from Debian's archive when this runs as root,
# and otherwise named, with the one command that installs it, within seconds instead of after
# ten minutes of compiling and testing.
#
#   tests/tools.sh           check; as root install what is missing (apt-get), else exit 1
#   tests/tools.sh --check   check only, never install (exit 1 when something is missing)
#   tests/tools.sh --list    print the list (command, Debian package, what needs it)
#
# Exit codes: 0 every tool is there (after installing); 1 something is missing and was not
# installed (the message names the command to run); 2 bad usage.
set -euo pipefail

# command  package  who starts it. One line per command; a package may appear more than once.
TOOLS="
curl                curl            a second TLS client beside the harness's rustls one
openssl             openssl         certificates, s_client checks
make                make            make test itself, the make install test
ss                  iproute2        the listen backlog test
ip                  iproute2        private dockerd engines in their own network namespaces
nsenter             util-linux      private engines; reaching into a container's namespace
prlimit             util-linux      the file-descriptor limit tests
umount              mount           cleaning up a private engine's mounts
kill                procps          signals to sidecars and spawners (SIGHUP, SIGTERM, SIGKILL)
timeout             coreutils       bounded helper commands
haproxy             haproxy         the real PROXY protocol consumer of the tcp-mode tests
pebble              pebble          Let's Encrypt's test ACME server (ACME tests)
pebble-challtestsrv pebble          Pebble's DNS mock (ACME tests)
named               bind9           BIND, the tests' own DNS server with TSIG-signed updates (DNS-01)
tsig-keygen         bind9           the TSIG keys of that server's dynamic zones
dig                 bind9-dnsutils  queries to that server
nsupdate            bind9-dnsutils  signed dynamic updates (RFC 2136) to that server
busybox             busybox-static  a static shell put into a sidecar's volume (identity tests)
docker-compose      docker-compose  the compose demo and examples (unless 'docker compose' works)
"

usage() { echo "usage: $0 [--check|--list]" >&2; exit 2; }

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --list) mode=list ;;
  *) usage ;;
esac

# present COMMAND: whether the tool is there in a form the tests can use.
present() {
  case "$1" in
    # The identity test copies busybox into a FROM-scratch container: it must be static
    # (Debian's `busybox` package is dynamically linked; `busybox-static` is not).
    busybox)
      local bin
      bin=$(command -v busybox) || return 1
      ! ldd "$bin" >/dev/null 2>&1
      ;;
    # Compose v2 (the docker plugin) serves as well as v1.
    docker-compose)
      docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null
      ;;
    # Debian installs these in /usr/sbin, which is not on a normal user's PATH; the harness
    # (tests/src/bind.rs) looks there too.
    named|tsig-keygen)
      command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]
      ;;
    *) command -v "$1" >/dev/null ;;
  esac
}

if [ "$mode" = list ]; then
  printf '%s\n' "$TOOLS" | sed '/^$/d'
  exit 0
fi

missing_cmds=()
missing_pkgs=()
while read -r cmd pkg why; do
  [ -n "$cmd" ] || continue
  if ! present "$cmd"; then
    missing_cmds+=("$cmd ($why)")
    case " ${missing_pkgs[*]-} " in
      *" $pkg "*) ;;
      *) missing_pkgs+=("$pkg") ;;
    esac
  fi
done <<<"$TOOLS"

# The engine is a prerequisite, not something this script installs (README: "Rust and Docker").
engine_problem=""
if ! command -v docker >/dev/null; then
  engine_problem="the docker command is missing: install Docker Engine (Debian: apt-get install docker.io)"
elif ! command -v dockerd >/dev/null; then
  engine_problem="dockerd is missing (the engine tests start private engines): install Docker Engine (Debian: docker.io)"
elif ! out=$(docker info --format '{{.ServerVersion}}' 2>&1); then
  engine_problem="no Docker engine answers ('docker info': $(printf '%s' "$out" | tail -1))"
fi

if [ ${#missing_pkgs[@]} -eq 0 ]; then
  echo "tools: all $(printf '%s\n' "$TOOLS" | sed '/^$/d' | wc -l) test tools present"
else
  echo "tools: missing:" >&2
  printf '  %s\n' "${missing_cmds[@]}"  >&2
  install_cmd="apt-get install -y --no-install-recommends ${missing_pkgs[*]}"
  if [ "$mode" = install ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tools: installing ${missing_pkgs[*]} from Debian's archive (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    trap 'rm -f "$apt_log"' EXIT
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}"; } >"$apt_log" 2>&1; then
      cat "$apt_log" >&2
      echo "tools: apt-get could not install ${missing_pkgs[*]} (its output above)" >&2
      exit 1
    fi
    still=()
    while read -r cmd pkg why; do
      [ -n "$cmd" ] || continue
      present "$cmd" || still+=("$cmd")
    done <<<"$TOOLS"
    if [ ${#still[@]} -gt 0 ]; then
      echo "tools: still missing after apt-get install: ${still[*]}" >&2
      exit 1
    fi
    echo "tools: installed ${missing_pkgs[*]}"
  else
    {
      echo "tools: the tests need these Debian packages; install them, then run make test again:"
      if [ "$(id -u)" = 0 ]; then echo "  $install_cmd"; else echo "  sudo $install_cmd"; fi
    } >&2
    exit 1
  fi
fi

if [ -n "$engine_problem" ]; then
  echo "tools: $engine_problem" >&2
  exit 1
fi
