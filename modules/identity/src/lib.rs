//! zeronode-identity: placeholder until its first real code lands.
