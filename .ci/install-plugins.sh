# Install what the plugin suites need; sourced by scripts/test.sh (also runnable with bash).
# redis-server and PostgreSQL from Debian's packages when missing (the tests start their own servers
# on free ports), then the two plugin distributions in plugins/ (editable) with their test extras.
# Idempotent, non-interactive, and quick when everything is in place.

_xflow_plugins_install() {
    local here packages=() sudo=""
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        packages+=(postgresql)
    fi
    if [ "${#packages[@]}" -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "install-plugins: apt-get install ${packages[*]}"
        $sudo apt-get update -qq >/dev/null || return 1
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" \
            >/dev/null || return 1
    fi
    # reinstall unless both plugins are installed (editable) from this very checkout
    if ! python3 - "$here" <<'PY' 2>/dev/null
import sys
import psycopg, redis, xflow_tracker_postgres, xflow_transport_redis
sys.exit(not all(m.__file__.startswith(sys.argv[1]) for m in (xflow_transport_redis, xflow_tracker_postgres)))
PY
    then
        python3 -m pip install --quiet --disable-pip-version-check \
            -e "$here/plugins/xflow-transport-redis[test]" -e "$here/plugins/xflow-tracker-postgres[test]" || return 1
    fi
}
_xflow_plugins_install
