#!/usr/bin/env bash
# The distribution, built by `./mvnw package` after the jar (pom.xml, exec-maven-plugin):
#   target/dist/mqvirtio-VERSION.tar.gz   bin/mqvirtio (finds JDK 25 as the project's scripts do), lib/*.jar,
#                                          share/man/man1/mqvirtio.1, contrib/systemd/, README.md
#   target/dist/mqvirtio_VERSION-1_ARCH.deb  jpackage: a jlink'd runtime of the modules the jars need and the same
#                                          files under /opt/mqvirtio; /usr/bin/mqvirtio and the man page linked by its
#                                          postinst; the systemd units in /lib/systemd/system
# Usage: scripts/dist/package.sh TARGET_DIR VERSION   (JAVA_HOME: a JDK 25; ./mvnw sets it)
# Without jpackage's tools for a .deb (dpkg-deb, fakeroot) the archive is still made and the .deb is skipped with a
# line that says why (scripts/install-deps.sh installs them).
set -euo pipefail
target="$(cd "$1" && pwd)"
version="$2"
root="$(cd "$(dirname "$0")/../.." && pwd)"
jdk="${JAVA_HOME:?JAVA_HOME must be a JDK 25}"
dist="$target/dist"
name="mqvirtio-$version"
rm -rf "$dist"
mkdir -p "$dist"

# --- the archive --------------------------------------------------------------------------------------------
stage="$dist/stage/$name"
mkdir -p "$stage/bin" "$stage/lib" "$stage/share/man/man1" "$stage/contrib"
cp "$target/mqvirtio.jar" "$target"/lib/*.jar "$stage/lib/"
cp "$root/bin/lib/jdk.sh" "$stage/lib/jdk.sh"
cp "$target/man/mqvirtio.1" "$stage/share/man/man1/"
cp -r "$root/contrib/systemd" "$stage/contrib/"
cp "$root/README.md" "$stage/"
cat > "$stage/bin/mqvirtio" <<'LAUNCHER'
#!/usr/bin/env bash
# mqvirtio from its distribution archive: runs on the JDK 25+ it finds (JAVA_HOME, or the newest under /usr/lib/jvm).
set -euo pipefail
home="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
. "$home/lib/jdk.sh"
exec java --enable-native-access=ALL-UNNAMED ${MQVIRTIO_JAVA_OPTS:-} -cp "$home/lib/*" io.mqvirtio.cli.Main "$@"
LAUNCHER
chmod 755 "$stage/bin/mqvirtio"
tar -C "$dist/stage" --owner=0 --group=0 --sort=name -czf "$dist/$name.tar.gz" "$name"

# --- the .deb -------------------------------------------------------------------------------------------------
missing=()
for tool in dpkg-deb fakeroot; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "mqvirtio: no .deb: jpackage needs ${missing[*]} (scripts/install-deps.sh installs them); the archive is $dist/$name.tar.gz" >&2
  exit 0
fi
work="$dist/deb-work"
mkdir -p "$work/input/lib" "$work/resources" "$work/content"
cp "$target/mqvirtio.jar" "$work/input/"
cp "$target"/lib/*.jar "$work/input/lib/"
# the modules the jars use (jdeps), plus what is only reached by reflection: the JVM metrics' com.sun.management
modules="$("$jdk/bin/jdeps" --multi-release 25 --ignore-missing-deps --print-module-deps \
  --class-path "$work/input/lib/*" "$work/input/mqvirtio.jar" | tail -1)"
modules="$modules,jdk.management,jdk.unsupported"
"$jdk/bin/jlink" --add-modules "$modules" --strip-debug --no-header-files --no-man-pages --compress=zip-6 \
  --output "$work/runtime"
mkdir -p "$work/content/share/man/man1" "$work/content/systemd"
cp "$target/man/mqvirtio.1" "$work/content/share/man/man1/"
cp "$root"/contrib/systemd/*.service "$root"/contrib/systemd/*.socket "$work/content/systemd/"
# jpackage's own postinst/prerm templates, with our lines where it leaves room for them (DEB_POSTINST_UTILS)
cat > "$work/resources/postinst" <<'POSTINST'
#!/bin/sh
set -e
case "$1" in
  configure)
    ln -sf /opt/mqvirtio/bin/mqvirtio /usr/bin/mqvirtio
    ln -sf /opt/mqvirtio/lib/share/man/man1/mqvirtio.1 /usr/share/man/man1/mqvirtio.1
    for u in /opt/mqvirtio/lib/systemd/*; do ln -sf "$u" "/lib/systemd/system/$(basename "$u")"; done
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
    ;;
esac
exit 0
POSTINST
cat > "$work/resources/prerm" <<'PRERM'
#!/bin/sh
set -e
case "$1" in
  remove|purge|upgrade|deconfigure)
    rm -f /usr/bin/mqvirtio /usr/share/man/man1/mqvirtio.1
    for u in /opt/mqvirtio/lib/systemd/*; do rm -f "/lib/systemd/system/$(basename "$u")"; done
    ;;
esac
exit 0
PRERM
chmod 755 "$work/resources/postinst" "$work/resources/prerm"
"$jdk/bin/jpackage" --type deb --name mqvirtio --app-version "${version%%-*}" --vendor "the mqvirtio developers" \
  --description "Multiqueue virtio-net in pure Java: vhost-user-net backend, userspace driver, benchmark" \
  --input "$work/input" --main-jar mqvirtio.jar --main-class io.mqvirtio.cli.Main \
  --java-options "--enable-native-access=ALL-UNNAMED" --runtime-image "$work/runtime" \
  --app-content "$work/content/share" --app-content "$work/content/systemd" \
  --resource-dir "$work/resources" --linux-package-name mqvirtio --linux-app-category net \
  --install-dir /opt --dest "$dist"
rm -rf "$work" "$dist/stage"
