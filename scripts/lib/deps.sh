# Sourced by the scripts: installs what the build and the boot tests need,
# only what is missing, so it is cheap to call every time.

# Debian packages: the musl C toolchain (static binaries with C parts), protoc
# (containerd-client), QEMU with OVMF and the iPXE ROMs, the UKI stub, and the
# tools the image builder calls (mksquashfs, objcopy, depmod, sfdisk and cpio
# for its tests); btrfs-progs (`btrfs check` judges the storage module's
# own btrfs format in its tests), e2fsprogs and util-linux (the tests'
# foreign ext4 disks, losetup, mount); redis-server and redis-tools (the
# objects tests' backends, the shard store's redis-cli tests and its
# benchmark against redis); nftables (nft ships in the image for workload
# NAT), dnsmasq-base, iproute2 and iputils-ping (the network tests' DHCP
# server, namespaces and reachability checks); containerd and runc (they
# ship in the image for container workloads; the containers tests start
# their own containerd) and busybox-static (the static busybox the
# containers tests pack into their OCI archive); gcc-12, make, libc6-dev,
# libelf1 and xz-utils (a kernel module built again from Debian's source,
# [kernel] rebuild in image/zeronode.toml).
ZN_APT_PACKAGES=(musl-tools protobuf-compiler qemu-system-x86 qemu-utils ovmf ipxe-qemu
  systemd-boot-efi squashfs-tools binutils kmod fdisk cpio git python3 ca-certificates
  btrfs-progs e2fsprogs util-linux redis-server redis-tools
  nftables dnsmasq-base iproute2 iputils-ping
  containerd runc busybox-static
  gcc-12 make libc6-dev libelf1 xz-utils)

zn_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The first 16 hex digits of a file's hash, for listings.
short_hash() { sha256sum "$1" | cut -c1-16; }

# Fills the array `missing` with the packages of ZN_APT_PACKAGES not installed.
zn_missing_packages() {
  missing=()
  for p in "${ZN_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
}

zn_ensure_deps() {
  local missing pass sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  # Twice at most: installing one package can remove another (a backported
  # qemu-utils gives way to Debian's qemu-system-x86), which the second pass
  # installs again in the version that fits.
  for pass in 1 2; do
    zn_missing_packages
    ((${#missing[@]})) || break
    zn_log "installing Debian packages: ${missing[*]}"
    ((pass > 1)) || "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  done
  zn_missing_packages
  if ((${#missing[@]})); then
    echo "Debian packages still missing after installing them: ${missing[*]}" >&2
    return 1
  fi
  if ! command -v cargo >/dev/null; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first (https://rustup.rs)" >&2; return 1; }
  if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    zn_log "adding the rustup target x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl >/dev/null
  fi
}
