//! The read API: what this pod's database holds about shipments. Each route matches its path
//! and method, passes the fault gate, then reads; every outcome is a JSON response tagged with
//! the route template.

use flotilla_kit::reply::{self, tag};
use flotilla_kit::Faults;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::db::{Db, DbError, Shipment};

/// Default and largest page of `GET /shipments`.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest `limit` accepted.
pub const MAX_LIMIT: i64 = 500;

/// Route templates, used as metric labels.
pub mod templates {
    /// `GET /shipments`.
    pub const SHIPMENTS: &str = "/shipments";
    /// `GET /shipments/{orderId}`.
    pub const SHIPMENT: &str = "/shipments/{orderId}";
}

/// A page of shipments, newest first.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The shipments.
    pub items: Vec<Shipment>,
    /// The limit applied.
    pub limit: i64,
}

fn db_error(e: &DbError) -> Response {
    match e {
        DbError::NotFound => reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no shipment for that order",
        ),
        e if e.is_transient() => reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable",
        ),
        e => {
            tracing::error!(error = %e, "reading shipments failed");
            reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

/// Parses `limit` (1..=500, default 50); any other parameter is refused.
pub fn parse_limit(query: &[(String, String)]) -> Result<i64, String> {
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in query {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| format!("limit must be 1..={MAX_LIMIT}, got {value:?}"))?;
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(limit)
}

/// `GET /shipments/{orderId}` and `GET /shipments?limit=`.
pub fn routes(
    db: Db,
    faults: &Faults,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    use templates::{SHIPMENT, SHIPMENTS};
    let with_db = warp::any().map(move || db.clone());
    let list = warp::path!("shipments")
        .and(warp::get())
        .and(faults.gate(SHIPMENTS))
        .and(with_db.clone())
        .and(warp::query::<Vec<(String, String)>>())
        .then(|db: Db, query: Vec<(String, String)>| async move {
            let resp = match parse_limit(&query) {
                Err(msg) => reply::error(StatusCode::BAD_REQUEST, "invalid_input", msg),
                Ok(limit) => match db.list(limit).await {
                    Ok(items) => reply::json(StatusCode::OK, &Page { items, limit }),
                    Err(e) => db_error(&e),
                },
            };
            tag(SHIPMENTS, resp)
        });
    let get = warp::path!("shipments" / String)
        .and(warp::get())
        .and(faults.gate(SHIPMENT))
        .and(with_db)
        .then(|order_id: String, db: Db| async move {
            let resp = match db.get(&order_id).await {
                Ok(s) => reply::json(StatusCode::OK, &s),
                Err(e) => db_error(&e),
            };
            tag(SHIPMENT, resp)
        });
    list.or(get).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_bounded_and_unknown_parameters_refused() {
        // The listing cannot be asked for an unbounded page, and a typo is an error, not ignored.
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        assert_eq!(parse_limit(&q(&[])), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(&q(&[("limit", "7")])), Ok(7));
        assert!(parse_limit(&q(&[("limit", "0")])).is_err());
        assert!(parse_limit(&q(&[("limit", "501")])).is_err());
        assert!(parse_limit(&q(&[("limit", "x")])).is_err());
        assert!(parse_limit(&q(&[("limt", "5")])).is_err());
    }

    #[tokio::test]
    async fn shipments_are_read_by_order_and_listed() {
        // A recorded event's shipment is served by its order id, unknown orders are 404.
        let db = Db::connect("sqlite::memory:").await.expect("db");
        let event = crate::classify::Event {
            id: uuid::Uuid::from_u128(9),
            occurred_at: "2026-12-07T08:00:00Z".into(),
            order: flotilla_kit::amqp::OrderPlaced {
                order_id: "o9".into(),
                user_id: "u".into(),
                item: "lamp".into(),
                quantity: 1,
            },
        };
        db.record(&event, "OrderPlaced").await.expect("record");
        let filter = routes(db, &Faults::new());
        let r = warp::test::request()
            .path("/shipments/o9")
            .reply(&filter)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(body["item"], "lamp");
        assert_eq!(body["status"], "scheduled");
        let r = warp::test::request()
            .path("/shipments/nope")
            .reply(&filter)
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = warp::test::request()
            .path("/shipments?limit=5")
            .reply(&filter)
            .await;
        let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
        let r = warp::test::request()
            .path("/shipments?limit=0")
            .reply(&filter)
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
