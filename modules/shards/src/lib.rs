//! zeronode-shards: placeholder until its first real code lands.
