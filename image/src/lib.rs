//! zeronode-image: placeholder until its first real code lands.
