//! Response helpers shared by every route: JSON bodies, error bodies, the route-template tag
//! the metrics wrapper reads, and the rejection handler that turns warp rejections into JSON.
//!
//! Handlers tag their response with the route *template* (`/users/{id}`), never the raw path,
//! so the metrics label set stays bounded whatever clients send.

use std::convert::Infallible;

use bytes::Bytes;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The route template a response was produced by; stored in the response extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTemplate(pub &'static str);

/// Route label for requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Turns `reply` into a response tagged with its route template.
pub fn tag(route: &'static str, reply: impl Reply) -> Response {
    let mut resp = reply.into_response();
    resp.extensions_mut().insert(RouteTemplate(route));
    resp
}

/// The route template a response was tagged with, or [`UNMATCHED`].
pub fn route_of(resp: &Response) -> &'static str {
    resp.extensions()
        .get::<RouteTemplate>()
        .map_or(UNMATCHED, |r| r.0)
}

/// Rejection for a request body over the route's limit.
#[derive(Debug)]
pub struct BodyTooLarge {
    /// Route template of the request, so the 413 is counted under it.
    pub route: &'static str,
    /// The limit in bytes.
    pub limit: u64,
}

impl warp::reject::Reject for BodyTooLarge {}

/// The request body as bytes, refusing bodies over `limit` bytes with 413. A declared
/// `Content-Length` over the limit is refused before reading; a body without one (chunked) is
/// read chunk by chunk and refused as soon as it passes the limit, so no more than `limit`
/// bytes (plus one chunk) are ever held.
pub fn body_limited(
    route: &'static str,
    limit: u64,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<u64>("content-length")
        .and_then(move |len: Option<u64>| async move {
            match len {
                Some(n) if n > limit => Err(warp::reject::custom(BodyTooLarge { route, limit })),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |body| read_limited(body, route, limit))
}

async fn read_limited<S, B>(body: S, route: &'static str, limit: u64) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::custom(BodyUnreadable { route }))?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(BodyTooLarge { route, limit }));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Rejection for a request body the client stopped sending or sent malformed.
#[derive(Debug)]
pub struct BodyUnreadable {
    /// Route template of the request.
    pub route: &'static str,
}

impl warp::reject::Reject for BodyUnreadable {}

/// Rejection for a request without the credential its route needs.
#[derive(Debug)]
pub struct Unauthorized {
    /// Route template of the request.
    pub route: &'static str,
    /// The error code of the 401 answer, e.g. `missing_token`.
    pub code: &'static str,
    /// What the client must send.
    pub message: &'static str,
}

impl warp::reject::Reject for Unauthorized {}

/// A JSON response with the given status.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// The JSON body of every error: a stable machine-readable `error` code and a message.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable code, e.g. `not_found`, `invalid_input`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message: message.into(),
        },
    )
}

/// Converts any rejection into a JSON error response so every request gets a body and a
/// status the metrics wrapper can count.
pub async fn recover(rej: Rejection) -> Result<Response, Infallible> {
    Ok(rejection_response(&rej))
}

// Specific rejections first: warp combines the rejections of every route tried, so a body
// error from the route that matched arrives together with "method not allowed" from its
// siblings on the same path.
fn rejection_response(rej: &Rejection) -> Response {
    if let Some(fault) = rej.find::<InjectedFault>() {
        return tag(
            fault.route,
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected_fault",
                "error injected by /admin/faults",
            ),
        );
    }
    if let Some(e) = rej.find::<BodyTooLarge>() {
        return tag(
            e.route,
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body larger than {} bytes", e.limit),
            ),
        );
    }
    if let Some(e) = rej.find::<Unauthorized>() {
        return tag(e.route, error(StatusCode::UNAUTHORIZED, e.code, e.message));
    }
    if let Some(e) = rej.find::<BodyUnreadable>() {
        return tag(
            e.route,
            error(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "request body could not be read",
            ),
        );
    }
    if rej.find::<warp::reject::LengthRequired>().is_some() {
        return error(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "content-length required",
        );
    }
    if let Some(e) = rej.find::<warp::reject::InvalidQuery>() {
        return error(StatusCode::BAD_REQUEST, "invalid_input", e.to_string());
    }
    if let Some(e) = rej.find::<warp::reject::InvalidHeader>() {
        return error(StatusCode::BAD_REQUEST, "invalid_input", e.to_string());
    }
    if let Some(e) = rej.find::<warp::reject::MissingHeader>() {
        return error(StatusCode::BAD_REQUEST, "invalid_input", e.to_string());
    }
    if let Some(e) = rej.find::<warp::reject::UnsupportedMediaType>() {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        );
    }
    if rej.is_not_found() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        );
    }
    tracing::warn!(rejection = ?rej, "unhandled rejection");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "unhandled request error",
    )
}

/// Rejection raised when a request is failed on purpose (fault injection); carries the route
/// template so the 500 is still counted under the right route.
#[derive(Debug)]
pub struct InjectedFault {
    /// Route template of the request that was failed.
    pub route: &'static str,
}

impl warp::reject::Reject for InjectedFault {}

/// The client address of the connection a request came in on, in the request's extensions
/// (`warp::ext::optional::<PeerAddr>()` reads it); the server puts it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips_and_defaults_to_unmatched() {
        // The metrics label comes from the tag, and an untagged response is "unmatched".
        let tagged = tag("/users/{id}", "x");
        assert_eq!(route_of(&tagged), "/users/{id}");
        let plain = "x".into_response();
        assert_eq!(route_of(&plain), UNMATCHED);
    }

    #[tokio::test]
    async fn not_found_becomes_json_404() {
        // Unknown paths get a JSON 404 rather than warp's empty default.
        let resp = rejection_response(&warp::reject::not_found());
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(route_of(&resp), UNMATCHED);
    }
}
