//! zeronode-objects: placeholder until its first real code lands.
