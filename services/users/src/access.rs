//! Who may call which users route. Pure decisions plus the two warp filters that enforce them
//! before a request body is read.
//!
//! - `POST /users` (sign-up) is open, except for an address listed in `ADMIN_EMAILS`: creating
//!   an admin account needs `Authorization: Bearer <ADMIN_TOKEN>`, so nobody can claim an
//!   admin address first.
//! - `POST /users/verify` (the credential check auth calls) needs the service credential
//!   shared with auth (`USERS_SERVICE_TOKEN`), compared in constant time.
//! - Every other route needs a JWT auth issued for the `users` audience, checked with auth's
//!   public keys (`JWT_PUBLIC_KEYS`, `AUTH_JWKS_URL`): a user reads, changes and deletes only
//!   their own account; a token with the `admin` role reaches every account and the listing. A
//!   user cannot move their account to an admin address.
//!
//! Without auth's keys (or `USERS_SERVICE_TOKEN`) nothing is accepted on those routes: the
//! service stays closed rather than open.

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_kit::credentials::{bearer, bearer_matches};
use flotilla_kit::jwt::{Role, TokenError, Verifier};
use flotilla_kit::reply::Unauthorized;
use warp::{Filter, Rejection};

pub use flotilla_kit::credentials::DEV_SERVICE_TOKEN;

/// The credentials users accepts. Its `Debug` output shows which are set, never their values.
#[derive(Clone, Default)]
pub struct Access {
    /// Verifies auth's tokens with its public keys; `None` refuses every token.
    pub tokens: Option<Verifier>,
    /// The credential auth presents on `/users/verify`; `None` refuses every check.
    pub service_token: Option<String>,
    /// Lower-cased addresses whose accounts get the admin role.
    pub admin_emails: BTreeSet<String>,
    /// `ADMIN_TOKEN`: needed to create an account with an admin address.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tokens", &self.tokens.is_some())
            .field("service_token", &self.service_token.is_some())
            .field("admin_emails", &self.admin_emails)
            .field("admin_token", &self.admin_token.is_some())
            .finish()
    }
}

/// The authenticated user behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id (a UUID) from the token's subject.
    pub id: String,
    /// Whether the token carries the admin role.
    pub admin: bool,
}

impl Caller {
    /// Whether the caller may read, change or delete account `id`.
    pub fn may_access(&self, id: &str) -> bool {
        self.admin || self.id == id
    }
}

impl Access {
    /// The role of the account registered under `email` (already lower-cased).
    pub fn role_of(&self, email: &str) -> Role {
        if self.admin_emails.contains(email) {
            Role::Admin
        } else {
            Role::User
        }
    }

    /// Whether a sign-up for `email` (lower-cased) with this `Authorization` header may
    /// proceed: any address but an admin one, which needs the admin token.
    pub fn may_create(&self, email: &str, authorization: Option<&str>) -> bool {
        self.role_of(email) == Role::User
            || self
                .admin_token
                .as_deref()
                .is_some_and(|t| bearer_matches(authorization, t))
    }

    /// The caller of a request with this `Authorization` header, or the 401 code and message.
    pub fn caller(
        &self,
        authorization: Option<&str>,
    ) -> Result<Caller, (&'static str, &'static str)> {
        let Some(token) = bearer(authorization) else {
            return Err((
                "missing_token",
                "send Authorization: Bearer <token from auth>",
            ));
        };
        let Some(tokens) = &self.tokens else {
            return Err((
                "invalid_token",
                "this service accepts no tokens (neither JWT_PUBLIC_KEYS nor AUTH_JWKS_URL set)",
            ));
        };
        let claims = tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => ("token_expired", "token expired"),
            TokenError::UnknownKey => ("invalid_token", "token signed by an unknown key"),
            TokenError::WrongAudience => ("invalid_token", "token not meant for users"),
            _ => ("invalid_token", "invalid token"),
        })?;
        let id = uuid::Uuid::parse_str(&claims.sub)
            .map_err(|_| ("invalid_token", "token subject is not a user id"))?;
        Ok(Caller {
            id: id.to_string(),
            admin: claims.role == Role::Admin,
        })
    }

    /// Whether the header carries the service credential.
    pub fn is_service(&self, authorization: Option<&str>) -> bool {
        self.service_token
            .as_deref()
            .is_some_and(|t| bearer_matches(authorization, t))
    }
}

