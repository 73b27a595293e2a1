//! The Flotilla end-to-end harness.
//!
//! - [`tools`]: finding `helm`, `kubectl` and the Python validators; running them.
//! - [`chart`]: rendering the Helm charts and validating the rendered objects.

pub mod chart;
pub mod tools;
