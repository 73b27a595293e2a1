//! Who may call which users route. Pure decisions plus the two warp filters that enforce them
//! before a request body is read.
//!
//! - `POST /users` (sign-up) is open, except for an address listed in `ADMIN_EMAILS`: creating
//!   an admin account needs `Authorization: Bearer <ADMIN_TOKEN>`, so nobody can claim an
//!   admin address first.
//! - `POST /users/verify` (the credential check auth calls) needs the service credential
//!   shared with auth (`USERS_SERVICE_TOKEN`), compared in constant time.
//! - Every other route needs a JWT issued by auth (`JWT_SECRET`): a user reads, changes and
//!   deletes only their own account; a token with the `admin` role reaches every account and
//!   the listing. A user cannot move their account to an admin address.
//!
//! Without `JWT_SECRET` (or `USERS_SERVICE_TOKEN`) nothing is accepted on those routes: the
//! service stays closed rather than open.

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_kit::credentials::{bearer, bearer_matches};
use flotilla_kit::jwt::{Role, TokenError, Tokens};
use flotilla_kit::reply::Unauthorized;
use warp::{Filter, Rejection};

pub use flotilla_kit::credentials::DEV_SERVICE_TOKEN;

/// The credentials users accepts. Its `Debug` output shows which are set, never their values.
#[derive(Clone, Default)]
pub struct Access {
    /// Verifies auth's tokens; `None` refuses every token.
    pub tokens: Option<Tokens>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user id from the token's subject.
    pub id: i64,
    /// Whether the token carries the admin role.
    pub admin: bool,
}

impl Caller {
    /// Whether the caller may read, change or delete account `id`.
    pub fn may_access(&self, id: i64) -> bool {
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
                "this service accepts no tokens (JWT_SECRET unset)",
            ));
        };
        let claims = tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => ("token_expired", "token expired"),
            _ => ("invalid_token", "invalid token"),
        })?;
        let id = claims
            .sub
            .parse()
            .map_err(|_| ("invalid_token", "token subject is not a user id"))?;
        Ok(Caller {
            id,
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
    use std::time::Duration;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn access() -> Access {
        Access {
            tokens: Some(Tokens::new(SECRET, Duration::from_secs(60))),
            service_token: Some("svc-9f2c1e7a4b8d0c3e".into()),
            admin_emails: ["root@example.com".to_owned()].into(),
            admin_token: Some("adm-1b9d7c3e5f2a4b6c".into()),
        }
    }

    #[test]
    fn callers_reach_their_own_account_and_admins_every_account() {
        // The token decides: own id for users, any id for the admin role.
        let a = access();
        let tokens = Tokens::new(SECRET, Duration::from_secs(60));
        let (user, _) = tokens.issue(7).expect("sign");
        let (admin, _) = tokens.issue_as(1, Role::Admin).expect("sign");
        let user = a.caller(Some(&format!("Bearer {user}"))).expect("valid");
        assert!(user.may_access(7) && !user.may_access(8));
        let admin = a.caller(Some(&format!("Bearer {admin}"))).expect("valid");
        assert!(admin.may_access(8));
        assert_eq!(a.caller(None).map_err(|e| e.0), Err("missing_token"));
        assert_eq!(
            a.caller(Some("Bearer x.y.z")).map_err(|e| e.0),
            Err("invalid_token")
        );
    }

    #[test]
    fn an_unconfigured_service_accepts_nothing() {
        // Without a JWT secret and service token no token and no credential passes.
        let a = Access::default();
        let (token, _) = Tokens::new(SECRET, Duration::from_secs(60))
            .issue_as(1, Role::Admin)
            .expect("sign");
        assert!(a.caller(Some(&format!("Bearer {token}"))).is_err());
        assert!(!a.is_service(Some("Bearer ")));
        assert!(!a.is_service(None));
    }

    #[test]
    fn admin_addresses_need_the_admin_token_to_sign_up() {
        // Anyone signs up with an ordinary address; an admin address needs ADMIN_TOKEN.
        let a = access();
        assert!(a.may_create("ada@example.com", None));
        assert!(!a.may_create("root@example.com", None));
        assert!(!a.may_create("root@example.com", Some("Bearer svc-9f2c1e7a4b8d0c3e")));
        assert!(a.may_create("root@example.com", Some("Bearer adm-1b9d7c3e5f2a4b6c")));
        assert_eq!(a.role_of("root@example.com"), Role::Admin);
    }
}
