//! Authentication: who sent a request. Client certificates signed by the cluster CA (checked
//! during the TLS handshake, see `tls`), static bearer tokens (the admin's), and ServiceAccount
//! tokens — JWTs signed with kubesim's key, issued through the TokenRequest API
//! (`serviceaccounts/<name>/token`) and, when bound to a pod, valid only while that pod exists.
//! Impersonation headers (`Impersonate-User`, `Impersonate-Group`) are resolved here too; the
//! permission to impersonate is checked by the caller through RBAC.
//!
//! Reads the store (to check that a token's ServiceAccount and pod still exist) but never writes.

use std::collections::HashMap;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::registry::ResKey;
use crate::status::ApiError;
use crate::store::State;

/// Group every authenticated user belongs to.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Group whose members bypass authorization, as on a real cluster.
pub const MASTERS: &str = "system:masters";
/// Issuer and default audience of ServiceAccount tokens (what a real cluster's default is).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Lifetime of a token when the request names none (the API's default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Shortest lifetime the API accepts.
const MIN_EXPIRATION_SECONDS: i64 = 600;

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The identity unsecured clusters treat every request as.
    pub fn admin() -> Self {
        UserInfo {
            name: "kubesim-admin".into(),
            uid: String::new(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// The `(namespace, name)` of a ServiceAccount user.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')
    }
}

/// The groups a ServiceAccount's tokens carry.
pub fn service_account_user(ns: &str, name: &str, uid: &str) -> UserInfo {
    UserInfo {
        name: format!("system:serviceaccount:{ns}:{name}"),
        uid: uid.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            AUTHENTICATED.into(),
        ],
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ObjRef {
    name: String,
    uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct K8sClaims {
    namespace: String,
    serviceaccount: ObjRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<ObjRef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    k8s: K8sClaims,
}

/// What a TokenRequest binds a token to.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// `(name, uid)` of the pod the token is bound to.
    pub pod: Option<(String, String)>,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
}

/// The authenticator: static tokens and the key ServiceAccount tokens are signed with.
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

/// A random token of 32 bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn sa_key() -> ResKey {
    ResKey {
        group: String::new(),
        plural: "serviceaccounts".into(),
    }
}

fn pod_key() -> ResKey {
    ResKey {
        group: String::new(),
        plural: "pods".into(),
    }
}

fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Authenticator {
    /// An authenticator with a fresh signing key and no static tokens.
    pub fn new() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Authenticator {
            tokens: HashMap::new(),
            key,
        }
    }

    /// Accepts `token` as `user`.
    pub fn add_token(&mut self, token: String, user: UserInfo) {
        self.tokens.insert(token, user);
    }

    /// Signs a ServiceAccount token; returns it with its expiry (Unix seconds).
    pub fn issue(&self, spec: &TokenSpec) -> Result<(String, i64), ApiError> {
        let now = jiff::Timestamp::now().as_second();
        let exp = now + spec.expiration_seconds;
        let audiences = if spec.audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            spec.audiences.clone()
        };
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                spec.namespace, spec.service_account
            ),
            aud: audiences,
            exp,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            k8s: K8sClaims {
                namespace: spec.namespace.clone(),
                serviceaccount: ObjRef {
                    name: spec.service_account.clone(),
                    uid: spec.service_account_uid.clone(),
                },
                pod: spec.pod.as_ref().map(|(name, uid)| ObjRef {
                    name: name.clone(),
                    uid: uid.clone(),
                }),
            },
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .map_err(|e| ApiError::internal(format!("signing a token: {e}")))?;
        Ok((token, exp))
    }

    /// Who a token belongs to: a static token's user, or a ServiceAccount whose token is
    /// signed by this key, unexpired, meant for the API server, and whose ServiceAccount (and
    /// bound pod) still exist with the UIDs it was issued for.
    pub fn token_user(&self, st: &State, token: &str) -> Option<UserInfo> {
        if let Some(u) = self.tokens.get(token) {
            return Some(u.clone());
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[ISSUER]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&self.key),
            &validation,
        )
        .ok()?;
        let k = data.claims.k8s;
        let sa = st.get(&sa_key(), &k.namespace, &k.serviceaccount.name)?;
        if uid_of(&sa) != k.serviceaccount.uid
            || sa.pointer("/metadata/deletionTimestamp").is_some()
        {
            return None;
        }
        if let Some(pod) = &k.pod {
            let obj = st.get(&pod_key(), &k.namespace, &pod.name)?;
            if uid_of(&obj) != pod.uid {
                return None;
            }
        }
        Some(service_account_user(
            &k.namespace,
            &k.serviceaccount.name,
            &k.serviceaccount.uid,
        ))
    }

    /// The request's user: a verified client certificate, else a bearer token. No credential,
    /// or a token that is unknown, expired or revoked, is a 401.
    pub fn authenticate(
        &self,
        st: &State,
        headers: &HeaderMap,
        cert_user: Option<&UserInfo>,
    ) -> Result<UserInfo, ApiError> {
        if let Some(token) = bearer(headers) {
            return self.token_user(st, token).ok_or_else(unauthorized);
        }
        cert_user.cloned().ok_or_else(unauthorized)
    }
}

