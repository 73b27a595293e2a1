//! The `flotilla.orders.v1.Orders` API: each call is authenticated with a JWT the auth service
//! issued for the `orders` audience (`authorization: Bearer <token>` metadata, checked with
//! auth's public keys), passes the kit's fault injection, then reads or writes the caller's own
//! orders, which name their owner by the user's stable id (the token's `sub`, a UUID). Every
//! call is counted by method and status code.
//!
//! With events on, `CreateOrder` stores the order's `OrderPlaced` event in the outbox in the
//! same transaction, with the call's trace context, and wakes the relay; it never waits for the
//! broker (see [`crate::events`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_kit::jwt::Verifier;
use flotilla_kit::{Faults, Health};
use tonic::{Code, Request, Response, Status};

use crate::db::{Db, DbError, OrderRow};
use crate::events::message::{self, TraceContext};
use crate::events::Outbox;
use crate::grpc_metrics::{GrpcMetrics, ORDERS_SERVICE};
use crate::pb::orders_server::{Orders, OrdersServer};
use crate::pb::{
    CreateOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order,
};

/// Largest quantity one order may carry.
pub const MAX_QUANTITY: u32 = 1000;
/// Longest item name, in bytes.
pub const MAX_ITEM_LEN: usize = 200;
/// Page size when the request gives none.
pub const DEFAULT_PAGE: u32 = 20;
/// Largest page a caller may ask for.
pub const MAX_PAGE: u32 = 100;

/// Handler state of the orders API.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    db: Db,
    tokens: Arc<Verifier>,
    faults: Faults,
    metrics: Option<GrpcMetrics>,
    /// Whose readiness watch lines carry the call counts, when set.
    counted_in: Option<Health>,
    /// Present when events are on.
    outbox: Option<Outbox>,
}

impl OrdersApi {
    /// Orders stored in `db`, callers checked with `tokens`.
    pub fn new(db: Db, tokens: Verifier, faults: Faults, metrics: Option<GrpcMetrics>) -> Self {
        Self {
            db,
            tokens: Arc::new(tokens),
            faults,
            metrics,
            counted_in: None,
            outbox: None,
        }
    }

    /// Counts every call in `health`'s request counts, which its readiness watch lines carry
    /// to Flotilla's prober: a failing code (see [`is_server_failure`]) as an error, as the
    /// kit counts an HTTP service's 5xx answers.
    pub fn counting_in(mut self, health: Health) -> Self {
        self.counted_in = Some(health);
        self
    }

    /// Writes an `OrderPlaced` event with every order created, for the relay behind `outbox`.
    pub fn with_events(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Stores a new order, with its event when events are on.
    async fn place(&self, owner: &str, item: &str, quantity: i64) -> Result<OrderRow, DbError> {
        let Some(outbox) = &self.outbox else {
            return self.db.insert(owner, item, quantity).await;
        };
        // The call's span is current here: its context goes with the event, so the consumer's
        // span joins this call's trace.
        let trace = TraceContext::current();
        let row = self
            .db
            .insert_with_event(owner, item, quantity, |order| {
                message::order_placed(order, uuid::Uuid::new_v4(), trace)
            })
            .await?;
        outbox.committed();
        Ok(row)
    }

    /// The tonic server for this API.
    pub fn server(self) -> OrdersServer<Self> {
        OrdersServer::new(self)
    }

    /// The caller's user id (a UUID), from a valid bearer token.
    fn caller<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("authorization: Bearer <token> required"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be a Bearer token"))?;
        let claims = self
            .tokens
            .verify(token.trim())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        // Row ids of earlier releases restart with a recreated database; only a UUID names a
        // user for good.
        uuid::Uuid::parse_str(&claims.sub)
            .map(|id| id.to_string())
            .map_err(|_| Status::unauthenticated("token subject is not a user id"))
    }

    /// Injected latency, then an injected `INTERNAL` failure at the configured rate.
    async fn injected_fault(&self) -> Result<(), Status> {
        let cfg = self.faults.get();
        if cfg.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
        }
        if cfg.error_rate > 0.0 && rand::random::<f64>() < cfg.error_rate {
            return Err(Status::internal("fault injected by /admin/faults"));
        }
        Ok(())
    }

