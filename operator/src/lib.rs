//! placeholder
pub mod failover;
