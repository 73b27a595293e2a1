//! kubesim: a local Kubernetes API server (and, in `node`, a process-based node) for tests and
//! development on machines without a container engine. Not for production.

pub mod node;
