#!/usr/bin/env bash
# Tells which QEMU the harness will use and what it can do. Prints shell-style KEY=value lines
# (safe for `eval "$(scripts/qemu-info.sh)"`, easy to parse from Java):
#   QEMU_BIN=/usr/bin/qemu-system-x86_64     the binary (MQV_QEMU overrides the lookup)
#   QEMU_VERSION=10.0.2                      as the binary reports it
#   QEMU_MAJOR=10
#   QEMU_MSIX_OK=1                           1: vhost-user virtio-net-pci with MSI-X works under TCG (QEMU >= 8)
#                                            0: QEMU 7.x crashes there (kvm_virtio_pci_irqfd_use): boot with pci=nomsi
#   QEMU_GUEST_APPEND='pci=nomsi'            kernel arguments a vhost-user guest needs with this QEMU ('' on >= 8)
#   QEMU_RECONNECT_OPT=reconnect-ms=1000     client chardev option for backend restarts (reconnect=1 before 9.2)
# Exit status 1 (and QEMU_BIN='') when no QEMU is found.
set -uo pipefail

bin="${MQV_QEMU:-}"
if [ -z "$bin" ]; then
  bin="$(command -v qemu-system-x86_64 2>/dev/null || true)"
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "QEMU_BIN=''"
  echo "QEMU_VERSION=''"
  echo "QEMU_MAJOR=0"
  echo "QEMU_MSIX_OK=0"
  echo "QEMU_GUEST_APPEND='pci=nomsi'"
  echo "QEMU_RECONNECT_OPT='reconnect=1'"
  exit 1
fi
ver="$("$bin" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p' | head -1)"
major="${ver%%.*}"; major="${major:-0}"
rest="${ver#*.}"; minor="${rest%%.*}"; [ "$rest" = "$ver" ] && minor=0; minor="${minor:-0}"
if [ "$major" -ge 8 ]; then msix=1; append=''; else msix=0; append='pci=nomsi'; fi
if [ "$major" -gt 9 ] || { [ "$major" -eq 9 ] && [ "$minor" -ge 2 ]; }; then
  reconnect='reconnect-ms=1000'
else
  reconnect='reconnect=1'
fi
echo "QEMU_BIN='$bin'"
echo "QEMU_VERSION='$ver'"
echo "QEMU_MAJOR=$major"
echo "QEMU_MSIX_OK=$msix"
echo "QEMU_GUEST_APPEND='$append'"
echo "QEMU_RECONNECT_OPT='$reconnect'"
