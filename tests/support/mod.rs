//! The tests' helpers live in the dev-only `shoal-testkit` crate; this names the binary the
//! tests run (cargo builds it for them).
#![allow(dead_code, unused_imports)]

pub use shoal_testkit::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");
