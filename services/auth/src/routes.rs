//! HTTP routes of the auth service: `POST /login`, `GET /verify` and
//! `GET /.well-known/jwks.json`. Each route matches path and method, passes the fault gate, then
//! runs its handler, which always produces a JSON response tagged with the route template.

use bytes::Bytes;
use flotilla_kit::ratelimit::{too_many, CredentialLimits};
use flotilla_kit::reply::{self, body_limited, tag};
use flotilla_kit::server::PeerAddr;
use flotilla_kit::telemetry::REQUEST_ID_HEADER;
use flotilla_kit::Faults;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::client::{UpstreamError, UsersClient};
use crate::jwt::{Signer, TokenError};

/// Route templates, used as metric labels.
pub mod templates {
    /// `POST /login`.
    pub const LOGIN: &str = "/login";
    /// `GET /verify`.
    pub const VERIFY: &str = "/verify";
    /// `GET /.well-known/jwks.json`.
    pub const JWKS: &str = "/.well-known/jwks.json";
}

const BODY_LIMIT: u64 = 16 * 1024;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct State {
    /// Client for the users service.
    pub users: UsersClient,
    /// Token signer and verifier.
    pub tokens: Signer,
    /// Login attempts per account and per client address.
    pub limits: CredentialLimits,
}

/// `POST /login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

/// `POST /login` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The signed JWT.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// All auth API routes.
pub fn routes(
    state: State,
    faults: &Faults,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    use templates::{JWKS, LOGIN, VERIFY};
    let with_state = warp::any().map(move || state.clone());

    let login = warp::path!("login")
        .and(warp::post())
        .and(faults.gate(LOGIN))
        .and(with_state.clone())
        .and(warp::header::optional::<String>(REQUEST_ID_HEADER))
        .and(warp::ext::optional::<PeerAddr>())
        .and(body_limited(LOGIN, BODY_LIMIT))
        .then(
            |s: State, id: Option<String>, peer: Option<PeerAddr>, body: Bytes| async move {
                let peer = peer.map(|p| p.0.ip());
                tag(LOGIN, login(&s, id.as_deref(), peer, &body).await)
            },
        );

    let verify = warp::path!("verify")
        .and(warp::get())
        .and(faults.gate(VERIFY))
        .and(with_state.clone())
        .and(warp::header::optional::<String>("authorization"))
        .map(|s: State, auth: Option<String>| tag(VERIFY, verify(&s, auth.as_deref())));

    // Public keys only; verifiers cache them (see flotilla_kit::jwks), so a minute of caching
    // by intermediaries is harmless.
    let jwks = warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(faults.gate(JWKS))
        .and(with_state)
        .map(|s: State| {
            let resp = reply::json(StatusCode::OK, &s.tokens.jwks());
            tag(
                JWKS,
                warp::reply::with_header(resp, "cache-control", "max-age=60").into_response(),
            )
        });

    login.or(verify).unify().or(jwks).unify()
}

async fn login(
    s: &State,
    request_id: Option<&str>,
    peer: Option<std::net::IpAddr>,
    body: &Bytes,
) -> Response {
    let req: Login = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                format!("invalid JSON body: {e}"),
            )
        }
    };
    if req.email.trim().is_empty() || req.password.is_empty() {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "email and password are required",
        );
    }
    if let Err(limited) = s.limits.check(&req.email, peer) {
        tracing::warn!(client = ?peer, "login rate limited");
        return too_many(limited);
    }
    match s.users.verify(&req.email, &req.password, request_id).await {
        Ok(Some(user)) => match s.tokens.issue_as(&user.id, user.role) {
            Ok((token, _)) => {
                tracing::info!(user_id = %user.id, role = ?user.role, "login succeeded");
                reply::json(
                    StatusCode::OK,
                    &LoginResponse {
                        token,
                        token_type: "Bearer".into(),
                        expires_in: s.tokens.ttl().as_secs(),
                    },
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "signing failed");
                reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        },
        Ok(None) => reply::error(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "email or password is wrong",
        ),
        Err(UpstreamError::CircuitOpen(refused)) => {
            let secs = refused.retry_after.as_secs().max(1);
            warp::reply::with_header(
                reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "circuit_open",
                    refused.to_string(),
                ),
                "retry-after",
                secs.to_string(),
            )
            .into_response()
        }
        Err(e @ UpstreamError::Unavailable { .. }) => reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "users_unavailable",
            e.to_string(),
        ),
        Err(e @ UpstreamError::Unexpected(_)) => {
            reply::error(StatusCode::BAD_GATEWAY, "bad_gateway", e.to_string())
        }
    }
}

fn verify(s: &State, auth: Option<&str>) -> Response {
    let Some(token) = auth.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
        return reply::error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send Authorization: Bearer <token>",
        );
    };
    match s.tokens.verify(token) {
        Ok(claims) => reply::json(StatusCode::OK, &claims),
        Err(TokenError::Expired) => {
            reply::error(StatusCode::UNAUTHORIZED, "token_expired", "token expired")
        }
        Err(e @ (TokenError::UnknownKey | TokenError::WrongAudience)) => {
            reply::error(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
        }
        Err(_) => reply::error(StatusCode::UNAUTHORIZED, "invalid_token", "invalid token"),
    }
}
