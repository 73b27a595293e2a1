//! The pod status the kubelet reports, built from what it knows about the pod's containers:
//! phase, conditions (with stable transition times), IPs and container states. Pure.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A container's state as the kubelet tracks it.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Option<Time>,
        finished_at: Time,
        /// The ID of the container run that ended (none when it never started).
        container_id: Option<String>,
    },
}

impl RunState {
    fn to_api(&self) -> ContainerState {
        match self.clone() {
            RunState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason),
                    message,
                }),
                ..Default::default()
            },
            RunState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at),
                }),
                ..Default::default()
            },
            RunState::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
                container_id,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    signal,
                    reason: Some(reason),
                    started_at,
                    finished_at: Some(finished_at),
                    container_id,
                    message: None,
                }),
                ..Default::default()
            },
        }
    }
}

/// What the kubelet knows about one container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    /// `kubesim://<pid>` of the current (or last) process, as a runtime reports
    /// `containerd://<id>`: tools find the container's process from it.
    pub container_id: Option<String>,
    pub state: RunState,
    pub last_state: Option<RunState>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// Whether it may still be (re)started; false once it finished under its restart policy.
    pub will_restart: bool,
}

impl ContainerInfo {
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            container_id: None,
            state: RunState::Waiting {
                reason: reason.into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            will_restart: true,
        }
    }

    fn to_api(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: self.container_id.clone(),
            state: Some(self.state.to_api()),
            last_state: Some(
                self.last_state
                    .as_ref()
                    .map_or_else(ContainerState::default, RunState::to_api),
            ),
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            ..Default::default()
        }
    }
}

/// Everything the status is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Time,
    pub initialized: bool,
    pub containers: Vec<ContainerInfo>,
}

fn phase(info: &PodInfo) -> &'static str {
    let cs = &info.containers;
    let terminated = |c: &ContainerInfo| matches!(c.state, RunState::Terminated { .. });
    if !cs.is_empty() && cs.iter().all(|c| terminated(c) && !c.will_restart) {
        let failed = cs
            .iter()
            .any(|c| matches!(c.state, RunState::Terminated { exit_code, .. } if exit_code != 0));
        return if failed { "Failed" } else { "Succeeded" };
    }
    let never_ran =
        |c: &ContainerInfo| c.restart_count == 0 && matches!(c.state, RunState::Waiting { .. });
    if !info.initialized || cs.iter().any(never_ran) {
        "Pending"
    } else {
        "Running"
    }
}

fn condition(type_: &str, ok: bool, previous: &[PodCondition], now: &Time) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(since),
        reason: (!ok && (type_ == "Ready" || type_ == "ContainersReady"))
            .then(|| "ContainersNotReady".into()),
        ..Default::default()
    }
}

/// The status to write. `previous` conditions keep their transition times while unchanged.
pub fn pod_status(info: &PodInfo, previous: &[PodCondition], now: &Time) -> PodStatus {
    let all_ready = !info.containers.is_empty() && info.containers.iter().all(|c| c.ready);
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            info.pod_ip.is_some(),
            previous,
            now,
        ),
        condition("Initialized", info.initialized, previous, now),
        condition("Ready", all_ready, previous, now),
        condition("ContainersReady", all_ready, previous, now),
        condition("PodScheduled", true, previous, now),
    ];
    PodStatus {
        phase: Some(phase(info).into()),
        conditions: Some(conditions),
        host_ip: Some(info.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: info.host_ip.clone(),
        }]),
        pod_ip: info.pod_ip.clone(),
        pod_ips: info.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: Some(info.start_time.clone()),
        container_statuses: Some(info.containers.iter().map(ContainerInfo::to_api).collect()),
        qos_class: Some("BestEffort".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap_or_default())
    }

    fn info(containers: Vec<ContainerInfo>) -> PodInfo {
        PodInfo {
            pod_ip: Some("127.2.0.2".into()),
            host_ip: "127.0.0.1".into(),
            start_time: t(1),
            initialized: true,
            containers,
        }
    }

    fn running(ready: bool) -> ContainerInfo {
        ContainerInfo {
            state: RunState::Running { started_at: t(2) },
            ready,
            started: true,
            ..ContainerInfo::waiting("c", "img", "")
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .unwrap_or_else(|| panic!("no {t}"))
    }

    #[test]
    fn phase_follows_container_states() {
        // Pending until containers ran, Running while they run or restart, Succeeded/Failed when done.
        assert_eq!(
            phase(&info(vec![ContainerInfo::waiting(
                "c",
                "i",
                "ErrImagePull"
            )])),
            "Pending"
        );
        assert_eq!(phase(&info(vec![running(false)])), "Running");
        let crashlooping = ContainerInfo {
            restart_count: 3,
            ..ContainerInfo::waiting("c", "i", "CrashLoopBackOff")
        };
        assert_eq!(phase(&info(vec![crashlooping])), "Running");
        let done = |code| ContainerInfo {
            state: RunState::Terminated {
                exit_code: code,
                signal: None,
                reason: "Completed".into(),
                started_at: None,
                finished_at: t(3),
                container_id: None,
            },
            will_restart: false,
            ..ContainerInfo::waiting("c", "i", "")
        };
        assert_eq!(phase(&info(vec![done(0)])), "Succeeded");
        assert_eq!(phase(&info(vec![done(1)])), "Failed");
    }

    #[test]
    fn ready_follows_containers_and_keeps_its_transition_time() {
        // Ready is true only when every container is ready; unchanged conditions keep their time.
        let s1 = pod_status(&info(vec![running(true)]), &[], &t(10));
        assert_eq!(cond(&s1, "Ready").status, "True");
        let prev = s1.conditions.clone().unwrap_or_default();
        let s2 = pod_status(&info(vec![running(true)]), &prev, &t(20));
        assert_eq!(s1, s2, "same state → same status → no write");
        let s3 = pod_status(&info(vec![running(false)]), &prev, &t(30));
        assert_eq!(cond(&s3, "Ready").status, "False");
        assert_eq!(cond(&s3, "Ready").last_transition_time, Some(t(30)));
        assert_eq!(cond(&s3, "PodScheduled").last_transition_time, Some(t(10)));
    }
}
