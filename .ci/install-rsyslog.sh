# Install what the syslog route's test (tests/test_logs_rsyslog.py) needs; sourced by scripts/test.sh (also runnable
# with bash): Debian's rsyslog package. The test starts rsyslogd itself, with a configuration of its own (a TCP input
# on a free loopback port, written to a file in the test's folder); the package's service is not used.
# Idempotent, non-interactive, quick when rsyslogd is in place.

_xflow_rsyslog_install() {
    local sudo=""
    if command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-rsyslog: no apt-get here: the rsyslog test will be skipped" >&2
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-rsyslog: apt-get install rsyslog"
    $sudo apt-get update -qq >/dev/null || return 1
    # policy-rc.d: the package's own service is not started (there may be no init system; the test runs its own)
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends rsyslog >/dev/null \
        || return 1
}
_xflow_rsyslog_install
