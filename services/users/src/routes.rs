//! HTTP routes of the users service. Each route matches its path and method first, then
//! passes the fault gate, then checks the caller's credential (see [`crate::access`]) before
//! any body is read, then runs its handler; handlers parse bodies themselves so every outcome
//! is a JSON response tagged with the route template.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_kit::jwt::Role;
use flotilla_kit::ratelimit::{too_many, CredentialLimits};
use flotilla_kit::reply::{self, body_limited, tag};
use flotilla_kit::server::PeerAddr;
use flotilla_kit::Faults;
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::access::{self, Access, Caller};
use crate::db::{Db, DbError};
use crate::model::{self, Credentials, NewUser, Page, UpdateUser, Verified};
use crate::password::{PasswordError, Passwords};
use crate::signup::SignupLimits;

/// Largest accepted request body.
const BODY_LIMIT: u64 = 16 * 1024;

/// Route templates, used as metric labels.
pub mod templates {
    /// `POST /users`, `GET /users`.
    pub const USERS: &str = "/users";
    /// `GET|PUT|DELETE /users/{id}`.
    pub const USER: &str = "/users/{id}";
    /// `POST /users/verify`.
    pub const VERIFY: &str = "/users/verify";
}

/// What handlers share.
#[derive(Debug, Clone)]
pub struct State {
    /// User store.
    pub db: Db,
    /// Password hasher.
    pub passwords: Arc<Passwords>,
    /// Credential checks per account and per client address.
    pub limits: CredentialLimits,
    /// Sign-ups per client address and for the whole service.
    pub signup_limits: SignupLimits,
    /// Which credentials the routes accept.
    pub access: Arc<Access>,
}

/// An error a handler turns into a JSON response.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("email or password is wrong")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
}

impl ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Self::Db(DbError::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Db(DbError::DuplicateEmail) => (StatusCode::CONFLICT, "email_taken"),
            Self::Db(DbError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            Self::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Password(PasswordError::Busy) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Db(_) | Self::Password(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let resp = reply::error(status, code, message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Both causes (hashing slots full, database down) pass within about a second.
            return warp::reply::with_header(resp, "retry-after", "1").into_response();
        }
        resp
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid(format!("invalid JSON body: {e}")))
}

fn respond(route: &'static str, result: Result<Response, ApiError>) -> Response {
    tag(route, result.unwrap_or_else(ApiError::into_response))
}

/// All users API routes.
pub fn routes(
    state: State,
    faults: &Faults,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    use templates::{USER, USERS, VERIFY};

    let access = state.access.clone();
    let caller = move |route| access::caller(access.clone(), route);

    let verify = warp::path!("users" / "verify")
        .and(warp::post())
        .and(faults.gate(VERIFY))
        .and(access::service(state.access.clone(), VERIFY))
        .and(with_state.clone())
        .and(warp::ext::optional::<PeerAddr>())
        .and(body_limited(VERIFY, BODY_LIMIT))
        .then(|s: State, peer: Option<PeerAddr>, body: Bytes| async move {
            respond(VERIFY, verify(&s, peer.map(|p| p.0.ip()), &body).await)
        });

    let create = warp::path!("users")
        .and(warp::post())
        .and(faults.gate(USERS))
        .and(with_state.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<PeerAddr>())
        .and(body_limited(USERS, BODY_LIMIT))
        .then(
            |s: State, auth: Option<String>, peer: Option<PeerAddr>, body: Bytes| async move {
                let peer = peer.map(|p| p.0.ip());
                if let Err(limited) = s.signup_limits.check(peer) {
                    tracing::warn!(client = ?peer, "sign-up rate limited");
                    return tag(USERS, too_many(limited));
                }
                respond(USERS, create(&s, auth.as_deref(), &body).await)
            },
        );

    let list = warp::path!("users")
        .and(warp::get())
        .and(faults.gate(USERS))
        .and(caller(USERS))
        .and(with_state.clone())
        .and(warp::query::<Vec<(String, String)>>())
        .then(|c: Caller, s: State, q: Vec<(String, String)>| async move {
            respond(USERS, list(&s, c, &q).await)
        });

    let get = warp::path!("users" / String)
        .and(warp::get())
        .and(faults.gate(USER))
        .and(caller(USER))
        .and(with_state.clone())
        .then(
            |id: String, c: Caller, s: State| async move { respond(USER, get(&s, c, &id).await) },
        );

    let update = warp::path!("users" / String)
        .and(warp::put())
        .and(faults.gate(USER))
        .and(caller(USER))
        .and(with_state.clone())
        .and(body_limited(USER, BODY_LIMIT))
        .then(|id: String, c: Caller, s: State, body: Bytes| async move {
            respond(USER, update(&s, c, &id, &body).await)
        });

    let delete =
        warp::path!("users" / String)
            .and(warp::delete())
            .and(faults.gate(USER))
            .and(caller(USER))
            .and(with_state)
            .then(|id: String, c: Caller, s: State| async move {
                respond(USER, delete(&s, c, &id).await)
            });

    verify
        .or(create)
        .unify()
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
}

/// Refuses a caller who is neither the account's owner nor an admin; an id that is not a
/// UUID names no account (404). Returns the id in its stored (lower-case) form.
fn own_or_admin(caller: &Caller, id: &str) -> Result<String, ApiError> {
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::Db(DbError::NotFound))?
        .to_string();
    if caller.may_access(&id) {
        Ok(id)
    } else {
        Err(ApiError::Forbidden(
            "a user may only reach their own account",
        ))
    }
}