    /// Runs one call: faults, authentication, `body`; records the outcome.
    async fn call<Req, T, F, Fut>(
        &self,
        method: &'static str,
        request: Request<Req>,
        body: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(String, Req) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let result = async {
            self.injected_fault().await?;
            let caller = self.caller(&request)?;
            body(caller, request.into_inner()).await
        }
        .await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        if let Some(m) = &self.metrics {
            m.observe(ORDERS_SERVICE, method, code, start.elapsed());
        }
        if let Some(health) = &self.counted_in {
            health
                .request_counts()
                .record_outcome(is_server_failure(code));
        }
        tracing::info!(method, code = ?code, elapsed_ms = start.elapsed().as_secs_f64() * 1e3, "call finished");
        result.map(Response::new)
    }
}

/// Whether a call that ended with `code` failed on the server's side, the gRPC analogue of a
/// 5xx: Unknown, DeadlineExceeded, Internal, Unavailable or DataLoss (Flotilla's error-rate
/// check reads the same codes as failing from `grpc_server_handled_total`). A caller's mistake
/// (InvalidArgument, NotFound, Unauthenticated, ...) is not.
pub fn is_server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn to_status(e: DbError) -> Status {
    match e {
        DbError::NotFound => Status::not_found("order not found"),
        DbError::Unavailable(_) => Status::unavailable(e.to_string()),
        other => {
            tracing::error!(error = %other, "database error");
            Status::internal("database error")
        }
    }
}

fn to_order(row: OrderRow) -> Order {
    Order {
        id: row.id,
        owner: row.owner,
        item: row.item,
        quantity: u32::try_from(row.quantity).unwrap_or(u32::MAX),
        created_at: jiff::Timestamp::from_millisecond(row.created_at)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

/// Checks a new order's fields; the message is returned as `INVALID_ARGUMENT`.
pub fn validate(req: &CreateOrderRequest) -> Result<(), Status> {
    let item = req.item.trim();
    if item.is_empty() || item.len() > MAX_ITEM_LEN {
        return Err(Status::invalid_argument(format!(
            "item must be 1 to {MAX_ITEM_LEN} bytes"
        )));
    }
    if !(1..=MAX_QUANTITY).contains(&req.quantity) {
        return Err(Status::invalid_argument(format!(
            "quantity must be between 1 and {MAX_QUANTITY}, got {}",
            req.quantity
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Orders for OrdersApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.call("CreateOrder", request, |owner, req| async move {
            validate(&req)?;
            let row = self
                .place(&owner, req.item.trim(), i64::from(req.quantity))
                .await
                .map_err(to_status)?;
            Ok(to_order(row))
        })
        .await
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.call("GetOrder", request, |owner, req| async move {
            let row = self.db.get(&owner, req.id).await.map_err(to_status)?;
            Ok(to_order(row))
        })
        .await
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        self.call("ListOrders", request, |owner, req| async move {
            let size = match req.page_size {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => {
                    return Err(Status::invalid_argument(format!(
                        "page_size must be at most {MAX_PAGE}"
                    )))
                }
                n => n,
            };
            let rows = self
                .db
                .list(&owner, req.after_id.max(0), i64::from(size))
                .await
                .map_err(to_status)?;
            let next_after_id = if rows.len() == size as usize {
                rows.last().map_or(0, |r| r.id)
            } else {
                0
            };
            Ok(ListOrdersResponse {
                orders: rows.into_iter().map(to_order).collect(),
                next_after_id,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_fields_are_checked() {
        // Empty items and out-of-range quantities are refused before any storage.
        let ok = CreateOrderRequest {
            item: "tea".into(),
            quantity: 2,
        };
        assert!(validate(&ok).is_ok());
        for bad in [
            CreateOrderRequest {
                item: " ".into(),
                quantity: 1,
            },
            CreateOrderRequest {
                item: "tea".into(),
                quantity: 0,
            },
            CreateOrderRequest {
                item: "tea".into(),
                quantity: MAX_QUANTITY + 1,
            },
        ] {
            assert_eq!(
                validate(&bad).map_err(|s| s.code()),
                Err(Code::InvalidArgument)
            );
        }
    }
}
