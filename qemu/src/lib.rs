//! zeronode-qemu: placeholder until its first real code lands.
