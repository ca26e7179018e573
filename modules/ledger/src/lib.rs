//! zeronode-ledger: placeholder until its first real code lands.
