#!/usr/bin/env bash
# Builds a small initramfs for a QEMU test guest running the installed Debian cloud kernel.
#
#   scripts/guest/build-initramfs.sh OUTDIR [GUEST_SCRIPT]
#
# OUTDIR gets:
#   initramfs.cpio.gz   busybox-static + applet links, the virtio-net modules (modprobe's load order), the host's
#                       ethtool (/usr/sbin/ethtool) and ip (/sbin/ip-full) with their shared libraries, /init,
#                       and GUEST_SCRIPT as /test.sh when given
#   vmlinuz             a copy of /boot/vmlinuz-KVER
#   kernel-version      KVER
#   baked-script        the path of GUEST_SCRIPT, only when one was given (run-guest.sh then leaves OUTDIR alone)
# stdout: three lines, MQV_KERNEL=PATH, MQV_INITRD=PATH, MQV_KERNEL_VERSION=KVER (diagnostics go to stderr).
# Cached: nothing is rebuilt when the inputs (this script, kernel, modules, binaries, GUEST_SCRIPT, extra
# binaries) are unchanged. Safe to run concurrently on the same OUTDIR (flock). Root is not required.
#
# Environment:
#   MQV_KERNEL_VERSION=KVER      kernel to use (default: newest /boot/vmlinuz-*-cloud-amd64)
#   MQV_GUEST_EXTRA_BINS="a b"   more host binaries to copy in (same path, with their libraries)
#
# The guest's /init (its protocol, all lines on the serial console ttyS0):
#   mounts proc, sys, dev (devtmpfs), /tmp and /run (tmpfs); insmods the modules; waits for eth0;
#   kernel arguments mqv.KEY=VALUE become environment variables MQV_KEY=VALUE (KEY upper-cased) for the test;
#   mqv.netwait=SECONDS  how long to wait for eth0 (default 60)
#   mqv.ip=ADDR/LEN      if given: eth0 gets that address and is set up before the test
#   mqv.timeout=SECONDS  if given: the test is killed after that long (busybox timeout)
#   mqv.cmd64=BASE64     a shell command to run when the initramfs has no /test.sh
#   markers printed:  MQV-BOOT kernel=KVER uptime=S
#                     MQV-NET eth0=present|missing uptime=S
#                     MQV-READY uptime=S                 (right before the test starts)
#                     MQV-RESULT key=value               (the test prints these, e.g. with `mqv-result key value`)
#                     MQV-DONE rc=N uptime=S             (the test's exit status; then poweroff -f)
#   The test runs as `sh /test.sh` from /, stdout and stderr on the console; /usr/bin/mqv-result KEY VALUE...
#   prints `MQV-RESULT KEY=VALUE...`. Use /usr/sbin/ethtool and /sbin/ip-full by full path: busybox sh prefers
#   its own applets (ip, ...) to $PATH.
set -euo pipefail

log() { echo "build-initramfs: $*" >&2; }
die() { log "$*"; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUTDIR [GUEST_SCRIPT]"
outdir="$1"
script="${2:-}"
[ -z "$script" ] || [ -f "$script" ] || die "no such guest script: $script"
self="$(readlink -f "$0")"

# --- kernel -----------------------------------------------------------------------------------------------
kver="${MQV_KERNEL_VERSION:-}"
if [ -z "$kver" ]; then
  kimg="$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1 || true)"
  [ -n "$kimg" ] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64: scripts/install-deps.sh)"
  kver="${kimg#/boot/vmlinuz-}"
