//! The dashboard's HTTP routes, apart from binding so tests drive them in-process: the page
//! (HTML, JavaScript and CSS compiled into the binary), the JSON API and the event stream.
//!
//! - `GET /api/fleet`: every MicroService of the scope ([`FleetJson`]).
//! - `GET /api/services/{namespace}/{name}`: one service with its pods and verdicts.
//! - `GET /api/timeline[?namespace=..&service=..]`: the timeline with the sampled figures.
//! - `GET /api/stream[?service=namespace/name]`: Server-Sent Events `fleet`, `timeline` and
//!   (with `service`) `service`, each sent at once and again whenever it changes.
//!
//! Every answer is read-only. The server acts with the user's credentials, so while it listens
//! on a loopback address it answers only requests addressed to a loopback name: a web page the
//! user visits cannot reach it through a DNS name of its own that resolves to 127.0.0.1.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{stream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::state::{Fleet, Snapshot};
use super::timeline::{timeline, Timeline};
use super::views::{fleet, service_view, ServiceRow, ServiceView};

/// A burst of watch events (a failover relabels every pod of two services) is sent as one
/// update.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The page asks the browser to reconnect this soon after the stream breaks (the dashboard
/// restarted, the laptop slept).
const RETRY: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// `GET /api/fleet`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetJson {
    /// `namespace "default"` or `all namespaces`.
    pub scope: String,
    pub services: Vec<ServiceRow>,
    /// One line per failing watch: what is shown may be stale.
    pub errors: Vec<String>,
}

/// The fleet in `s`.
pub fn fleet_json(s: &Snapshot) -> FleetJson {
    FleetJson {
        scope: s.scope.clone(),
        services: fleet(&s.msvcs),
        errors: s.errors.clone(),
    }
}

/// The service `namespace/name` in `s`, if it is there.
pub fn service_json(s: &Snapshot, namespace: &str, name: &str) -> Option<ServiceView> {
    s.msvcs
        .iter()
        .find(|m| {
            m.metadata.namespace.as_deref() == Some(namespace)
                && m.metadata.name.as_deref() == Some(name)
        })
        .map(|m| service_view(m, &s.msvcs, &s.pods))
}

/// The timeline in `s`, of one service when `only` names it.
pub fn timeline_json(s: &Snapshot, only: Option<(&str, &str)>) -> Timeline {
    timeline(&s.events, &s.history, only)
}

#[derive(Deserialize, Debug, Default)]
struct TimelineQuery {
    namespace: Option<String>,
    service: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
struct StreamQuery {
    /// `namespace/name`.
    service: Option<String>,
}

/// The routes of a server bound to `bound`.
pub fn routes(
    fleet: Fleet,
    bound: SocketAddr,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let state = warp::any().map(move || fleet.clone());
    let page = |body: &'static str, content_type: &'static str| {
        move || warp::reply::with_header(body, "content-type", content_type)
    };
    let index = warp::path::end().map(page(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path!("app.js").map(page(APP_JS, "text/javascript; charset=utf-8"));
    let css = warp::path!("app.css").map(page(APP_CSS, "text/css; charset=utf-8"));
    let api_fleet = warp::path!("api" / "fleet")
        .and(state.clone())
        .map(|f: Fleet| warp::reply::json(&fleet_json(&f.snapshot())));
    let api_service = warp::path!("api" / "services" / String / String)
        .and(state.clone())
        .map(|namespace: String, name: String, f: Fleet| {
            match service_json(&f.snapshot(), &namespace, &name) {
                Some(view) => warp::reply::with_status(warp::reply::json(&view), StatusCode::OK),
                None => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({
                        "error": format!("MicroService {namespace}/{name} not found"),
                    })),
                    StatusCode::NOT_FOUND,
                ),
            }
        });
    let api_timeline = warp::path!("api" / "timeline")
        .and(warp::query::<TimelineQuery>())
        .and(state.clone())
        .map(|q: TimelineQuery, f: Fleet| {
            let only = q.namespace.as_deref().zip(q.service.as_deref());
            warp::reply::json(&timeline_json(&f.snapshot(), only))
        });
    let api_stream = warp::path!("api" / "stream")
        .and(warp::query::<StreamQuery>())
        .and(state)
        .map(|q: StreamQuery, f: Fleet| {
            let service = q.service.as_deref().and_then(parse_service);
            warp::sse::reply(warp::sse::keep_alive().stream(updates(f, service)))
        });
    warp::get()
        .and(host_check(bound))
        .and(
            index
                .or(js)
                .or(css)
                .or(api_fleet)
                .or(api_service)
                .or(api_timeline)
                .or(api_stream),
        )
        .recover(refusal)
        .with(warp::reply::with::header("cache-control", "no-store"))
}

/// `namespace/name`.
fn parse_service(s: &str) -> Option<(String, String)> {
    let (ns, name) = s.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| (ns.to_owned(), name.to_owned()))
}

