# Sourced by the project's scripts and ./mvnw (POSIX sh): finds a JDK 25+ and exports JAVA_HOME and PATH for it.
# Order: $JAVA_HOME if it is 25 or newer, then the newest JDK 25+ under /usr/lib/jvm.

jdk_major() {  # prints the feature version of the JDK at $1, or nothing
  local release="$1/release"
  [ -x "$1/bin/java" ] && [ -x "$1/bin/javac" ] || return 0
  if [ -r "$release" ]; then
    sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$release"
  fi
}

find_jdk25() {
  local v
  if [ -n "${JAVA_HOME:-}" ]; then
    v=$(jdk_major "$JAVA_HOME")
    if [ -n "$v" ] && [ "$v" -ge 25 ]; then echo "$JAVA_HOME"; return 0; fi
  fi
  local best="" bestv=0 d
  for d in /usr/lib/jvm/*; do
    [ -d "$d" ] || continue
    v=$(jdk_major "$d")
    if [ -n "$v" ] && [ "$v" -ge 25 ] && [ "$v" -gt "$bestv" ]; then best="$d"; bestv="$v"; fi
  done
  [ -n "$best" ] && { echo "$best"; return 0; }
  return 1
}

if ! JAVA_HOME=$(find_jdk25); then
  echo "mqvirtio needs JDK 25 or newer and found none (JAVA_HOME=${JAVA_HOME:-unset}, none under /usr/lib/jvm): install one (e.g. temurin-25-jdk) or point JAVA_HOME at it" >&2
  exit 1
fi
export JAVA_HOME
export PATH="$JAVA_HOME/bin:$PATH"
