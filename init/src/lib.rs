//! zeronode-init: placeholder until its first real code lands.
