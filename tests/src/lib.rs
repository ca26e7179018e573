//! zeronode-e2e: placeholder until its first real code lands.
