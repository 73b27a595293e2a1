//! Connection slots and per-connection time limits, shared by the kit server and by services
//! that run their own hyper connections (orders). It decides whether a connection may hold a
//! slot and when it must go; it never routes, reads the traffic verdict or writes a response
//! body of its own beyond the 503 and 408 answers.
//!
//! Two pools of slots, both bounded:
//! - **traffic**, `max_connections`: any request. When every traffic slot is taken, a new
//!   connection takes the place of the connection that has been idle (no request in
//!   progress) longest: that one is shut down gracefully (HTTP/1.1 closed, HTTP/2 `GOAWAY`)
//!   and dropped [`CLOSE_GRACE`] later if its peer has not let go. Idle connections therefore
//!   never keep a client out, however many there are; only connections with work in progress
//!   fill the pool.
//! - **health**, `health_connections`: used only when every traffic connection is busy. Its
//!   connections serve health and metrics requests (the servers decide which, e.g.
//!   [`HEALTH_PATHS`]); anything else is answered 503 and the connection closed, so traffic
//!   cannot take the reserve. Idle ones are closed after [`HEALTH_IDLE_TIMEOUT`], and a new
//!   connection evicts the longest idle one as above.
//!
//! Only when both pools are full of busy connections do new clients wait in the listen
//! backlog. A backlog alone would not do: it is first come, first served, so a probe queued
//! behind a flood of idle connections waits for all of them.
//!
//! Per connection: closed after `idle_timeout` with no request in progress; a request body
//! must arrive within `body_read_timeout` of its headers ([`TimedBody`]).

use std::collections::BTreeMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use warp::reply::Response;

use super::DrainOptions;
use crate::reply;

/// Paths a health connection serves: liveness, readiness, metrics.
pub const HEALTH_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Idle time after which a health connection is closed. Probers open a connection per probe
/// and send at once; a second is plenty for that and keeps the reserve free.
pub const HEALTH_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection shut down for idleness or to make room may take to let go before
/// it is dropped: covers the HTTP/2 `GOAWAY`–`PING` round trip on any in-cluster path, and
/// stays well under a kubelet probe's default 1 s timeout, which an eviction may sit in.
pub const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 128;

/// The connection builder every server uses: the HTTP/1.1 header timeout, HTTP/2 stream cap
/// and keepalive pings from `opts`.
pub fn builder(opts: &DrainOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .keep_alive_interval(opts.h2_keepalive_interval)
        .keep_alive_timeout(opts.h2_keepalive_timeout);
    builder
}

/// Which pool a connection's slot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Any request.
    Traffic,
    /// Health and metrics only.
    Health,
}

/// Why a connection should shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No request in progress for the idle timeout.
    Idle,
    /// A new connection needed its slot while it was idle.
    Evicted,
}

/// One pool of slots and the idle connections holding some of them, oldest idle first.
#[derive(Debug)]
struct Pool {
    permits: Arc<Semaphore>,
    size: u32,
    idle: Mutex<BTreeMap<u64, Arc<Notify>>>,
}

