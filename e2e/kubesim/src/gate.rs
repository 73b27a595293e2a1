//! The request gate, run before any handler: authenticate (401), resolve impersonation (403
//! unless allowed), authorize the request's attributes through RBAC (403), and answer access
//! reviews (`SelfSubjectAccessReview`, `SubjectAccessReview`) that `kubectl auth can-i` sends.
//!
//! On an unsecured cluster every request is the admin's (member of `system:masters`), but
//! impersonation still applies, so RBAC can be exercised without certificates or tokens.

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{json, Value};

use crate::api::Shared;
use crate::auth::{self, UserInfo};
use crate::rbac::{self, Attributes};
use crate::request::Target;
use crate::status::ApiError;

/// The verb RBAC sees for an HTTP method on a resource path.
pub fn resource_verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method, has_name) {
        (&Method::GET | &Method::HEAD, true) if watch => "watch",
        (&Method::GET | &Method::HEAD, true) => "get",
        (&Method::GET | &Method::HEAD, false) if watch => "watch",
        (&Method::GET | &Method::HEAD, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// The attributes of a resource request.
pub fn resource_attributes(method: &Method, target: &Target, watch: bool) -> Attributes {
    let mut name = target.name.clone().unwrap_or_default();
    let verb = resource_verb(method, !name.is_empty(), watch);
    if target.plural == "namespaces" && target.namespace.is_none() {
        // A namespace is its own namespace for RBAC.
        return Attributes {
            verb: verb.into(),
            namespace: name.clone(),
            group: target.group.clone(),
            resource: target.plural.clone(),
            subresource: target.subresource.clone().unwrap_or_default(),
            name: std::mem::take(&mut name),
            path: None,
        };
    }
    Attributes {
        verb: verb.into(),
        namespace: target.namespace.clone().unwrap_or_default(),
        group: target.group.clone(),
        resource: target.plural.clone(),
        subresource: target.subresource.clone().unwrap_or_default(),
        name,
        path: None,
    }
}

/// The attributes of a request for a path that is not a resource (discovery, OpenAPI, admin).
pub fn path_attributes(method: &Method, path: &str) -> Attributes {
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    Attributes {
        verb: verb.into(),
        path: Some(path.to_string()),
        ..Attributes::default()
    }
}

/// Who is asking: the authenticated user, or the one they impersonate (if RBAC lets them).
pub fn identify(
    shared: &Shared,
    headers: &HeaderMap,
    cert_user: Option<&UserInfo>,
) -> Result<UserInfo, ApiError> {
    let st = shared.store.lock();
    let user = if shared.secure {
        shared.auth.authenticate(&st, headers, cert_user)?
    } else {
        UserInfo::admin()
    };
    let Some(target) = auth::impersonated(headers)? else {
        return Ok(user);
    };
    let mut checks = vec![match target.service_account() {
        Some((ns, name)) => Attributes {
            verb: "impersonate".into(),
            namespace: ns.into(),
            resource: "serviceaccounts".into(),
            name: name.into(),
            ..Attributes::default()
        },
        None => Attributes {
            verb: "impersonate".into(),
            resource: "users".into(),
            name: target.name.clone(),
            ..Attributes::default()
        },
    }];
    for g in headers.get_all("impersonate-group") {
        checks.push(Attributes {
            verb: "impersonate".into(),
            resource: "groups".into(),
            name: g.to_str().unwrap_or("").to_string(),
            ..Attributes::default()
        });
    }
    for a in &checks {
        if !rbac::allowed(&st, &user, a) {
            return Err(rbac::forbidden(&user, a));
        }
    }
    Ok(target)
}

/// 403 unless the user may do what `a` describes.
pub fn authorize(shared: &Shared, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
    if user.in_group(auth::MASTERS) {
        return Ok(());
    }
    let st = shared.store.lock();
    if rbac::allowed(&st, user, a) {
        Ok(())
    } else {
        Err(rbac::forbidden(user, a))
    }
}

fn review_attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes {
            verb: s(r, "verb"),
            namespace: s(r, "namespace"),
            group: s(r, "group"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
            path: None,
        });
    }
    if let Some(r) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes {
            verb: s(r, "verb"),
            path: Some(s(r, "path")),
            ..Attributes::default()
        });
    }
    Err(ApiError::new(
        422,
        "Invalid",
        "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

/// `POST /apis/authorization.k8s.io/v1/{selfsubjectaccessreviews,subjectaccessreviews}`:
/// answers whether the requester (or the user the review names) may do what it describes.
pub fn access_review(
    shared: &Shared,
    user: &UserInfo,
    plural: &str,
    content_type: &str,
    body: &Bytes,
) -> Result<Value, ApiError> {
    // kubectl sends reviews as protobuf.
    let mut review: Value = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        crate::proto::decode(body)
            .map_err(|e| ApiError::bad_request(format!("invalid access review: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid access review: {e}")))?
    };
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let attrs = review_attributes(&spec)?;
    let subject = match plural {
        "selfsubjectaccessreviews" => user.clone(),
        _ => {
            let name = spec
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut groups: Vec<String> = spec
                .get("groups")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if let Some((ns, sa)) = name
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
            {
                for g in auth::service_account_user(ns, sa, "").groups {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
            UserInfo {
                name,
                uid: spec
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                groups,
            }
        }
    };
    let allowed = {
        let st = shared.store.lock();
        rbac::allowed(&st, &subject, &attrs)
    };
    let reason = if allowed {
        "allowed by RBAC (or system:masters)"
    } else {
        ""
    };
    review["status"] = json!({"allowed": allowed, "reason": reason});
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    Ok(review)
}
