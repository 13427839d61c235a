#!/usr/bin/env bash
# Compiles the shared Java core (Java 8, org.json) and runs its JUnit 4 tests on the JVM.
# usage: run_tests.sh DIR [CLASS...]   DIR holds the fixtures: golden.json (tests/test_android_demo.py, for
#        GoldenTest, the default) or trust.json (tests/test_android_trust.py, for TrustTest)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
GOLDEN="$(cd "${1:?usage: run_tests.sh DIR [CLASS...]}" && pwd)"
shift
CLASSES=("${@:-GoldenTest}")
OUT="${KDM_CORE_BUILD:-$(mktemp -d)}"
JSON=/usr/share/java/json-android.jar
CP_TEST="$JSON:/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar"
mkdir -p "$OUT/main" "$OUT/test"
javac -nowarn --release 8 -encoding UTF-8 -cp "$JSON" -d "$OUT/main" $(find "$HERE/src/main/java" -name '*.java')
javac -nowarn --release 8 -encoding UTF-8 -cp "$OUT/main:$CP_TEST" -d "$OUT/test" $(find "$HERE/src/test/java" -name '*.java')
exec java -Djava.awt.headless=true -Dkdmobile.golden="$GOLDEN" -cp "$OUT/main:$OUT/test:$CP_TEST" \
  org.junit.runner.JUnitCore "${CLASSES[@]/#/org.kdmobile.core.}"