fi
kimg="/boot/vmlinuz-$kver"
[ -r "$kimg" ] || die "cannot read $kimg"
[ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver"

# Modules in load order, as modprobe resolves them (duplicates dropped, built-ins skipped).
mapfile -t modules < <(
  for m in virtio_pci virtio_net; do
    modprobe -S "$kver" --show-depends "$m" || die "modprobe --show-depends $m failed"
  done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }')
[ "${#modules[@]}" -gt 0 ] || die "no modules found for $kver"

busybox="$(command -v busybox || echo /bin/busybox)"
[ -x "$busybox" ] || die "no busybox (install busybox-static)"
ethtool="$(command -v ethtool || echo /usr/sbin/ethtool)"
[ -x "$ethtool" ] || die "no ethtool"
ipbin="$(command -v ip || echo /usr/sbin/ip)"
[ -x "$ipbin" ] || die "no ip (iproute2)"
read -r -a extra_bins <<<"${MQV_GUEST_EXTRA_BINS:-}"

# Shared libraries (and the ELF interpreter) a binary needs, resolved on the host.
libs_of() {
  ldd "$1" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }' || true
}

# --- cache ------------------------------------------------------------------------------------------------
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
exec 8>"$outdir/.lock"
flock -w 300 8 || die "could not lock $outdir/.lock"

all_bins=("$busybox" "$ethtool" "$ipbin" "${extra_bins[@]}")
key="$(
  {
    echo "kver $kver"
    sha256sum "$self" "$kimg" "${modules[@]}"
    for b in "${all_bins[@]}"; do
      [ -n "$b" ] || continue
      sha256sum "$(readlink -f "$b")"
      for l in $(libs_of "$b"); do sha256sum "$(readlink -f "$l")"; done
    done
    echo "dests ${all_bins[*]}"
    if [ -n "$script" ]; then sha256sum <"$script"; else echo "no script"; fi
  } | sha256sum | cut -d' ' -f1)"

emit() {
  echo "MQV_KERNEL=$outdir/vmlinuz"
  echo "MQV_INITRD=$outdir/initramfs.cpio.gz"
  echo "MQV_KERNEL_VERSION=$kver"
}

if [ -f "$outdir/initramfs.cpio.gz" ] && [ -f "$outdir/vmlinuz" ] && [ "$(cat "$outdir/.inputs" 2>/dev/null)" = "$key" ]; then
  log "up to date: $outdir/initramfs.cpio.gz (kernel $kver)"
  emit
  exit 0
fi

# --- build ------------------------------------------------------------------------------------------------
t0=$(date +%s.%N)
stage="$(mktemp -d "$outdir/.stage.XXXXXX")"
trap 'rm -rf "$stage" "$outdir"/.initramfs.tmp.* "$outdir"/.vmlinuz.tmp.*' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,tmp,run,etc,root}
# Files keep their host path; the ELF interpreter and libraries too.
copy_with_libs() {   # HOSTPATH [GUESTPATH]
  local src="$1" dst="${2:-$1}" l
  mkdir -p "$stage$(dirname "$dst")"
  cp -L "$src" "$stage$dst"
  for l in $(libs_of "$src"); do
    if [ ! -e "$stage$l" ]; then
      mkdir -p "$stage$(dirname "$l")"
      cp -L "$l" "$stage$l"
    fi
  done
}

copy_with_libs "$busybox" /bin/busybox
# Applet links (absolute targets; existing paths are kept).
"$busybox" --list-full | while read -r a; do
  [ -e "$stage/$a" ] || [ -L "$stage/$a" ] || { mkdir -p "$stage/$(dirname "$a")"; ln -s /bin/busybox "$stage/$a"; }
done
copy_with_libs "$ethtool" /usr/sbin/ethtool
copy_with_libs "$ipbin" /sbin/ip-full
for b in "${extra_bins[@]}"; do
  [ -n "$b" ] || continue
  p="$(command -v "$b" || true)"; [ -n "$p" ] || die "extra binary not found: $b"
  copy_with_libs "$p" "$p"
done

: >"$stage/etc/modules.order"
for m in "${modules[@]}"; do
  base="$(basename "$m")"
  case "$base" in
    *.ko.xz)  xz -dc "$m" >"$stage/lib/modules/${base%.xz}"; base="${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$m" >"$stage/lib/modules/${base%.zst}"; base="${base%.zst}" ;;
    *.ko.gz)  gzip -dc "$m" >"$stage/lib/modules/${base%.gz}"; base="${base%.gz}" ;;
    *)        cp "$m" "$stage/lib/modules/$base" ;;
  esac
  echo "$base" >>"$stage/etc/modules.order"
