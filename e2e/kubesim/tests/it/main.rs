//! kubesim's integration tests, one binary: the API server over real HTTP (`api_*`: kube-rs,
//! raw requests and the real kubectl) and the process node (`node_*`: pods as local processes,
//! Services, the `kubesim up` binary). Each test starts its own cluster; [`support`] is the one
//! way to start one and to reach it.

mod support;

mod api_crd;
mod api_crud;
mod api_delete;
mod api_events;
mod api_eviction;
mod api_faults;
mod api_kubectl;
mod api_logs;
mod api_patch;
mod api_security;
mod api_subresources;
mod api_watch;
mod node_cli;
mod node_deployment;
mod node_incluster;
mod node_kubelet;
mod node_service;
