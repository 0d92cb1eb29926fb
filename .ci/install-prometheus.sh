# Install what the metrics test (tests/test_metrics_prometheus.py) needs; sourced by scripts/test.sh (also runnable
# with bash): Debian's prometheus package (the server the test starts on a free loopback port with a config of its
# own; the package's service is not used) and prometheus-client (the monitoring extra, also in the test extra).
# Idempotent, non-interactive, quick when both are in place.

_xflow_prometheus_install() {
    local sudo=""
    if ! python3 -c "import prometheus_client" 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check "prometheus-client>=0.20" || return 1
    fi
    if command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-prometheus: no apt-get here: the Prometheus server test will be skipped" >&2
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-prometheus: apt-get install prometheus"
    $sudo apt-get update -qq >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null || return 1
}
_xflow_prometheus_install
