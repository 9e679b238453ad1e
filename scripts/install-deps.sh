#!/usr/bin/env bash
# Installs the real peers that mqvirtio's interop tests use, from Debian's packages:
#   guest:  linux-image-cloud-amd64 busybox-static cpio ethtool iproute2
#   bench:  fontconfig fonts-dejavu-core (the PNG plot's text)
#   DPDK:   dpdk dpdk-dev (dpdk-testpmd)
#   serve:  systemd (systemd-socket-activate, systemd-analyze: socket activation and the contrib units)
#   capture: fuse3 python3-fusepy (faultyfs.py: a capture disk whose writes hang, crawl or fail on command)
#   QEMU:   qemu-system-x86 >= 8 from bookworm-backports (QEMU 10), with qemu-system-common,
#           qemu-system-data and seabios from the same suite. QEMU 7.2 (Debian 12's own) is the fallback:
#           it crashes with vhost-user + MSI-X under TCG, so scripts/guest/run-guest.sh then boots the
#           guest with pci=nomsi (see scripts/qemu-info.sh).
#
# Idempotent: when everything is present it only runs dpkg-query and exits (about 0.2 s).
# Runs `apt-get update` only when something has to be installed. Never reads stdin.
# Exit status: 0 when all is there afterwards (QEMU 7.2 counts, with a note), 1 when something is still missing.
#
# Environment:
#   MQV_NO_BACKPORTS=1      don't use bookworm-backports; install Debian's own QEMU (7.2) if no QEMU is there
#   MQV_RETRY_BACKPORTS=1   retry backports now even if an earlier attempt failed (normally retried after 1 day)
#   MQV_DEPS_CHECK_ONLY=1   only report what is missing (exit 1 if anything is), install nothing
set -euo pipefail

log() { echo "install-deps: $*" >&2; }
here="$(cd "$(dirname "$0")" && pwd)"

BASE_PKGS=(linux-image-cloud-amd64 busybox-static cpio ethtool iproute2 dpdk dpdk-dev fontconfig fonts-dejavu-core systemd fakeroot tshark libvirt-daemon-system libvirt-clients libxml2-utils fuse3 python3-fusepy)
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
STATE_DIR=/var/lib/mqvirtio
BPO_FAILED="$STATE_DIR/backports-failed"
BPO_LIST=/etc/apt/sources.list.d/mqvirtio-backports.sources

codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
bpo_suite="${codename}-backports"

# --- what is there --------------------------------------------------------------------------------------
# Prints the names of packages (of those given) that are not installed.
missing_pkgs() {
  local p st
  for p in "$@"; do
    st="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [ "$st" = installed ] || echo "$p"
  done
}

qemu_version_pkg() { dpkg-query -W -f='${db:Status-Status} ${Version}' qemu-system-x86 2>/dev/null | awk '$1=="installed"{print $2}'; }

# QEMU is good when Debian's package >= 8 is installed (or MQV_QEMU names a binary that works).
qemu_good() {
  local v; v="$(qemu_version_pkg)"
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 1:8 && [ -x /usr/bin/qemu-system-x86_64 ]
}
qemu_any() { [ -n "$(qemu_version_pkg)" ] && [ -x /usr/bin/qemu-system-x86_64 ]; }

want_backports() {
  [ -z "${MQV_NO_BACKPORTS:-}" ] || return 1
  [ "$codename" = bookworm ] || return 1          # trixie and later ship QEMU >= 9 themselves
  if [ -f "$BPO_FAILED" ] && [ -z "${MQV_RETRY_BACKPORTS:-}" ] \
     && [ -n "$(find "$BPO_FAILED" -mmin -1440 -print 2>/dev/null)" ]; then
    return 1                                      # failed less than a day ago: don't retry on every run
  fi
  return 0
}

mapfile -t missing < <(missing_pkgs "${BASE_PKGS[@]}")
need_qemu=0
if qemu_good; then
  :
elif want_backports; then
  need_qemu=1
elif ! qemu_any; then
  need_qemu=1
fi

if [ "${#missing[@]}" -eq 0 ] && [ "$need_qemu" = 0 ]; then
  log "all present ($(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo 'no QEMU'))"
  exit 0
fi

if [ -n "${MQV_DEPS_CHECK_ONLY:-}" ]; then
  log "missing: ${missing[*]:-} $([ "$need_qemu" = 1 ] && echo 'qemu>=8')"
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  log "not root; cannot install: ${missing[*]:-} $([ "$need_qemu" = 1 ] && echo 'qemu>=8')"
  exit 1
fi

