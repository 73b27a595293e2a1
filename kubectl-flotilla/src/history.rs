//! The revision history the operator keeps as ControllerRevisions (`<name>-<revision>`, owned by
//! the MicroService): read it, print it, and pick and restore an entry for `undo`. Reading and
//! patching happen in [`crate::commands`]; this module is pure.

use std::fmt::Write as _;

use flotilla_crds::{history, MicroService};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::ResourceExt;
use serde_json::{Map, Value};

use crate::render::{age, table};

/// One entry of the history, as the plugin shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The history's counter: higher is newer.
    pub number: i64,
    /// The template's revision (hash).
    pub revision: String,
    /// The image of the recorded spec.
    pub image: String,
    /// `Stable`, `Promoted`, `Undone` or `RolledBack`.
    pub outcome: String,
    /// Why a rolled-back entry failed.
    pub reason: Option<String>,
    pub recorded_at: Option<Timestamp>,
    pub changed_by: Option<String>,
    /// The recorded template fields (`data.spec`).
    pub spec: Value,
}

impl Entry {
    /// Reads an entry of `msvc`'s history from its ControllerRevision.
    pub fn from_revision(name: &str, r: &ControllerRevision) -> Entry {
        let note = |key: &str| r.annotations().get(key).cloned();
        let spec = r
            .data
            .as_ref()
            .and_then(|d| d.0.get("spec"))
            .cloned()
            .unwrap_or(Value::Null);
        Entry {
            number: r.revision,
            revision: r
                .name_any()
                .strip_prefix(&format!("{name}-"))
                .unwrap_or_default()
                .to_string(),
            image: spec
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            outcome: note(history::OUTCOME).unwrap_or_else(|| "?".into()),
            reason: note(history::REASON),
            recorded_at: note(history::RECORDED_AT).and_then(|t| t.parse().ok()),
            changed_by: note(history::CHANGED_BY),
            spec,
        }
    }

    /// Whether `undo` may go back to it.
    pub fn is_good(&self) -> bool {
        history::is_good(&self.outcome)
    }
}

/// The entries that belong to `msvc` (by controller reference), oldest first.
pub fn entries(msvc: &MicroService, revisions: &[ControllerRevision]) -> Vec<Entry> {
    let name = msvc.name_any();
    let mut entries: Vec<Entry> = revisions
        .iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == msvc.uid().as_ref())
        })
        .map(|r| Entry::from_revision(&name, r))
        .collect();
    entries.sort_by_key(|e| e.number);
    entries
}

