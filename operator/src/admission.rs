//! The admission policy: what a MicroService may ask the operator to run, as the cluster admin
//! restricts it with `--allowed-image-prefixes`, `--allowed-service-accounts` and
//! `--allowed-service-types`.
//!
//! The operator creates Deployments with its own RBAC, so without a policy anyone who may
//! write a MicroService in a namespace may run any image under any ServiceAccount of that
//! namespace, as with a Deployment. The check runs between validate and build: a refused
//! MicroService gets nothing applied, and its status says which field and what is allowed.
//! The policy is fixed for the operator's lifetime (changing a flag restarts the pods, which
//! reconcile everything again), so a refusal is permanent until the MicroService changes.
//! Pure: no client.

use std::fmt;

use flotilla_crds::{MicroServiceSpec, ServiceType};

/// The ServiceAccount pods run as when `spec.serviceAccountName` is unset.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// What MicroServices may ask for. An empty list leaves that field unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// `spec.image` must start with one of these, compared with the image as written (no
    /// registry or tag is filled in). Each ends with `/`, `:` or `@` ([`parse_image_prefix`]).
    pub image_prefixes: Vec<String>,
    /// `spec.serviceAccountName` must be one of these; unset counts as `default`.
    pub service_accounts: Vec<String>,
    /// `spec.service.type` must be one of these.
    pub service_types: Vec<ServiceType>,
}

/// One field the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Path of the field, e.g. `spec.image`.
    pub field: &'static str,
    /// The value asked for, as the message shows it.
    pub value: String,
    /// What the policy allows for the field, e.g. `image prefixes registry.example.com/shop/`.
    pub allowed: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is not allowed by the operator's policy (allowed {})",
            self.field, self.value, self.allowed
        )
    }
}

/// A MicroService the policy refuses, with every field it refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PolicyRefusal {
    /// The refused fields, in spec order.
    pub refusals: Vec<Refusal>,
}

impl AdmissionPolicy {
    /// Whether the policy restricts nothing.
    pub fn is_open(&self) -> bool {
        self.image_prefixes.is_empty()
            && self.service_accounts.is_empty()
            && self.service_types.is_empty()
    }

    /// Checks `spec` against the policy.
    pub fn check(&self, spec: &MicroServiceSpec) -> Result<(), PolicyRefusal> {
        let mut refusals = Vec::new();
        if !self.image_prefixes.is_empty()
            && !self
                .image_prefixes
                .iter()
                .any(|p| spec.image.starts_with(p.as_str()))
        {
            refusals.push(Refusal {
                field: "spec.image",
                value: format!("{:?}", spec.image),
                allowed: format!("image prefixes {}", self.image_prefixes.join(", ")),
            });
        }
        let account = spec
            .service_account_name
            .as_deref()
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        if !self.service_accounts.is_empty() && !self.service_accounts.iter().any(|a| a == account)
        {
            let value = match &spec.service_account_name {
                Some(name) => format!("{name:?}"),
                None => format!("unset (the namespace's {DEFAULT_SERVICE_ACCOUNT:?})"),
            };
            refusals.push(Refusal {
                field: "spec.serviceAccountName",
                value,
                allowed: format!("ServiceAccounts {}", self.service_accounts.join(", ")),
            });
        }
        let service_type = spec.service.type_;
        if !self.service_types.is_empty() && !self.service_types.contains(&service_type) {
            let allowed: Vec<&str> = self.service_types.iter().map(|t| t.as_str()).collect();
            refusals.push(Refusal {
                field: "spec.service.type",
                value: service_type.as_str().to_string(),
                allowed: format!("Service types {}", allowed.join(", ")),
            });
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(PolicyRefusal { refusals })
        }
    }
}

/// Parses one `--allowed-image-prefixes` entry. It must end with `/` (a registry or repository
/// path), `:` (any tag of one repository) or `@` (any digest of one): a prefix such as
/// `docker.io/library/nginx` would also admit `docker.io/library/nginx-anything`.
pub fn parse_image_prefix(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.ends_with(['/', ':', '@']) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "image prefix {s:?} must end with '/', ':' or '@', or it also admits every image whose name merely starts with it"
        ))
    }
}

