//! zeronode-types: placeholder until its first real code lands.
