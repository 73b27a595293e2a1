//! `failover NAME` and `failback NAME`: a maintenance hold on the fallback. The intent is
//! `spec.failover.holdOnFallback`, so it survives operator restarts and plain kubectl can set
//! it; the operator acknowledges it in `status.failover.held`.

use std::io::Write;
use std::time::Duration;

use flotilla_crds::{conditions, FailoverMode, MicroService};
use kube::api::Patch;

use crate::commands::{patch_params, write_out, Target};
use crate::error::Error;

/// Why a hold cannot be set or cleared on `m`, if it cannot.
pub fn refusal(m: &MicroService, name: &str, hold: bool) -> Option<String> {
    let f = &m.spec.failover;
    if hold && (!f.enabled || f.fallback.is_none()) {
        return Some(format!(
            "{name}: has no fallback to hold traffic on (spec.failover.enabled is false); \
             declare spec.failover.fallback and enable failover first"
        ));
    }
    if hold && f.mode == FailoverMode::Observe {
        return Some(format!(
            "{name}: failover mode is Observe, so traffic never moves; set \
             spec.failover.mode: Enforce to hold it on the fallback"
        ));
    }
    match (hold, f.hold_on_fallback) {
        (true, true) => Some(format!(
            "{name}: already held on the fallback {}",
            f.fallback.as_deref().unwrap_or_default()
        )),
        (false, false) => Some(format!(
            "{name}: not held on the fallback; traffic that failed over on its own returns by \
             itself once the primary has been healthy for {}s",
            f.recover_after_seconds
        )),
        _ => None,
    }
}

/// Whether status shows the hold in force (`held`) or released (`!held`).
fn acknowledged(m: &MicroService, held: bool) -> bool {
    let f = m.status.as_ref().and_then(|s| s.failover.as_ref());
    let is_held = f.and_then(|f| f.held).unwrap_or(false);
    let active = f
        .and_then(|f| f.active)
        .map(|a| a == flotilla_crds::ActiveTarget::Fallback);
    if held {
        is_held
    } else {
        !is_held && active != Some(true)
    }
}

/// The operator's one-line account of the traffic (the `FailedOver` condition's message).
fn traffic_message(m: &MicroService) -> String {
    m.status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == conditions::FAILED_OVER)
        })
        .map(|c| c.message.clone())
        .unwrap_or_else(|| "no report from the operator yet".to_owned())
}

/// Sets (`hold`) or clears the hold and waits up to `wait` for the traffic to follow.
pub async fn set_hold(
    t: &Target,
    name: &str,
    hold: bool,
    wait: Duration,
    out: &mut impl Write,
) -> Result<(), Error> {
    let m = t.get(name).await?;
    if let Some(why) = refusal(&m, name, hold) {
        return Err(Error::Refused(why));
    }
    let fallback = m.spec.failover.fallback.clone().unwrap_or_default();
    let patch = serde_json::json!({"spec": {"failover": {"holdOnFallback": hold}}});
    t.msvcs()
        .patch(name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    let asked = if hold {
        format!(
            "{name}: hold on fallback {fallback} requested (spec.failover.holdOnFallback: true)\n"
        )
    } else {
        format!("{name}: hold released (spec.failover.holdOnFallback: false); traffic returns once the primary has been healthy for {}s\n", m.spec.failover.recover_after_seconds)
    };
    write_out(out, &asked)?;
    let done =
        kube::runtime::wait::await_condition(t.msvcs(), name, move |m: Option<&MicroService>| {
            m.is_some_and(|m| acknowledged(m, hold))
        });
    match tokio::time::timeout(wait, done).await {
        Ok(Ok(Some(m))) => {
            let state = if hold {
                format!("traffic held on fallback {fallback}")
            } else {
                "traffic back on the primary".to_owned()
            };
            write_out(out, &format!("{name}: {state}: {}\n", traffic_message(&m)))
        }
        Ok(Ok(None)) => Err(Error::NotFound {
            namespace: t.namespace.clone(),
            name: name.to_owned(),
        }),
        Ok(Err(e)) => Err(Error::Refused(format!("watch failed: {e}"))),
        Err(_) => {
            let now = t.get(name).await?;
            Err(Error::TimedOut {
                after: wait,
                what: format!(
                    "{name}: the traffic has not followed yet (the request stays): {}",
                    traffic_message(&now)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_crds::MicroServiceSpec;

    fn msvc(tweak: impl FnOnce(&mut MicroServiceSpec)) -> MicroService {
        let mut spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
        spec.failover.enabled = true;
        spec.failover.fallback = Some("users-standby".into());
        tweak(&mut spec);
        MicroService::new("users", spec)
    }

    /// A hold that makes no sense is refused with the reason, before anything is changed.
    #[test]
    fn holds_that_make_no_sense_are_refused() {
        let off = msvc(|s| {
            s.failover.enabled = false;
            s.failover.fallback = None;
        });
        assert!(refusal(&off, "users", true).is_some_and(|r| r.contains("no fallback")));
        let observe = msvc(|s| s.failover.mode = FailoverMode::Observe);
        assert!(refusal(&observe, "users", true).is_some_and(|r| r.contains("Observe")));
        let held = msvc(|s| s.failover.hold_on_fallback = true);
        assert!(refusal(&held, "users", true).is_some_and(|r| r.contains("already held")));
        assert!(refusal(&msvc(|_| {}), "users", false).is_some_and(|r| r.contains("not held")));
        assert_eq!(refusal(&msvc(|_| {}), "users", true), None);
        assert_eq!(refusal(&held, "users", false), None);
    }
}