done
echo "$kver" >"$stage/etc/kernel-version"
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
printf '127.0.0.1 localhost\n' >"$stage/etc/hosts"
# A console node, so the kernel can open it for /init (needs root; /init also re-opens it after mounting dev).
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true

cat >"$stage/usr/bin/mqv-result" <<'EOF'
#!/bin/sh
# mqv-result KEY VALUE... : prints one MQV-RESULT line on the console
k="$1"; shift
echo "MQV-RESULT $k=$*"
EOF
chmod 755 "$stage/usr/bin/mqv-result"

cat >"$stage/init" <<'EOF'
#!/bin/sh
# mqvirtio test guest init (scripts/guest/build-initramfs.sh)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
up() { cut -d' ' -f1 /proc/uptime; }
finish() {
  echo "MQV-DONE rc=$1 uptime=$(up)"
  sync
  poweroff -f
  sleep 5
  echo b >/proc/sysrq-trigger 2>/dev/null
}
echo "MQV-BOOT kernel=$(cat /etc/kernel-version) uptime=$(up)"

# mqv.KEY=VALUE kernel arguments -> MQV_KEY=VALUE
for tok in $(cat /proc/cmdline); do
  case "$tok" in
    mqv.*=*)
      k="${tok%%=*}"; k="${k#mqv.}"; v="${tok#*=}"
      k="$(echo "$k" | tr 'a-z.-' 'A-Z__')"
      export "MQV_$k=$v" ;;
  esac
done

for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m" || echo "MQV-ERROR insmod $m failed"
done
/sbin/ip-full link set lo up 2>/dev/null

wait_s="${MQV_NETWAIT:-60}"
n=0
while [ ! -e /sys/class/net/eth0 ] && [ "$n" -lt $((wait_s * 10)) ]; do
  sleep 0.1; n=$((n + 1))
done
if [ -e /sys/class/net/eth0 ]; then
  echo "MQV-NET eth0=present uptime=$(up)"
  if [ -n "${MQV_IP:-}" ]; then
    /sbin/ip-full addr add "$MQV_IP" dev eth0 && /sbin/ip-full link set eth0 up \
      || echo "MQV-ERROR could not configure eth0 with $MQV_IP"
  fi
else
  echo "MQV-NET eth0=missing uptime=$(up)"
fi

cd /
if [ -f /test.sh ]; then
  set -- sh /test.sh
elif [ -n "${MQV_CMD64:-}" ]; then
  echo "$MQV_CMD64" | base64 -d >/tmp/cmd.sh
  set -- sh /tmp/cmd.sh
else
  set -- true
  echo "MQV-RESULT test=none"
fi
if [ -n "${MQV_TIMEOUT:-}" ]; then set -- timeout "$MQV_TIMEOUT" "$@"; fi
echo "MQV-READY uptime=$(up)"
"$@"
finish $?
EOF
chmod 755 "$stage/init"
if [ -n "$script" ]; then
  cp "$script" "$stage/test.sh"
  chmod 755 "$stage/test.sh"
fi

tmp_img="$(mktemp "$outdir/.initramfs.tmp.XXXXXX")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n) >"$tmp_img"
tmp_k="$(mktemp "$outdir/.vmlinuz.tmp.XXXXXX")"
cp "$kimg" "$tmp_k"
chmod 644 "$tmp_img" "$tmp_k"
mv -f "$tmp_k" "$outdir/vmlinuz"
mv -f "$tmp_img" "$outdir/initramfs.cpio.gz"
echo "$kver" >"$outdir/kernel-version"
if [ -n "$script" ]; then readlink -f "$script" >"$outdir/baked-script"; else rm -f "$outdir/baked-script"; fi
echo "$key" >"$outdir/.inputs"
t1=$(date +%s.%N)
log "built $outdir/initramfs.cpio.gz ($(du -k "$outdir/initramfs.cpio.gz" | cut -f1) KiB, kernel $kver, $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
emit
