//! The patterns the schema checks strings against, shared by the sections of the spec and by the
//! operator's own validation (which must give the API server's verdict).

/// Pattern of a DNS-1035 label (Service names, dependency names).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a DNS-1123 subdomain (ServiceAccount names).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of an IANA service name (container port names); a letter is also required.
pub const PORT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a non-empty Kubernetes label value.
pub const LABEL_VALUE_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// Pattern of a container image reference: no whitespace anywhere.
pub const IMAGE_PATTERN: &str = r"^\S+$";
/// Pattern of a ConfigMap key (the `config` keys; checked by the operator, since CEL over
/// map keys would exceed the API server's cost budget).
pub const CONFIG_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
