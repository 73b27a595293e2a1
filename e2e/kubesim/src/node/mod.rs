//! The simulated node: built-in controllers, a process kubelet and a service proxy.