impl Pool {
    fn new(size: usize) -> Self {
        let size = u32::try_from(size.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(size as usize)),
            size,
            idle: Mutex::new(BTreeMap::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the connection idle longest to leave; false when none is idle.
    fn evict_oldest(&self) -> bool {
        let oldest = self.idle().pop_first();
        match oldest {
            Some((_, evict)) => {
                evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The server's connection slots.
#[derive(Debug)]
pub struct Slots {
    traffic: Pool,
    health: Pool,
    idle_timeout: Duration,
    /// Rung when a slot is returned or a connection turns idle: the accept loop may go on.
    changed: Notify,
    next_idle: AtomicU64,
}

/// How a just-accepted connection gets its slot.
#[derive(Debug)]
pub struct Claim {
    slots: Arc<Slots>,
    ready: Option<(SlotKind, OwnedSemaphorePermit)>,
    evicted: Option<SlotKind>,
}

impl Slots {
    /// `max_connections` traffic slots and `health_connections` health slots.
    pub fn new(opts: &DrainOptions) -> Arc<Self> {
        Arc::new(Self {
            traffic: Pool::new(opts.max_connections),
            health: Pool::new(opts.health_connections),
            idle_timeout: opts.idle_timeout,
            changed: Notify::new(),
            next_idle: AtomicU64::new(0),
        })
    }

    fn pool(&self, kind: SlotKind) -> &Pool {
        match kind {
            SlotKind::Traffic => &self.traffic,
            SlotKind::Health => &self.health,
        }
    }

    fn has_room(&self) -> bool {
        [&self.traffic, &self.health]
            .iter()
            .any(|p| p.permits.available_permits() > 0 || !p.idle().is_empty())
    }

    /// Resolves when a new connection could get a slot: one is free or held by an idle
    /// connection. Until then clients wait in the listen backlog.
    pub async fn room(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.has_room() {
                return;
            }
            changed.await;
        }
    }

    /// Picks the slot of a connection just accepted, in this order: a free traffic slot, the
    /// traffic slot of the connection idle longest, a free health slot, the health slot of
    /// the health connection idle longest. Eviction happens here, in accept order, so each
    /// new connection evicts at most one.
    pub fn claim(self: &Arc<Self>) -> Claim {
        let mut claim = Claim {
            slots: self.clone(),
            ready: None,
            evicted: None,
        };
        for kind in [SlotKind::Traffic, SlotKind::Health] {
            let pool = self.pool(kind);
            if let Ok(permit) = pool.permits.clone().try_acquire_owned() {
                claim.ready = Some((kind, permit));
                return claim;
            }
            if pool.evict_oldest() {
                claim.evicted = Some(kind);
                return claim;
            }
        }
        claim
    }

    /// Resolves once every slot is back: all connections have ended.
    pub async fn all_returned(&self) {
        let traffic = self.traffic.permits.acquire_many(self.traffic.size);
        let health = self.health.permits.acquire_many(self.health.size);
        let _ = tokio::join!(traffic, health);
    }
}

impl Claim {
    /// The slot: at once when one was free, otherwise when the evicted connection has let go
    /// (or, should it have turned busy meanwhile, any slot frees up).
    pub async fn slot(self) -> Slot {
        let slots = self.slots;
        let (kind, permit) = match self.ready {
            Some(ready) => ready,
            None => {
                let waited = match self.evicted {
                    Some(kind) => {
                        let pool = slots.pool(kind).permits.clone();
                        tokio::time::timeout(CLOSE_GRACE * 2, pool.acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .map(|p| (kind, p))
                    }
                    None => None,
                };
                match waited {
                    Some(ready) => ready,
                    None => any_slot(&slots).await,
                }
            }
        };
        Slot::new(slots, kind, permit)
    }
}

async fn any_slot(slots: &Slots) -> (SlotKind, OwnedSemaphorePermit) {
    loop {
        let acquired = tokio::select! {
            biased;
            p = slots.traffic.permits.clone().acquire_owned() => p.map(|p| (SlotKind::Traffic, p)),
            p = slots.health.permits.clone().acquire_owned() => p.map(|p| (SlotKind::Health, p)),
        };
        if let Ok(ready) = acquired {
            return ready;
        }
        // Semaphores are never closed; should one be, do not spin.
        tokio::time::sleep(CLOSE_GRACE).await;
    }
}

/// The slot one connection holds, and what it is doing: requests in progress, idle since
/// when, whether it was asked to leave. The connection's task owns it; dropping it (the
/// connection ended) returns the slot, even should a request handler still run on.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<SlotInner>,
    permit: Option<OwnedSemaphorePermit>,
}

/// What a connection's request handling needs of its [`Slot`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct SlotHandle(Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    slots: Arc<Slots>,
    kind: SlotKind,
    state: Mutex<Activity>,
    changed: Notify,
    evict: Arc<Notify>,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Activity {
    active: usize,
    idle_since: Option<Instant>,
    /// Key in the pool's idle list while idle and evictable.
    idle_key: Option<u64>,
    leaving: bool,
}

impl Slot {
    fn new(slots: Arc<Slots>, kind: SlotKind, permit: OwnedSemaphorePermit) -> Self {
        let idle_timeout = match kind {
            SlotKind::Traffic => slots.idle_timeout,
            SlotKind::Health => slots.idle_timeout.min(HEALTH_IDLE_TIMEOUT),
        };
        let slot = Self {
            permit: Some(permit),
            inner: Arc::new(SlotInner {
                slots,
                kind,
                state: Mutex::new(Activity {
                    active: 0,
                    idle_since: Some(Instant::now()),
                    idle_key: None,
                    leaving: false,
                }),
                changed: Notify::new(),
                evict: Arc::new(Notify::new()),
                idle_timeout,
            }),
        };
        // A fresh connection is idle until its first request arrives.
        let mut state = slot.inner.state();
        slot.inner.register_idle(&mut state);
        drop(state);
        slot
    }

    /// Which pool the slot came from.
    pub fn kind(&self) -> SlotKind {
        self.inner.kind
    }

    /// For the connection's request handling.
    pub fn handle(&self) -> SlotHandle {
        SlotHandle(self.inner.clone())
    }

    /// The connection is shutting down (for any reason): it is no longer a candidate for
    /// eviction.
    pub fn leaving(&self) {
        let mut state = self.inner.state();
        state.leaving = true;
        self.inner.unregister_idle(&mut state);
    }

    /// Resolves when the connection should shut down gracefully: idle for its idle timeout,
    /// or evicted to make room.
    pub async fn close_requested(&self) -> CloseReason {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let idle_since = self.inner.state().idle_since;
            let idle_for = async {
                match idle_since {
                    Some(since) => tokio::time::sleep_until(since + self.inner.idle_timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = idle_for => return CloseReason::Idle,
                () = self.inner.evict.notified() => return CloseReason::Evicted,
                () = changed => {}
            }
        }
    }

    /// After a graceful shutdown asked for by [`Slot::close_requested`]: resolves once
    /// [`CLOSE_GRACE`] has passed and no request is in progress, when the server should drop
    /// the connection (a peer that ignores `GOAWAY`, a client stuck half-way through its
    /// request headers). Requests in progress always finish.
    pub async fn grace_over(&self) {
        tokio::time::sleep(CLOSE_GRACE).await;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.state().active == 0 {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.leaving();
        drop(self.permit.take());
        self.inner.slots.changed.notify_waiters();
    }
}

impl SlotHandle {
    /// Which pool the connection's slot came from.
    pub fn kind(&self) -> SlotKind {
        self.0.kind
    }

    /// Marks a request in progress until the returned guard is dropped (keep it with the
    /// response body, so a streamed answer counts as work in progress).
    pub fn request(&self) -> Active {
        let mut state = self.0.state();
        state.active += 1;
        state.idle_since = None;
        self.0.unregister_idle(&mut state);
        drop(state);
        self.0.changed.notify_waiters();
        Active(self.0.clone())
    }
}

impl SlotInner {
    fn state(&self) -> MutexGuard<'_, Activity> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register_idle(&self, state: &mut Activity) {
        if state.leaving || state.idle_key.is_some() {
            return;
        }
        let key = self.slots.next_idle.fetch_add(1, Ordering::Relaxed);
        self.slots
            .pool(self.kind)
            .idle()
            .insert(key, self.evict.clone());
        state.idle_key = Some(key);
        self.slots.changed.notify_waiters();
    }

    fn unregister_idle(&self, state: &mut Activity) {
        if let Some(key) = state.idle_key.take() {
            self.slots.pool(self.kind).idle().remove(&key);
        }
    }
}

/// A request in progress on a connection; see [`SlotHandle::request`].
#[derive(Debug)]
pub struct Active(Arc<SlotInner>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.active = state.active.saturating_sub(1);
        if state.active == 0 {
            state.idle_since = Some(Instant::now());
            self.0.register_idle(&mut state);
        }
        drop(state);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress until it is sent.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _active: Active,
}

impl<B> Tracked<B> {
    /// Holds `active` until the body is done or dropped.
    pub fn new(inner: B, active: Active) -> Self {
        Self {
            inner,
            _active: active,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a request that must arrive completely by a deadline; past it, reading fails
/// and [`BodyDeadline::passed`] says so.
#[derive(Debug)]
pub struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    passed: Arc<AtomicBool>,
}

/// Tells whether a request's body missed its deadline.
#[derive(Debug, Clone, Default)]
pub struct BodyDeadline(Arc<AtomicBool>);

impl BodyDeadline {
    /// Whether the handler tried to read past the deadline.
    pub fn passed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Reading a request body took longer than the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within the body read timeout")]
pub struct BodyTimedOut;

/// Puts `req`'s body under a deadline `timeout` from now.
pub fn timed<B>(req: Request<B>, timeout: Duration) -> (Request<TimedBody<B>>, BodyDeadline) {
    let deadline = BodyDeadline::default();
    let passed = deadline.0.clone();
    let req = req.map(|inner| TimedBody {
        inner,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        passed,
    });
    (req, deadline)
}

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.passed.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body missed its deadline: 408, closing an HTTP/1.1
/// connection (`http1`), since the rest of the body may still be on its way.
pub fn body_timed_out(http1: bool) -> Response {
    let mut resp = reply::error(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "request body not received in time",
    );
    if http1 {
        close_after(&mut resp);
    }
    resp
}

/// The answer to a request other than health or metrics on a health connection: 503 with
/// `Retry-After: 1` (the server is saturated, not broken). The connection closes: HTTP/1.1
/// (`http1`) through `Connection: close`; the server shuts an HTTP/2 one down itself.
pub fn over_capacity(http1: bool) -> Response {
    let mut resp = reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "over_capacity",
        "every connection slot is busy",
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    if http1 {
        close_after(&mut resp);
    }
    resp
}

/// Whether `req` came over HTTP/1.x, where closing is a response header.
pub fn is_http1<B>(req: &Request<B>) -> bool {
    matches!(
        req.version(),
        http::Version::HTTP_10 | http::Version::HTTP_11
    )
}

fn close_after(resp: &mut Response) {
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_connections: usize, health_connections: usize) -> Arc<Slots> {
        Slots::new(&DrainOptions {
            max_connections,
            health_connections,
            ..DrainOptions::default()
        })
    }

    async fn evicted(slot: &Slot) -> bool {
        tokio::time::timeout(Duration::from_secs(5), slot.close_requested())
            .await
            .is_ok_and(|reason| reason == CloseReason::Evicted)
    }

    #[tokio::test]
    async fn claims_take_a_free_slot_then_the_longest_idle_then_a_health_slot() {
        // A new connection gets a free traffic slot, else the traffic slot of the connection
        // idle longest (which is asked to leave), else a health slot; a busy connection is
        // never asked.
        let slots = slots(2, 1);
        let first = slots.claim().slot().await;
        let second = slots.claim().slot().await;
        assert_eq!(
            (first.kind(), second.kind()),
            (SlotKind::Traffic, SlotKind::Traffic)
        );
        let busy = second.handle().request();

        let claim = slots.claim();
        assert!(evicted(&first).await);
        drop(first);
        let third = claim.slot().await;
        assert_eq!(third.kind(), SlotKind::Traffic);
        let _busy_too = third.handle().request();

        let fourth = slots.claim().slot().await;
        assert_eq!(fourth.kind(), SlotKind::Health);
        // Every slot taken, the health connection idle: it makes room next.
        assert!(slots.has_room());
        let _claim = slots.claim();
        assert!(evicted(&fourth).await);
        drop(busy);
    }

    #[tokio::test]
    async fn busy_connections_leave_no_room() {
        // With every connection busy a new client must wait: the accept loop sees no room.
        let slots = slots(1, 1);
        let a = slots.claim().slot().await;
        let b = slots.claim().slot().await;
        let (_a, _b) = (a.handle().request(), b.handle().request());
        assert!(!slots.has_room());
    }

    #[tokio::test]
    async fn an_ended_connection_returns_its_slot_even_with_a_handler_running() {
        // The slot belongs to the connection: dropping it frees the slot at once, and a
        // handler that finishes later does not make the gone connection evictable.
        let slots = slots(1, 1);
        let slot = slots.claim().slot().await;
        let active = slot.handle().request();
        drop(slot);
        assert_eq!(slots.traffic.permits.available_permits(), 1);
        drop(active);
        assert!(slots.traffic.idle().is_empty());
    }

    #[tokio::test]
    async fn a_body_past_its_deadline_fails_and_says_so() {
        // A body that has not arrived by the deadline reads as an error, and the deadline
        // reports it passed, so the server can answer 408.
        let (tx, body) =
            futures::channel::mpsc::channel::<Result<Frame<bytes::Bytes>, BodyTimedOut>>(1);
        let stalled = http_body_util::StreamBody::new(body);
        let (req, deadline) = timed(Request::new(stalled), Duration::from_millis(20));
        let read = http_body_util::BodyExt::collect(req.into_body()).await;
        assert!(read.is_err());
        assert!(deadline.passed());
        drop(tx);
    }
}