/// Refuses a request whose `Host` is not a loopback name while the server listens on loopback.
fn host_check(bound: SocketAddr) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("host")
        .and_then(move |host: Option<String>| async move {
            if host_allowed(host.as_deref(), bound) {
                Ok(())
            } else {
                Err(warp::reject::custom(ForeignHost))
            }
        })
        .untuple_one()
}

/// The answer to a request no route took: 403 for a foreign `Host`, 400 for a malformed query,
/// 405 for a write, else 404.
async fn refusal(r: Rejection) -> Result<impl Reply, Rejection> {
    let (status, text) = if r.find::<ForeignHost>().is_some() {
        (
            StatusCode::FORBIDDEN,
            "this dashboard answers requests to localhost only\n",
        )
    } else if r.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "malformed query\n")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard is read-only\n",
        )
    } else {
        (StatusCode::NOT_FOUND, "not found\n")
    };
    Ok(warp::reply::with_status(text, status))
}

/// A request addressed to a name that is not this machine's loopback.
#[derive(Debug)]
struct ForeignHost;

impl warp::reject::Reject for ForeignHost {}

/// Whether a request with the `Host` header `host` may be answered by a server bound to
/// `bound`: any, when the user chose a non-loopback address; else only `localhost` and loopback
/// addresses.
pub fn host_allowed(host: Option<&str>, bound: SocketAddr) -> bool {
    if !bound.ip().is_loopback() {
        return true;
    }
    let Some(host) = host else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The stream of one page: how soon to reconnect, every view at once, then each view again
/// whenever it changed.
fn updates(
    f: Fleet,
    service: Option<(String, String)>,
) -> impl Stream<Item = Result<warp::sse::Event, Infallible>> + Send {
    let rx = f.subscribe();
    let views = stream::unfold(
        (f, rx, Sent::default(), true),
        move |(f, mut rx, mut sent, first)| {
            let service = service.clone();
            async move {
                if !first {
                    rx.changed().await.ok()?;
                    tokio::time::sleep(DEBOUNCE).await;
                    rx.mark_unchanged();
                }
                let events = sent.changes(&f.snapshot(), service.as_ref());
                Some((events, (f, rx, sent, false)))
            }
        },
    )
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    stream::once(async { Ok(warp::sse::Event::default().retry(RETRY)) }).chain(views)
}

/// The JSON last sent of each view, so an unchanged view is not sent again.
#[derive(Default)]
struct Sent {
    fleet: Option<String>,
    service: Option<String>,
    timeline: Option<String>,
}

impl Sent {
    /// The events for the views that differ from what was last sent.
    fn changes(
        &mut self,
        s: &Snapshot,
        service: Option<&(String, String)>,
    ) -> Vec<warp::sse::Event> {
        let mut out = Vec::new();
        let mut send = |last: &mut Option<String>, name: &str, json: String| {
            if last.as_deref() != Some(json.as_str()) {
                out.push(warp::sse::Event::default().event(name).data(json.clone()));
                *last = Some(json);
            }
        };
        send(&mut self.fleet, "fleet", to_json(&fleet_json(s)));
        if let Some((ns, name)) = service {
            let view = match service_json(s, ns, name) {
                Some(v) => to_json(&v),
                None => to_json(&serde_json::json!({
                    "error": format!("MicroService {ns}/{name} not found"),
                })),
            };
            send(&mut self.service, "service", view);
        }
        send(
            &mut self.timeline,
            "timeline",
            to_json(&timeline_json(s, None)),
        );
        out
    }
}

fn to_json(v: &impl Serialize) -> String {
    // The views are plain data (strings, numbers, timestamps): serialising them cannot fail.
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
