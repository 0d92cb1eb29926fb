# Install what the web view's browser test (tests/test_serve_browser.py) needs; sourced by scripts/test.sh (also
# runnable with bash): Debian's chromium and chromium-driver (Selenium drives them; nothing is downloaded by the
# test itself). Idempotent, non-interactive, quick when both are in place.

_xflow_browser_install() {
    local sudo=""
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-browser: no apt-get here: the browser test will be skipped" >&2
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-browser: apt-get install chromium chromium-driver"
    $sudo apt-get update -qq >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver \
        >/dev/null || return 1
}
_xflow_browser_install