/// The identity named by `Impersonate-User`/`Impersonate-Group` headers, if any. The caller
/// checks that the requester may impersonate it.
pub fn impersonated(headers: &HeaderMap) -> Result<Option<UserInfo>, ApiError> {
    let Some(name) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    else {
        if headers.contains_key("impersonate-group") {
            return Err(ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: requested [{Group}] without impersonating a user",
            ));
        }
        return Ok(None);
    };
    let mut user = match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => service_account_user(ns, sa, ""),
        None => UserInfo {
            name: name.to_string(),
            uid: String::new(),
            groups: Vec::new(),
        },
    };
    for g in headers.get_all("impersonate-group") {
        if let Ok(g) = g.to_str() {
            user.groups.push(g.to_string());
        }
    }
    if !user.in_group(AUTHENTICATED) && name != "system:anonymous" {
        user.groups.push(AUTHENTICATED.into());
    }
    Ok(Some(user))
}

/// `POST .../serviceaccounts/<name>/token`: issues a token for an existing ServiceAccount,
/// optionally bound to an existing pod, and answers the TokenRequest with its status filled.
pub fn token_request(
    auth: &Authenticator,
    st: &State,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let sa = st
        .get(&sa_key(), ns, name)
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            vec![crate::status::Cause::new(
                "FieldValueInvalid",
                format!(
                    "Invalid value: {expiration}: may not specify a duration less than 10 minutes"
                ),
                "spec.expirationSeconds",
            )],
        ));
    }
    let pod = match spec.get("boundObjectRef") {
        Some(r) if !r.is_null() => {
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
            let pod_name = r.get("name").and_then(Value::as_str).unwrap_or("");
            if kind != "Pod" {
                return Err(ApiError::bad_request(format!(
                    "cannot bind a token to a {kind:?}: kubesim binds tokens to Pods only"
                )));
            }
            let obj = st
                .get(&pod_key(), ns, pod_name)
                .ok_or_else(|| ApiError::not_found("", "pods", pod_name))?;
            let uid = uid_of(&obj).to_string();
            if let Some(want) = r
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
            {
                if want != uid {
                    return Err(ApiError::conflict(
                        "",
                        "pods",
                        pod_name,
                        "the UID in the bound object reference does not match",
                    ));
                }
            }
            Some((pod_name.to_string(), uid))
        }
        _ => None,
    };
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let (token, exp) = auth.issue(&TokenSpec {
        namespace: ns.into(),
        service_account: name.into(),
        service_account_uid: uid_of(&sa).into(),
        pod,
        audiences: audiences.clone(),
        expiration_seconds: expiration,
    })?;
    let expires = jiff::Timestamp::from_second(exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut out = body.clone();
    if !out.is_object() {
        out = json!({});
    }
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    out["metadata"]["name"] = json!(name);
    out["metadata"]["namespace"] = json!(ns);
    out["metadata"]["creationTimestamp"] = Value::Null;
    out["spec"]["expirationSeconds"] = json!(expiration);
    out["spec"]["audiences"] = json!(if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences
    });
    out["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        // `Authorization: bearer x` is as valid as `Bearer x`; an empty token is no token.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "bearer abc".parse().expect("header"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer ".parse().expect("header"),
        );
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn impersonating_a_service_account_gives_its_groups() {
        // `kubectl --as system:serviceaccount:ns:sa` is evaluated with the groups the SA's own
        // tokens carry.
        let mut h = HeaderMap::new();
        h.insert(
            "impersonate-user",
            "system:serviceaccount:ns:sa".parse().expect("header"),
        );
        let u = impersonated(&h).expect("ok").expect("user");
        assert_eq!(u.service_account(), Some(("ns", "sa")));
        assert!(u.in_group("system:serviceaccounts:ns"));
        assert!(u.in_group(AUTHENTICATED));
    }
}
