#!/bin/bash
# install-peers.sh -- install the third-party test peers used by the `integration` crate.
#
# Idempotent, for Debian 12 as root. Quiet when everything is already there; otherwise it
# prints one line per step it actually ran.
#
#   apt:  prosody lua-unbound lua-dbi-sqlite3 ejabberd sip-tester baresip-core iproute2 iputils-ping openssl
#         kamailio kamailio-tls-modules (benchmarks: the reference registrar, over UDP and TLS)
#         python3-venv dnsmasq-base sipvicious fail2ban   (--no-install-recommends; dnsmasq-base is the binary
#         alone, no service: the DNS tests start their own on a loopback port)
#   venv: ${CALLFABRIC_VENV:-<repo>/target/peers-venv} with slixmpp
#
# Distro services are kept from starting on install: /usr/sbin/policy-rc.d (`exit 101`) is
# created first if absent, so no system prosody/ejabberd ever listens on 0.0.0.0. The test
# harness starts its own private, loopback-only instances.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CALLFABRIC_VENV:-$REPO/target/peers-venv}
export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(prosody lua-unbound lua-dbi-sqlite3 ejabberd sip-tester baresip-core iproute2 iputils-ping
              openssl python3-venv postgresql dnsmasq-base chromium sipvicious fail2ban kamailio kamailio-tls-modules)

say() { printf 'install-peers: %s\n' "$*"; }

# run a step quietly; show its output only if it fails
run() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        say "FAILED: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. keep package maintainer scripts from starting services
if [ ! -e /usr/sbin/policy-rc.d ]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d'
    say "created /usr/sbin/policy-rc.d (exit 101): distro services will not start"
fi

# 2. apt packages, only when a binary (or a Lua module of Prosody's) is missing
missing=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || missing+=("$1"); }
need prosody
need prosodyctl
need /usr/sbin/ejabberdctl
need erl
need sipp
need baresip
need /usr/sbin/dnsmasq
need ip
need ping
need svcrack   # sipvicious: the attacker in tests/gateway_security.rs
need fail2ban-regex   # checks examples/fail2ban against real log lines (no service is started)
need openssl
need chromium   # the wallboard test (headless, DevTools protocol over a pipe)
need kamailio
ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || missing+=(kamailio-tls-modules)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
need python3
for pkg in lua-unbound lua-dbi-sqlite3; do  # Prosody's modules (SQL storage: SQLite3 driver)
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
    say "missing: ${missing[*]}"
    run as_root apt-get update
    say "apt-get update done"
    run as_root apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
    say "apt-get install ${APT_PACKAGES[*]} done"
fi

# 3. python venv with slixmpp (the XMPP client used by some integration tests)
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    run python3 -m venv "$VENV"
    say "created venv $VENV"
fi
if ! "$VENV/bin/python" -c 'import slixmpp' >/dev/null 2>&1; then
    run "$VENV/bin/pip" install --no-cache-dir -q slixmpp
    say "pip install slixmpp into $VENV done"
fi
# aiosmtpd: the SMTP server the voicemail tests start on loopback (e-mail notification)
if ! "$VENV/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
    run "$VENV/bin/pip" install --no-cache-dir -q aiosmtpd
    say "pip install aiosmtpd into $VENV done"
fi
