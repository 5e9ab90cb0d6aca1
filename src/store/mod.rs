//! Where state lives. `memory`: the in-process store for `simulate` and tests.
pub mod memory;
