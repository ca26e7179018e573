//! zeronode-storage: placeholder until its first real code lands.
