#!/usr/bin/env bash
# The main job, from a fresh Debian/Ubuntu machine: installs what is needed, builds a small
# bootable kernel + busybox initramfs from Debian packages, creates a lab, imports that kernel,
# creates an aarch64 UEFI target and PXE-boots it through the whole chain
# (firmware DHCP -> TFTP iPXE -> HTTP script -> kernel + initrd), then shows that it booted.
#
# Usage: sudo scripts/demo.sh [--arch aarch64|x86_64] [--firmware uefi|bios] [--keep]
#   --keep   leave the lab and the VM's files in place afterwards (default: stop the lab)
# Environment: PVMLAB_HOME (default ~/.pvmlab-demo, so your own lab is never touched),
#              PVMLAB_ACCEL (kvm|hvf|tcg; default: chosen by pvmlab)
set -euo pipefail
cd "$(dirname "$0")/.."

arch=aarch64
firmware=uefi
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs a value}; shift 2 ;;
    --firmware) firmware=${2:?--firmware needs a value}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the lab network (a network namespace with a bridge and taps) needs root." >&2
  echo "  hint: run it as: sudo scripts/demo.sh" >&2
  exit 1
fi

scripts/install-system-deps.sh
scripts/venv.sh

export PVMLAB_HOME=${PVMLAB_HOME:-$HOME/.pvmlab-demo}
pvmlab=.venv/bin/pvmlab
vm=demo-${arch//_/-}-$firmware   # VM names allow letters, digits and -
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building a demo kernel + busybox initramfs for $arch from Debian packages (cached)"
assets_root="$PVMLAB_HOME-assets"
.venv/bin/python -m tests.fixtures.bootassets --arch "$arch" --out "$assets_root"
assets="$assets_root/$arch"
ls -l "$assets"

step "pvmlab setup"
$pvmlab setup || true

step "Creating and starting the lab network"
[ -f "$PVMLAB_HOME/lab.json" ] || $pvmlab provisioner create
$pvmlab provisioner start
cleanup() {
  if [ "$keep" = 0 ]; then
    step "Stopping (pass --keep to leave the lab running)"
    $pvmlab vm stop "$vm" --force >/dev/null 2>&1 || true
    $pvmlab provisioner stop || true
  fi
}
trap cleanup EXIT

step "Importing the demo kernel as distro 'demo'"
$pvmlab distro import demo --arch "$arch" --kernel "$assets/vmlinuz" --initrd "$assets/initrd"

step "Creating target VM $vm"
$pvmlab vm list --json | grep -q "\"name\": \"$vm\"" || \
  $pvmlab vm create "$vm" --arch "$arch" --firmware "$firmware" --distro demo

step "PXE-booting $vm (under TCG emulation this takes 5-30 s)"
$pvmlab vm start "$vm" --wait --wait-for PVMLAB-BOOT-OK --timeout 300

step "What the console printed"
grep -a -m1 -A1 PVMLAB-BOOT-OK "$PVMLAB_HOME/logs/$vm.log" || true
step "Where the seconds went"
$pvmlab vm timeline "$vm" || true
step "The lab"
$pvmlab provisioner status
$pvmlab vm list