/// `history NAME`: one row per entry, the stable template marked.
pub fn render(entries: &[Entry], stable: Option<&str>, now: Timestamp) -> String {
    let mut rows = vec![[
        "REVISION",
        "TEMPLATE",
        "IMAGE",
        "OUTCOME",
        "RECORDED",
        "CHANGED BY",
    ]
    .map(str::to_owned)
    .to_vec()];
    for e in entries {
        let outcome = match &e.reason {
            Some(r) => format!("{} ({r})", e.outcome),
            None => e.outcome.clone(),
        };
        let marker = if Some(e.revision.as_str()) == stable {
            " *"
        } else {
            ""
        };
        rows.push(vec![
            format!("{}{marker}", e.number),
            e.revision.clone(),
            e.image.clone(),
            outcome,
            e.recorded_at
                .map(|t| format!("{} ago", age(t, now)))
                .unwrap_or_else(|| "-".into()),
            e.changed_by.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = table(&rows);
    let _ = writeln!(out, "* the stable template (what the pods run)");
    out
}

/// The entry `undo` goes back to: `to` by number (it must exist and be good), else the newest
/// good entry that is not the stable template.
pub fn undo_target<'a>(
    entries: &'a [Entry],
    stable: Option<&str>,
    to: Option<i64>,
) -> Result<&'a Entry, String> {
    match to {
        Some(n) => {
            let e = entries
                .iter()
                .find(|e| e.number == n)
                .ok_or_else(|| format!("revision {n} is not in the history"))?;
            if !e.is_good() {
                return Err(format!(
                    "revision {n} ({}) was rolled back; undo goes back only to a template that ran",
                    e.revision
                ));
            }
            Ok(e)
        }
        None => entries
            .iter()
            .rev()
            .find(|e| e.is_good() && Some(e.revision.as_str()) != stable)
            .ok_or_else(|| "no earlier good revision in the history to go back to".to_string()),
    }
}

/// The spec's template fields as they are now, in the recorded form.
pub fn tracked_spec(msvc: &MicroService) -> Value {
    history::tracked_spec(&msvc.spec).unwrap_or(Value::Null)
}

/// A JSON merge patch (RFC 7386) that turns `from` into `to`: changed values, new keys, and
/// `null` for keys `to` no longer has.
pub fn merge_patch(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut patch = Map::new();
            for (k, v) in t {
                match f.get(k) {
                    Some(old) if old == v => {}
                    Some(old) => {
                        patch.insert(k.clone(), merge_patch(old, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in f.keys().filter(|k| !t.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(number: i64, revision: &str, outcome: &str) -> Entry {
        Entry {
            number,
            revision: revision.into(),
            image: format!("img:{number}"),
            outcome: outcome.into(),
            reason: None,
            recorded_at: None,
            changed_by: None,
            spec: Value::Null,
        }
    }

    /// `undo` without a number goes to the newest good template other than the stable one;
    /// with a number, only to a good one that exists; each refusal names the problem.
    #[test]
    fn undo_picks_a_good_revision() {
        let h = vec![
            entry(1, "a", history::OUTCOME_STABLE),
            entry(2, "b", history::OUTCOME_PROMOTED),
            entry(3, "c", history::OUTCOME_ROLLED_BACK),
            entry(4, "d", history::OUTCOME_PROMOTED),
        ];
        assert_eq!(undo_target(&h, Some("d"), None).map(|e| e.number), Ok(2));
        assert_eq!(undo_target(&h, Some("b"), None).map(|e| e.number), Ok(4));
        assert_eq!(undo_target(&h, Some("d"), Some(1)).map(|e| e.number), Ok(1));
        assert!(undo_target(&h, Some("d"), Some(3)).is_err_and(|e| e.contains("rolled back")));
        assert!(
            undo_target(&h, Some("d"), Some(9)).is_err_and(|e| e.contains("not in the history"))
        );
        let only = vec![entry(1, "a", history::OUTCOME_STABLE)];
        assert!(undo_target(&only, Some("a"), None).is_err_and(|e| e.contains("no earlier good")));
    }

    /// The merge patch changes what differs, adds what is new, removes (null) what is gone, and
    /// leaves equal values out; applied, it yields the target.
    #[test]
    fn merge_patch_turns_one_spec_into_the_other() {
        let from = json!({"image": "a:2", "config": {"X": "1", "Y": "2"}, "args": ["--new"]});
        let to = json!({"image": "a:1", "config": {"X": "1"}, "env": [{"name": "E"}]});
        let patch = merge_patch(&from, &to);
        assert_eq!(
            patch,
            json!({"image": "a:1", "config": {"Y": null}, "env": [{"name": "E"}], "args": null})
        );
        let mut applied = from.clone();
        json_merge(&mut applied, &patch);
        assert_eq!(applied, to);
    }

    /// RFC 7386 applied, as the API server does it.
    fn json_merge(target: &mut Value, patch: &Value) {
        match patch {
            Value::Object(p) => {
                if !target.is_object() {
                    *target = json!({});
                }
                if let Value::Object(t) = target {
                    for (k, v) in p {
                        if v.is_null() {
                            t.remove(k);
                        } else {
                            json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
            }
            other => *target = other.clone(),
        }
    }
}
