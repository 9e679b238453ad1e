#!/usr/bin/env bash
# What a lent machine without a JDK needs to run the bench (docs/performance.md, "Many CPUs"): the jar and its
# libraries, and a runtime jlink'd from this machine's JDK 25 of the modules they need, in target/device (ignored by
# git, so name it in the device tool's `carry`; it must stay under 64 MiB). Without java.desktop, which only the
# bench's plot needs (about 14 MiB of the 64): the bench then writes its CSV and JSON and says there is no plot.
#   scripts/bench/device-kit.sh            builds the jar if it is missing or older than the sources
# Then, on the device: scripts/bench/device-scaling.sh OUT_DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
. "$root/bin/lib/jdk.sh"
cd "$root"
if [ ! -e target/mqvirtio.jar ] || [ -n "$(find src/main pom.xml -newer target/mqvirtio.jar -print -quit)" ]; then
  ./mvnw -B -q -ntp -DskipTests -Ddist.skip=true package >&2
fi
kit=target/device
rm -rf "$kit"
mkdir -p "$kit/lib"
cp target/mqvirtio.jar target/lib/*.jar "$kit/lib/"
modules="$("$JAVA_HOME/bin/jdeps" --multi-release 25 --ignore-missing-deps --print-module-deps \
  -cp "$kit/lib/*" "$kit/lib/mqvirtio.jar" | tr ',' '\n' | grep -vx java.desktop | paste -sd, -)"
# the JVM's own: thread CPU times (java.management), Unsafe for the libraries that ask (jdk.unsupported)
modules="$modules,java.management,jdk.unsupported"
"$JAVA_HOME/bin/jlink" --add-modules "$modules" --strip-java-debug-attributes --no-header-files --no-man-pages \
  --compress zip-9 --output "$kit/runtime"
strip --strip-unneeded "$kit/runtime/lib/server/libjvm.so" 2>/dev/null || true
size=$(du -sm "$kit" | cut -f1)
echo "device kit: $kit, ${size} MiB (modules $modules)"
if [ "$size" -ge 64 ]; then
  echo "device kit: over the device tool's 64 MiB carry limit" >&2
  exit 1
fi