/// Extracts the [`Caller`], or rejects with 401 before anything else (the body) is read.
pub fn caller(
    access: Arc<Access>,
    route: &'static str,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<String>("authorization").and_then(move |auth: Option<String>| {
        let access = access.clone();
        async move {
            access.caller(auth.as_deref()).map_err(|(code, message)| {
                warp::reject::custom(Unauthorized {
                    route,
                    code,
                    message,
                })
            })
        }
    })
}

/// Passes only requests carrying the service credential; others get 401 before the body is
/// read.
pub fn service(
    access: Arc<Access>,
    route: &'static str,
) -> impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<String>("authorization")
        .and_then(move |auth: Option<String>| {
            let access = access.clone();
            async move {
                if access.is_service(auth.as_deref()) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized {
                        route,
                        code: "service_unauthorized",
                        message: "the credential check needs Authorization: Bearer <USERS_SERVICE_TOKEN>",
                    }))
                }
            }
        })
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_kit::jwt::{Signer, SigningKey, AUDIENCE_USERS};
    use std::time::Duration;

    const UID: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";
    const OTHER: &str = "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

    fn signer(key: &SigningKey, audiences: &[&str]) -> Signer {
        Signer::new(
            key.clone(),
            Vec::new(),
            audiences.iter().map(|a| (*a).to_owned()).collect(),
            Duration::from_secs(60),
        )
    }

    fn access(key: &SigningKey) -> Access {
        Access {
            tokens: Some(Verifier::for_audience(
                AUDIENCE_USERS,
                vec![key.public_key().clone()],
            )),
            service_token: Some("svc-9f2c1e7a4b8d0c3e".into()),
            admin_emails: ["root@example.com".to_owned()].into(),
            admin_token: Some("adm-1b9d7c3e5f2a4b6c".into()),
        }
    }

    #[test]
    fn callers_reach_their_own_account_and_admins_every_account() {
        // The token decides: own id for users, any id for the admin role.
        let key = SigningKey::generate().expect("key");
        let a = access(&key);
        let tokens = signer(&key, &["users"]);
        let (user, _) = tokens.issue(UID).expect("sign");
        let (admin, _) = tokens.issue_as(OTHER, Role::Admin).expect("sign");
        let user = a.caller(Some(&format!("Bearer {user}"))).expect("valid");
        assert!(user.may_access(UID) && !user.may_access(OTHER));
        let admin = a.caller(Some(&format!("Bearer {admin}"))).expect("valid");
        assert!(admin.may_access(UID));
        assert_eq!(a.caller(None).map_err(|e| e.0), Err("missing_token"));
        assert_eq!(
            a.caller(Some("Bearer x.y.z")).map_err(|e| e.0),
            Err("invalid_token")
        );
    }

    #[test]
    fn tokens_for_orders_or_with_row_ids_do_not_open_users() {
        // A token meant only for orders, and one whose subject is an old numeric row id, are
        // refused.
        let key = SigningKey::generate().expect("key");
        let a = access(&key);
        let (orders_only, _) = signer(&key, &["orders"]).issue(UID).expect("sign");
        assert_eq!(
            a.caller(Some(&format!("Bearer {orders_only}")))
                .map_err(|e| e.1),
            Err("token not meant for users")
        );
        let (row_id, _) = signer(&key, &["users"]).issue("1").expect("sign");
        assert_eq!(
            a.caller(Some(&format!("Bearer {row_id}"))).map_err(|e| e.0),
            Err("invalid_token")
        );
    }

    #[test]
    fn an_unconfigured_service_accepts_nothing() {
        // Without auth's keys and a service token no token and no credential passes.
        let a = Access::default();
        let key = SigningKey::generate().expect("key");
        let (token, _) = signer(&key, &["users"])
            .issue_as(UID, Role::Admin)
            .expect("sign");
        assert!(a.caller(Some(&format!("Bearer {token}"))).is_err());
        assert!(!a.is_service(Some("Bearer ")));
        assert!(!a.is_service(None));
    }

    #[test]
    fn admin_addresses_need_the_admin_token_to_sign_up() {
        // Anyone signs up with an ordinary address; an admin address needs ADMIN_TOKEN.
        let a = access(&SigningKey::generate().expect("key"));
        assert!(a.may_create("ada@example.com", None));
        assert!(!a.may_create("root@example.com", None));
        assert!(!a.may_create("root@example.com", Some("Bearer svc-9f2c1e7a4b8d0c3e")));
        assert!(a.may_create("root@example.com", Some("Bearer adm-1b9d7c3e5f2a4b6c")));
        assert_eq!(a.role_of("root@example.com"), Role::Admin);
    }
}
