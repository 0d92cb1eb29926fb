# Install actionlint (GitHub Actions workflow checker) for tests/test_ci_init.py; sourced by scripts/test.sh (also
# runnable with bash). Built with `go install` from the Go module proxy; skipped with a note where Go is absent (the
# test then skips its actionlint check and says why). Idempotent, quick when it is in place.

_xflow_actionlint_install() {
    local version="v1.7.12"
    local gobin
    if command -v actionlint >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v go >/dev/null 2>&1; then
        for candidate in /usr/local/go/bin /usr/lib/go/bin; do
            [ -x "$candidate/go" ] && PATH="$PATH:$candidate"
        done
    fi
    if ! command -v go >/dev/null 2>&1; then
        echo "install-actionlint: Go is not installed: the actionlint check of tests/test_ci_init.py will be skipped" >&2
        return 0
    fi
    gobin="$(go env GOPATH)/bin"
    if [ ! -x "$gobin/actionlint" ]; then
        echo "install-actionlint: go install github.com/rhysd/actionlint/cmd/actionlint@$version"
        GOFLAGS=-mod=mod go install "github.com/rhysd/actionlint/cmd/actionlint@$version" || {
            echo "install-actionlint: go install failed: the actionlint check will be skipped" >&2
            return 0
        }
    fi
    case ":$PATH:" in *":$gobin:"*) ;; *) export PATH="$PATH:$gobin" ;; esac
}
_xflow_actionlint_install
