#!/usr/bin/env bash
# Installs the system programs pvmlab drives: QEMU (x86_64 and aarch64), UEFI firmware,
# dnsmasq (with dnsmasq-utils' dhcp_release: `vm clean` drops leases), iPXE binaries, iproute2,
# busybox, pasta + nftables (the optional uplink), the OpenSSH client (vm ssh), Debian's signed
# shim and GRUB, the disk image tools (mmdebstrap, mtools, sfdisk) and Python's venv module.
#
# Idempotent: a package already present is not installed again, and nothing is downloaded when
# everything is there. Debian and Ubuntu use apt; macOS gets Homebrew hints; anything else gets a
# clear message listing what to install.
#
# Usage: scripts/install-system-deps.sh [--with-test-tools]
set -euo pipefail

with_test_tools=0
for arg in "$@"; do
  case "$arg" in
    --with-test-tools) with_test_tools=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-system-deps: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Where the iPXE binaries go when the distribution's own ipxe package lacks the arm64 build
# (Debian 12 ships x86 builds only). pvmlab looks here after /usr/lib/ipxe.
IPXE_LOCAL_DIR=/usr/local/lib/ipxe
DEBIAN_MIRROR=${PVMLAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}

packages=(
  qemu-system-x86 qemu-system-arm qemu-utils
  ovmf qemu-efi-aarch64 ipxe-qemu ipxe
  dnsmasq-base dnsmasq-utils iproute2 busybox-static cpio e2fsprogs dosfstools mtools
  passt nftables openssh-client
  python3 python3-venv python3-pip
  # `pvmlab image build`: mmdebstrap (the root), dosfstools + mtools (the ESP, no mount),
  # fdisk (sfdisk: the GPT), qemu-user-static (another arch's package scripts; pvmlab registers
  # it in a binfmt_misc private to the build, whatever the host has); systemd-boot comes from
  # the image itself
  mmdebstrap dosfstools mtools fdisk qemu-user-static
)
# Debian's signed shim and network GRUB for the host's architecture (vm create --loader grub,
# --secure-boot); the other architecture's are fetched by pvmlab into the lab home's cache.
case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
  amd64|x86_64) packages+=(shim-signed grub-efi-amd64-signed) ;;
  arm64|aarch64) packages+=(shim-signed grub-efi-arm64-signed) ;;
esac
# dropbear + sftp-server go into the SSH test initramfs (tests/fixtures/bootassets.py); fdisk
# and systemd-boot-efi make the deploy tests' small disk image (tests/fixtures/deployimage.py)
test_packages=(nginx-light curl dropbear-bin openssh-sftp-server chromium fdisk systemd-boot-efi)

uname_s=$(uname -s)
if [ "$uname_s" = Darwin ]; then
  cat <<'EOF'
pvmlab on macOS: install the tools with Homebrew:
  brew install qemu dnsmasq e2fsprogs python@3.12
QEMU from Homebrew ships its own UEFI firmware (edk2-*-code.fd) and descriptors.
The lab network on macOS (vmnet) is not supported yet; see docs/architecture.md.
EOF
  exit 1
fi

if [ ! -r /etc/os-release ]; then
  echo "install-system-deps: cannot tell which Linux distribution this is (/etc/os-release missing)." >&2
  echo "  hint: install by hand: ${packages[*]}" >&2
  exit 1
fi
# shellcheck disable=SC1091
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) ;;
  *)
    echo "install-system-deps: ${PRETTY_NAME:-this system} is not Debian or Ubuntu; automatic install is apt-only." >&2
    echo "  hint: install the equivalents of: ${packages[*]}" >&2
    exit 1 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -E "$0" "$@"
  fi
  echo "install-system-deps: needs root to install packages (run it with sudo)." >&2
  exit 1
fi

wanted=("${packages[@]}")
[ "$with_test_tools" = 1 ] && wanted+=("${test_packages[@]}")

missing=()
for p in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-system-deps: installing ${missing[*]}"
  apt-get update -q
  # Install one by one only if the batch fails, so one unknown package name (udhcpc on an old
  # release, say) is reported without blocking the rest.
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    for p in "${missing[@]}"; do
      apt-get install -y -q --no-install-recommends "$p" || echo "install-system-deps: could not install $p" >&2
    done
  fi
  # Debian starts nginx on the host's port 80 when it is installed; the benchmark only needs the
  # binary (it runs its own nginx inside a lab namespace), so undo the side effect we caused.
  case " ${missing[*]} " in
    *" nginx-light "*)
      if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now nginx >/dev/null 2>&1 || true
      fi ;;
  esac
else
  echo "install-system-deps: all system packages present"
fi

# iPXE for arm64 UEFI: take Debian 13's ipxe package (arch: all) when the system's lacks it.
have_ipxe() { [ -f "$1/ipxe-arm64.efi" ] && [ -f "$1/ipxe-amd64.efi" ] && [ -f "$1/undionly.kpxe" ]; }
if have_ipxe /usr/lib/ipxe || have_ipxe "$IPXE_LOCAL_DIR"; then
  echo "install-system-deps: iPXE binaries present"
else
  echo "install-system-deps: the system's ipxe package has no arm64 build; fetching Debian 13's ipxe into $IPXE_LOCAL_DIR"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb [arch=amd64,arm64 trusted=yes] $DEBIAN_MIRROR trixie main" > "$work/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
    -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root
  )
  apt-get "${apt_opts[@]}" update -q
  (cd "$work" && apt-get "${apt_opts[@]}" download ipxe)
  dpkg -x "$work"/ipxe_*.deb "$work/root"
  mkdir -p "$IPXE_LOCAL_DIR"
  cp -f "$work"/root/usr/lib/ipxe/*.efi "$work"/root/usr/lib/ipxe/*.kpxe "$IPXE_LOCAL_DIR"/ 2>/dev/null || true
  have_ipxe "$IPXE_LOCAL_DIR" || { echo "install-system-deps: Debian 13's ipxe did not provide the expected binaries" >&2; exit 1; }
  echo "install-system-deps: iPXE binaries in $IPXE_LOCAL_DIR"
fi
