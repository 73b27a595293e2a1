//! The one test harness of Flotilla's controller, failover and end-to-end tests.
//!
//! A test starts a [`Harness`] (a local kubesim cluster, or the cluster named by a kubeconfig),
//! which installs the CRD, creates the test's labelled namespace and starts the operator, then
//! says only what it proves:
//!
//! ```no_run
//! # async fn example(launcher: flotilla_testkit::operator::Launcher) -> anyhow::Result<()> {
//! let h = flotilla_testkit::Harness::builder("create").operator(launcher).start().await?;
//! h.create("users", flotilla_crds::MicroServiceSpec::with_image("flotilla/users:0.1.0")).await?;
//! h.wait("the Deployment", || async { Ok(h.deployments().get_opt("users").await?) }).await?;
//! # Ok(()) }
//! ```
//!
//! - [`harness`]: the [`Harness`] and its builder: cluster, namespace, operator, waits, report.
//! - [`cluster`]: the local cluster (kubesim and its node), the CRD, kubeconfig clients.
//! - [`operator`]: the operator in-process (a closure from the operator's own tests) or as a
//!   child process.
//! - [`wait`]: watch-driven waits, and the one poll for state outside the API server.
//! - [`http`]: the one HTTP client.
//! - [`dump`]: what a failed test prints about its namespace.
//! - [`namespace`]: one labelled namespace per test.
//! - [`process`]: a service binary as a child process: started, waited on until ready, stopped
//!   with SIGTERM, its log printed when a test fails.
//! - [`paths`]: the workspace's binaries seen from a test binary.
//! - [`otlp`]: a real OTLP trace receiver (HTTP and gRPC) recording the spans it is sent.
//! - [`postgres`]: an empty database per test on the test command's PostgreSQL server.
//! - [`rabbitmq`]: a real RabbitMQ broker (the machine's `rabbitmq-server`) on free ports,
//!   stopped, killed and started again by the test; or a virtual host of its own on the broker
//!   the test command starts for the run.
//! - [`amqp`]: the fleet's events on that broker: a publisher with confirms, and a tap a test
//!   reads the published events from.
//! - [`memory`]: a process's resident memory, for tests and benchmarks that bound it.

pub mod amqp;
pub mod cluster;
pub mod dump;
pub mod harness;
pub mod http;
pub mod memory;
pub mod namespace;
pub mod operator;
pub mod otlp;
pub mod paths;
pub mod postgres;
pub mod process;
pub mod rabbitmq;
pub mod raw_http;
pub mod wait;

pub use harness::{is_ready, Harness};
