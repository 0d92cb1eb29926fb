# Install what the AWS tests (tests/test_aws_*.py) and bench/bench_kinesis.py need; sourced by .ci/run
# (also runnable with bash). boto3 and moto's server (the AWS-API endpoint the fixtures start), and
# git (function sources from git links; the git daemon test is skipped without it).
# Idempotent, non-interactive, quick when everything is in place.

_xflow_aws_install() {
    if ! python3 -c "import boto3, moto.server, flask, flask_cors" 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check "boto3>=1.28" "moto[server]>=5.0" || return 1
    fi
    if ! command -v git >/dev/null; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git; } >/dev/null || return 1
        else
            echo "install-aws: git is not installed: the git source tests will be skipped" >&2
        fi
    fi
}
_xflow_aws_install
