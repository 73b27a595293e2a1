//! One namespace per test, labelled with the test's name, so tests on a shared cluster never see
//! each other's objects and a leftover namespace says which test made it.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// Label on every test namespace; its value is the test's name.
pub const TEST_LABEL: &str = "e2e.flotilla.rs/test";

/// A namespace created for one test.
#[derive(Clone)]
pub struct TestNamespace {
    /// Name of the namespace.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a fresh namespace for `test`, labelled `e2e.flotilla.rs/test=<test>`.
    pub async fn create(client: &Client, test: &str) -> Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self::create_named(client, &namespace_name(test, &suffix[..6]), test).await
    }

    /// Creates the namespace `name` for `test` (for a test whose inputs name their namespace),
    /// labelled like [`TestNamespace::create`]'s.
    pub async fn create_named(client: &Client, name: &str, test: &str) -> Result<Self> {
        let name = name.to_owned();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_LABEL.to_owned(), label_value(test))].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (the cluster removes what is in it).
    pub async fn delete(&self) -> Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

/// Lowercase DNS-label form of `text`: runs of other characters become one '-'.
fn dns_label(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// `e2e-<test>-<suffix>`, cut so that it stays a valid 63-character namespace name.
pub fn namespace_name(test: &str, suffix: &str) -> String {
    let room = 63 - "e2e-".len() - 1 - suffix.len();
    let test = dns_label(test);
    let test: String = test.chars().take(room).collect();
    format!("e2e-{}-{suffix}", test.trim_end_matches('-'))
}

/// The test name as a label value (at most 63 characters, alphanumeric at both ends).
pub fn label_value(test: &str) -> String {
    let label: String = dns_label(test).chars().take(63).collect();
    label.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_dns_labels() {
        // Any test name yields a namespace name the API server accepts.
        let long = "a_very::long test name that goes on and on and on and on and on forever";
        for test in ["spec_change_rolls_out", "Crazy::Name!!", long] {
            let name = namespace_name(test, "abc123");
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.starts_with("e2e-") && name.ends_with("-abc123"),
                "{name}"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.contains("--"), "{name}");
        }
    }

    #[test]
    fn label_value_keeps_the_test_name_readable() {
        // The label names the test so a leftover namespace can be traced back.
        assert_eq!(label_value("create_and_ready"), "create-and-ready");
        assert!(label_value(&"x".repeat(100)).len() <= 63);
    }
}
