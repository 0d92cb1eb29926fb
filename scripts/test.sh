#!/usr/bin/env bash
# Installs xflow with its test dependencies (Python packages, redis-server, PostgreSQL, the Apache
# Kafka jars), then runs the whole test suite in parallel (pytest-xdist). The tests start and stop their own servers (moto,
# Kafka, Tansu, Redis, PostgreSQL) on free loopback ports. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
for script in .ci/install-*.sh; do
  [ -f "$script" ] || continue
  echo "== $script"
  # shellcheck disable=SC1090
  source "$script"
done
# pytest-xdist: one worker per core; a test file stays on one worker, so its servers start once there
python3 -m pytest -n auto --dist loadfile "$@"