/// Parses one `--allowed-service-types` entry: `ClusterIP`, `NodePort` or `LoadBalancer`.
pub fn parse_service_type(s: &str) -> Result<ServiceType, String> {
    [
        ServiceType::ClusterIP,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
    ]
    .into_iter()
    .find(|t| t.as_str() == s.trim())
    .ok_or_else(|| format!("{s:?} is not a Service type (ClusterIP, NodePort, LoadBalancer)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> MicroServiceSpec {
        MicroServiceSpec::with_image(image)
    }

    fn policy() -> AdmissionPolicy {
        AdmissionPolicy {
            image_prefixes: vec![
                "registry.example.com/shop/".into(),
                "flotilla/users:".into(),
            ],
            service_accounts: vec!["default".into(), "shop-app".into()],
            service_types: vec![ServiceType::ClusterIP],
        }
    }

    /// With no restriction configured, every spec is admitted (the operator's default).
    #[test]
    fn open_policy_admits_everything() {
        let open = AdmissionPolicy::default();
        assert!(open.is_open());
        let mut s = spec("anything/at:all");
        s.service_account_name = Some("cluster-admin-ish".into());
        s.service.type_ = ServiceType::LoadBalancer;
        assert_eq!(open.check(&s), Ok(()));
    }

    /// A spec inside every restriction is admitted, whichever allowed prefix it matches.
    #[test]
    fn allowed_spec_is_admitted() {
        let p = policy();
        assert_eq!(
            p.check(&spec("registry.example.com/shop/users:1.2")),
            Ok(())
        );
        let mut s = spec("flotilla/users:0.1.0");
        s.service_account_name = Some("shop-app".into());
        assert_eq!(p.check(&s), Ok(()));
    }

    /// An image outside the prefixes is refused, naming the field, the image and the prefixes.
    #[test]
    fn image_outside_the_prefixes_is_refused() {
        let refusal = policy().check(&spec("evil.example.com/miner:1"));
        assert_eq!(
            refusal,
            Err(PolicyRefusal {
                refusals: vec![Refusal {
                    field: "spec.image",
                    value: "\"evil.example.com/miner:1\"".into(),
                    allowed: "image prefixes registry.example.com/shop/, flotilla/users:".into(),
                }]
            })
        );
    }

    /// A prefix is compared with the image as written: a registry-qualified spelling of an
    /// allowed short name, or a repository that merely shares the prefix's first characters,
    /// is not admitted.
    #[test]
    fn prefixes_match_the_image_as_written() {
        let p = policy();
        for image in [
            "docker.io/flotilla/users:0.1.0",
            "flotilla/users-evil:0.1.0",
            "registry.example.com/shopping/x:1",
        ] {
            assert!(p.check(&spec(image)).is_err(), "{image}");
        }
    }

    /// An unset ServiceAccount is the namespace's `default`: refused when `default` is not
    /// allowed, and the message says it is unset.
    #[test]
    fn unset_service_account_counts_as_default() {
        let mut p = policy();
        p.image_prefixes.clear();
        assert_eq!(p.check(&spec("x")), Ok(()));
        p.service_accounts = vec!["shop-app".into()];
        let err = p.check(&spec("x")).err().map(|e| e.refusals);
        assert_eq!(
            err,
            Some(vec![Refusal {
                field: "spec.serviceAccountName",
                value: "unset (the namespace's \"default\")".into(),
                allowed: "ServiceAccounts shop-app".into(),
            }])
        );
    }

    /// Every refused field is reported at once, in spec order, and the message names each
    /// field and what is allowed.
    #[test]
    fn every_refused_field_is_reported() {
        let mut s = spec("evil/x:1");
        s.service_account_name = Some("admin".into());
        s.service.type_ = ServiceType::LoadBalancer;
        let err = policy().check(&s).err();
        let fields: Vec<&str> = err
            .iter()
            .flat_map(|e| e.refusals.iter().map(|r| r.field))
            .collect();
        assert_eq!(
            fields,
            ["spec.image", "spec.serviceAccountName", "spec.service.type"]
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.ends_with(
                "spec.service.type: LoadBalancer is not allowed by the operator's policy (allowed Service types ClusterIP)"
            ),
            "{text}"
        );
    }

    /// Checking twice gives the same verdict (the policy keeps no state).
    #[test]
    fn checking_twice_gives_equal_verdicts() {
        let s = spec("evil/x:1");
        assert_eq!(policy().check(&s), policy().check(&s));
    }

    /// Prefixes that would admit more than their author means are refused at start-up.
    #[test]
    fn image_prefixes_must_end_at_a_boundary() {
        assert_eq!(
            parse_image_prefix(" ghcr.io/acme/ "),
            Ok("ghcr.io/acme/".into())
        );
        assert!(parse_image_prefix("flotilla/users:").is_ok());
        assert!(parse_image_prefix("flotilla/users@").is_ok());
        assert!(parse_image_prefix("docker.io/library/nginx").is_err());
        assert!(parse_image_prefix("").is_err());
    }

    /// Service types parse by their Kubernetes names only.
    #[test]
    fn service_types_parse_by_name() {
        assert_eq!(parse_service_type("NodePort"), Ok(ServiceType::NodePort));
        assert_eq!(parse_service_type("ClusterIP"), Ok(ServiceType::ClusterIP));
        assert!(parse_service_type("clusterip").is_err());
        assert!(parse_service_type("ExternalName").is_err());
    }
}
