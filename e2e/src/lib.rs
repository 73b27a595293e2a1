//! The Flotilla end-to-end harness.
//!
//! - [`env`]: the cluster a test runs against (from `KUBECONFIG`, or a local one) and
//!   [`env::run_test`], which gives each test its own labelled namespace and reports failures.
//! - [`local`]: the local cluster: kubesim, its node, and the operator as a child process.
//! - [`msvc`]: applying MicroServices and waiting for them to be Ready.
//! - [`http`]: requests to a Service as an in-cluster client would send them.
//! - [`namespace`]: one labelled namespace per test.
//! - [`wait`]: waiting on conditions with deadlines (never fixed sleeps).
//! - [`dump`]: what a failed test prints about its namespace.
//! - [`tools`]: finding `helm`, `kubectl` and the Python validators; running them.
//! - [`chart`]: rendering the Helm charts and validating the rendered objects.

pub mod chart;
pub mod dump;
pub mod env;
pub mod http;
pub mod local;
pub mod msvc;
pub mod namespace;
pub mod tools;
pub mod wait;