# --- installing -----------------------------------------------------------------------------------------
mkdir -p "$STATE_DIR"
# One install at a time (parallel test runs may call this script together).
exec 9>"$STATE_DIR/install-deps.lock"
flock -w 900 9 || { log "could not take $STATE_DIR/install-deps.lock"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=600
     -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

updated=0
apt_update() {
  [ "$updated" = 1 ] && return 0
  log "apt-get update"
  if apt-get -q -o DPkg::Lock::Timeout=600 update </dev/null >/tmp/mqv-apt-update.log 2>&1; then
    updated=1
  else
    log "apt-get update reported errors (see /tmp/mqv-apt-update.log); going on"
    updated=1
  fi
}

# Finds the mirror URI (and Signed-By) of the configured entry for suite $codename.
# deb822 files first (/etc/apt/sources.list.d/*.sources), then one-line entries (sources.list, *.list).
# Prints "URI<TAB>SIGNED_BY" (SIGNED_BY may be empty).
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    [ "$f" = "$BPO_LIST" ] && continue
    awk -v want="$codename" '
      function flush(   n, s, i, u) {
        sub(/^[ \t]+/, "", uris); sub(/^[ \t]+/, "", suites); sub(/^[ \t]+/, "", types)
        if (!found && uris != "" && enabled != "no") {
          n = split(types, t, /[ \t]+/); isdeb = 0
          for (i = 1; i <= n; i++) if (t[i] == "deb") isdeb = 1
          n = split(suites, s, /[ \t]+/)
          for (i = 1; i <= n; i++) if (s[i] == want && isdeb) {
            split(uris, u, /[ \t]+/)
            if (signed ~ /BEGIN PGP/) signed = ""
            print u[1] "\t" signed; found = 1; break
          }
        }
        types = suites = uris = signed = enabled = cur = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/   { line = $0; gsub(/^[ \t]+|[ \t]+$/, "", line)
                   if (cur == "uris") uris = uris " " line
                   else if (cur == "suites") suites = suites " " line
                   else if (cur == "types") types = types " " line
                   next }
      /^[A-Za-z0-9-]+:/ {
        i = index($0, ":"); key = tolower(substr($0, 1, i - 1)); val = substr($0, i + 1)
        gsub(/^[ \t]+|[ \t]+$/, "", val); cur = key
        if (key == "types") types = val; else if (key == "uris") uris = val
        else if (key == "suites") suites = val; else if (key == "signed-by") signed = val
        else if (key == "enabled") enabled = tolower(val)
        next }
      END { flush() }' "$f" | grep -v '^cdrom:' | head -1
  done | head -1 | grep . && return 0
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v want="$codename" '
      { sub(/#.*/, "") }
      $1 == "deb" {
        line = $0; sub(/^[ \t]*deb[ \t]+/, "", line); signed = ""
        if (line ~ /^\[/) {
          opts = substr(line, 2, index(line, "]") - 2); line = substr(line, index(line, "]") + 1)
          if (match(opts, /signed-by=[^ \t]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
        }
        n = split(line, w, /[ \t]+/); j = 0
        for (i = 1; i <= n; i++) if (w[i] != "") a[++j] = w[i]
        if (j >= 2 && a[2] == want && a[1] !~ /^cdrom:/) { print a[1] "\t" signed; exit }
      }' "$f"
  done | head -1 | grep .
}

backports_configured() {
  grep -rqsE "^[^#]*(^|[[:space:]])${bpo_suite}([[:space:]]|$)" /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null
}

add_backports() {
  backports_configured && return 0
  local m uri signed
  if ! m="$(find_mirror)"; then
    log "no configured entry for suite '$codename' found; cannot add $bpo_suite"
    return 1
  fi
  uri="${m%%$'\t'*}"; signed="${m#*$'\t'}"
  log "adding $bpo_suite from the configured mirror $uri ($BPO_LIST)"
  {
    echo "# Added by mqvirtio scripts/install-deps.sh (QEMU >= 8 for the interop tests)"
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: $bpo_suite"
    echo "Components: main"
    [ -n "$signed" ] && echo "Signed-By: $signed"
  } >"$BPO_LIST"
  updated=0      # the new suite needs its lists
}

# Add the backports source first, so that one `apt-get update` serves both installs.
bpo_ok=0
if [ "$need_qemu" = 1 ] && want_backports && add_backports; then bpo_ok=1; fi

if [ "${#missing[@]}" -gt 0 ]; then
  apt_update
  log "installing ${missing[*]}"
  "${APT[@]}" install "${missing[@]}" </dev/null || log "apt-get install ${missing[*]} failed"
fi

if [ "$need_qemu" = 1 ]; then
  ok=0
  if want_backports; then
    if [ "$bpo_ok" = 1 ]; then
      apt_update
      sel=(); for p in "${QEMU_PKGS[@]}"; do sel+=("$p/$bpo_suite"); done
      log "installing QEMU from $bpo_suite: ${QEMU_PKGS[*]}"
      if "${APT[@]}" install "${sel[@]}" </dev/null; then
        ok=1
      else
        log "per-package selection failed; trying -t $bpo_suite"
        "${APT[@]}" -t "$bpo_suite" install "${QEMU_PKGS[@]}" </dev/null && ok=1 || true
      fi
    fi
    if [ "$ok" = 1 ] && qemu_good; then
      rm -f "$BPO_FAILED"
    else
      ok=0
      date >"$BPO_FAILED"
      log "QEMU from $bpo_suite could not be installed; falling back to Debian's own QEMU (guests boot with pci=nomsi)"
    fi
  fi
  if [ "$ok" = 0 ] && ! qemu_any; then
    apt_update
    log "installing Debian's QEMU: ${QEMU_PKGS[*]}"
    "${APT[@]}" install "${QEMU_PKGS[@]}" </dev/null || log "apt-get install ${QEMU_PKGS[*]} failed"
  fi
fi

"$here/qemu-info.sh" >&2 || true
mapfile -t still < <(missing_pkgs "${BASE_PKGS[@]}")
qemu_any || still+=(qemu-system-x86)
if [ "${#still[@]}" -gt 0 ]; then
  log "FAILED: still missing: ${still[*]}"
  exit 1
fi
qemu_good || log "note: QEMU $(qemu_version_pkg) < 8: vhost-user guests boot with pci=nomsi"
