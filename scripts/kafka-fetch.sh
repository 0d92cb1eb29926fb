#!/usr/bin/env bash
# Fetch the Apache Kafka broker (org.apache.kafka:kafka_2.13) and its runtime jars with Maven
# into a cache folder, for the Kafka test fixtures (tests/kafka_brokers.py) and bench/bench_kafka.py.
#
#   scripts/kafka-fetch.sh            # prints the folder that holds the jars
#   XFLOW_KAFKA_VERSION=4.1.1 XFLOW_KAFKA_CACHE=~/.cache/xflow/kafka scripts/kafka-fetch.sh
#
# Idempotent: a second run with the jars in place only prints the folder.
set -euo pipefail

version="${XFLOW_KAFKA_VERSION:-4.1.1}"
cache="${XFLOW_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xflow/kafka}"
libs="$cache/$version/libs"

if [ -f "$libs/.complete" ]; then
    echo "$libs"
    exit 0
fi
command -v mvn >/dev/null || { echo "kafka-fetch: Maven (mvn) is not installed" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>xflow.test</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$version</version>
    </dependency>
    <dependency>
      <!-- the broker logs through slf4j; without a binding it prints a warning and nothing else -->
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
POM
rm -rf "$libs"
mkdir -p "$libs"
mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >&2
touch "$libs/.complete"
echo "$libs"
