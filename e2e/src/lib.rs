//! The Flotilla end-to-end harness.
//!
//! - [`tools`]: finding `helm`, `kubectl` and the Python validators; running them.
//! - [`chart`]: rendering the Helm charts and validating the rendered objects.
//! - [`namespace`]: one labelled namespace per test.
//! - [`wait`]: waiting on conditions with deadlines (never fixed sleeps).
//! - [`dump`]: what a failed test prints about its namespace.

pub mod chart;
pub mod dump;
pub mod namespace;
pub mod tools;
pub mod wait;
