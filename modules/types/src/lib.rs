//! What the node's modules share: how they reach each other over D-Bus.

pub mod bus;