async fn create(s: &State, auth: Option<&str>, body: &Bytes) -> Result<Response, ApiError> {
    let req: NewUser = parse(body)?;
    let name = model::validate_name(&req.name).map_err(ApiError::Invalid)?;
    let email = model::validate_email(&req.email).map_err(ApiError::Invalid)?;
    if !s.access.may_create(&email, auth) {
        return Err(ApiError::Forbidden(
            "an admin address needs Authorization: Bearer <ADMIN_TOKEN>",
        ));
    }
    model::validate_password(&req.password).map_err(ApiError::Invalid)?;
    let hash = s.passwords.hash(req.password).await?;
    let user = s.db.insert(&name, &email, &hash).await?;
    tracing::info!(user_id = %user.id, "user created");
    let location = format!("/users/{}", user.id);
    Ok(warp::reply::with_header(
        warp::reply::with_status(warp::reply::json(&user), StatusCode::CREATED),
        "location",
        location,
    )
    .into_response())
}

async fn get(s: &State, caller: Caller, id: &str) -> Result<Response, ApiError> {
    let id = own_or_admin(&caller, id)?;
    let user = s.db.get(&id).await?;
    Ok(reply::json(StatusCode::OK, &user))
}

async fn delete(s: &State, caller: Caller, id: &str) -> Result<Response, ApiError> {
    let id = own_or_admin(&caller, id)?;
    s.db.delete(&id).await?;
    tracing::info!(user_id = %id, by = %caller.id, "user deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(s: &State, caller: Caller, query: &[(String, String)]) -> Result<Response, ApiError> {
    if !caller.admin {
        return Err(ApiError::Forbidden("listing users needs the admin role"));
    }
    let (limit, offset) = model::parse_page(query).map_err(ApiError::Invalid)?;
    let items = s.db.list(limit, offset).await?;
    Ok(reply::json(
        StatusCode::OK,
        &Page {
            items,
            limit,
            offset,
        },
    ))
}

async fn update(s: &State, caller: Caller, id: &str, body: &Bytes) -> Result<Response, ApiError> {
    let id = own_or_admin(&caller, id)?;
    let req: UpdateUser = parse(body)?;
    if req.name.is_none() && req.email.is_none() && req.password.is_none() {
        return Err(ApiError::Invalid(
            "give at least one of name, email, password".into(),
        ));
    }
    let name = req
        .name
        .as_deref()
        .map(model::validate_name)
        .transpose()
        .map_err(ApiError::Invalid)?;
    let email = req
        .email
        .as_deref()
        .map(model::validate_email)
        .transpose()
        .map_err(ApiError::Invalid)?;
    if !caller.admin
        && email
            .as_deref()
            .is_some_and(|e| s.access.role_of(e) != Role::User)
    {
        return Err(ApiError::Forbidden(
            "only an admin may take an admin address",
        ));
    }
    let hash = match req.password {
        Some(p) => {
            model::validate_password(&p).map_err(ApiError::Invalid)?;
            Some(s.passwords.hash(p).await?)
        }
        None => None,
    };
    let user =
        s.db.update(&id, name.as_deref(), email.as_deref(), hash.as_deref())
            .await?;
    tracing::info!(user_id = %id, "user updated");
    Ok(reply::json(StatusCode::OK, &user))
}

async fn verify(
    s: &State,
    peer: Option<std::net::IpAddr>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let req: Credentials = parse(body)?;
    if let Err(limited) = s.limits.check(&req.email, peer) {
        tracing::warn!(client = ?peer, "credential check rate limited");
        return Ok(too_many(limited));
    }
    // A malformed email cannot be registered: treat it like an unknown one (same timing).
    let email = model::validate_email(&req.email).unwrap_or_default();
    let stored = if email.is_empty() {
        None
    } else {
        s.db.credentials(&email).await?
    };
    let (id, hash) = match stored {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let ok = s.passwords.verify(req.password, hash).await?;
    match (ok, id) {
        (true, Some(id)) => Ok(reply::json(
            StatusCode::OK,
            &Verified {
                id,
                role: s.access.role_of(&email),
            },
        )),
        _ => Err(ApiError::BadCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_hashing_slots_and_a_down_database_answer_503_with_retry_after() {
        // Both pass within about a second, so clients are told to come back rather than fail.
        for err in [
            ApiError::Password(PasswordError::Busy),
            ApiError::Db(DbError::Unavailable(sqlx::Error::PoolTimedOut)),
        ] {
            let resp = err.into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                resp.headers().get("retry-after").map(|v| v.as_bytes()),
                Some(&b"1"[..])
            );
        }
        let forbidden = ApiError::Forbidden("no").into_response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    }
}
