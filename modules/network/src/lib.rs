//! zeronode-network: placeholder until its first real code lands.
