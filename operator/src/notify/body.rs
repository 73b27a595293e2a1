//! What a notification says: the fields of the published Event a receiver needs, and the two
//! bodies they are sent as (Flotilla's JSON, or Slack's `{"text": ...}`).
//!
//! Pure: no client and no clock (the time is the Event's own).

use k8s_openapi::api::events::v1::Event;
use serde_json::{json, Value};

use super::Format;

/// One notification, taken from an Event the operator published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The Event's reason, e.g. `FailedOver`.
    pub reason: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// The Event's note: what happened, in words.
    pub message: String,
    /// The Event's action (`Traffic` for the failover engine, `Rollout` for guarded rollouts).
    pub action: String,
    /// The object the Event is about (a MicroService).
    pub object: Regarding,
    /// When the Event was published (RFC 3339).
    pub timestamp: String,
    /// The controller that published it (`flotilla-operator`, `flotilla-failover`).
    pub reporting_controller: String,
    /// The replica that published it.
    pub reporting_instance: String,
}

/// The object an Event is about, as a receiver names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regarding {
    /// `flotilla.rs/v1alpha1` and the like.
    pub api_version: String,
    /// `MicroService`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Notification {
    /// The notification of `event` (missing fields are empty: the operator always sets them).
    pub fn from_event(event: &Event) -> Self {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let regarding = event.regarding.clone().unwrap_or_default();
        Self {
            reason: text(&event.reason),
            type_: text(&event.type_),
            message: text(&event.note),
            action: text(&event.action),
            object: Regarding {
                api_version: text(&regarding.api_version),
                kind: text(&regarding.kind),
                namespace: text(&regarding.namespace),
                name: text(&regarding.name),
            },
            timestamp: event
                .event_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            reporting_controller: text(&event.reporting_controller),
            reporting_instance: text(&event.reporting_instance),
        }
    }

    /// The request body in `format`.
    pub fn body(&self, format: Format) -> Value {
        match format {
            Format::Json => self.json(),
            Format::Slack => json!({ "text": self.slack_text() }),
        }
    }

    /// Flotilla's JSON body: every field, with the Kubernetes names (`type`, camelCase).
    fn json(&self) -> Value {
        json!({
            "reason": self.reason,
            "type": self.type_,
            "message": self.message,
            "action": self.action,
            "object": {
                "apiVersion": self.object.api_version,
                "kind": self.object.kind,
                "namespace": self.object.namespace,
                "name": self.object.name,
            },
            "timestamp": self.timestamp,
            "reportingController": self.reporting_controller,
            "reportingInstance": self.reporting_instance,
        })
    }

    /// One readable line for a chat channel: `Warning FailedOver MicroService shop/users:
    /// <message> (flotilla-failover)`, escaped as Slack's message text wants (`&`, `<`, `>`).
    pub fn slack_text(&self) -> String {
        let o = &self.object;
        let line = format!(
            "{} {} {} {}/{}: {} ({})",
            self.type_,
            self.reason,
            o.kind,
            o.namespace,
            o.name,
            self.message,
            self.reporting_controller
        );
        slack_escape(&line)
    }
}

/// Slack reads `<...>` as links and mentions and `&` as the start of an entity; the three are
/// escaped so a message shows as written.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn failed_over() -> Event {
        Event {
            reason: Some("FailedOver".into()),
            type_: Some("Warning".into()),
            note: Some("2 of 2 pods unhealthy <probe> & scrape".into()),
            action: Some("Traffic".into()),
            regarding: Some(ObjectReference {
                api_version: Some("flotilla.rs/v1alpha1".into()),
                kind: Some("MicroService".into()),
                namespace: Some("shop".into()),
                name: Some("users".into()),
                ..ObjectReference::default()
            }),
            event_time: Some(MicroTime(
                "2026-03-01T12:00:00.5Z"
                    .parse()
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            )),
            reporting_controller: Some("flotilla-failover".into()),
            reporting_instance: Some("flotilla-0".into()),
            ..Event::default()
        }
    }

    /// The JSON body carries every field a receiver routes and shows by, under the Kubernetes
    /// names.
    #[test]
    fn json_body_has_the_event_fields() {
        let body = Notification::from_event(&failed_over()).body(Format::Json);
        assert_eq!(
            body,
            json!({
                "reason": "FailedOver",
                "type": "Warning",
                "message": "2 of 2 pods unhealthy <probe> & scrape",
                "action": "Traffic",
                "object": {
                    "apiVersion": "flotilla.rs/v1alpha1",
                    "kind": "MicroService",
                    "namespace": "shop",
                    "name": "users",
                },
                "timestamp": "2026-03-01T12:00:00.5Z",
                "reportingController": "flotilla-failover",
                "reportingInstance": "flotilla-0",
            })
        );
    }

    /// The Slack body is only `text`: one line naming what happened to which object, with the
    /// characters Slack would read as markup escaped.
    #[test]
    fn slack_body_is_one_escaped_line() {
        let body = Notification::from_event(&failed_over()).body(Format::Slack);
        assert_eq!(
            body,
            json!({"text": "Warning FailedOver MicroService shop/users: 2 of 2 pods unhealthy \
                            &lt;probe&gt; &amp; scrape (flotilla-failover)"})
        );
    }

    /// An Event without optional fields still makes a notification (empty fields), never a
    /// panic.
    #[test]
    fn a_sparse_event_gives_empty_fields() {
        let n = Notification::from_event(&Event::default());
        assert_eq!(n.reason, "");
        assert_eq!(n.object.name, "");
        assert_eq!(n.timestamp, "");
    }
}
