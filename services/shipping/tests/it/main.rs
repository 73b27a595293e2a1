//! The shipping service's integration tests, one binary: the `shipping` binary as a process
//! on a real RabbitMQ (`flotilla_testkit::rabbitmq`), fed by a publisher of the event contract
//! (`flotilla_testkit::amqp`).
//!
//! - [`process`]: start-up errors, readiness, SIGTERM.
//! - [`duplicates`]: an event delivered twice is handled once.
//! - [`broker_outage`]: the broker stops mid-stream; readiness names it; nothing is lost.
//! - [`crash`]: a consumer killed mid-message; the event is redelivered and handled once.
//! - [`poison`]: bad input and an event failing every retry end in the dead-letter queue.
//! - [`failover`]: an ejected consumer takes nothing new while a healthy one does, and resumes.
//! - [`support`]: what the modules share.

mod broker_outage;
mod crash;
mod duplicates;
mod failover;
mod poison;
mod process;
mod support;
