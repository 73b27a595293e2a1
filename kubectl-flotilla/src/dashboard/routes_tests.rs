use super::*;
use flotilla_crds::{MicroService, MicroServiceSpec, MicroServiceStatus};
use jiff::Timestamp;
use kube::runtime::watcher;
use serde_json::Value;

const BOUND: &str = "127.0.0.1:8001";

fn bound() -> SocketAddr {
    BOUND
        .parse()
        .unwrap_or_else(|e| panic!("{BOUND} parses: {e}"))
}

fn msvc(name: &str, ready: &str) -> MicroService {
    let mut m = MicroService::new(name, MicroServiceSpec::with_image("flotilla/users:0.1.0"));
    m.metadata.namespace = Some("default".into());
    m.status = Some(MicroServiceStatus {
        ready: Some(ready.into()),
        ..MicroServiceStatus::default()
    });
    m
}

fn fleet_of(names: &[&str]) -> Fleet {
    let f = Fleet::new("namespace \"default\"".into());
    f.on_msvc(watcher::Event::Init, Timestamp::UNIX_EPOCH);
    for n in names {
        f.on_msvc(
            watcher::Event::InitApply(msvc(n, "1/1")),
            Timestamp::UNIX_EPOCH,
        );
    }
    f.on_msvc(watcher::Event::InitDone, Timestamp::UNIX_EPOCH);
    f
}

async fn get(f: &Fleet, path: &str, host: &str) -> (u16, String, String) {
    let r = warp::test::request()
        .path(path)
        .header("host", host)
        .reply(&routes(f.clone(), bound()))
        .await;
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        r.status().as_u16(),
        content_type,
        String::from_utf8_lossy(r.body()).into_owned(),
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The page and its script and style come from the binary; the page loads nothing from
/// elsewhere.
#[tokio::test]
async fn serves_the_page() {
    let f = fleet_of(&[]);
    let (status, content_type, body) = get(&f, "/", BOUND).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(body.contains(r#"<script src="/app.js">"#));
    assert!(!body.contains("http://") && !body.contains("https://"));
    let (status, content_type, body) = get(&f, "/app.js", BOUND).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(body.contains("new EventSource(") && !body.contains("setInterval"));
    let (status, content_type, _) = get(&f, "/app.css", BOUND).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/css; charset=utf-8")
    );
    assert_eq!(get(&f, "/nope", BOUND).await.0, 404);
}

/// The JSON API answers what the watches hold: the fleet, one service (404 naming a missing
/// one) and the timeline.
#[tokio::test]
async fn json_api() {
    let f = fleet_of(&["users", "auth"]);
    let (status, content_type, body) = get(&f, "/api/fleet", BOUND).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let fleet = json(&body);
    assert_eq!(fleet["scope"], "namespace \"default\"");
    let names: Vec<&str> = fleet["services"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["auth", "users"]);
    assert_eq!(fleet["services"][1]["ready"], "1/1");

    let (status, _, body) = get(&f, "/api/services/default/users", BOUND).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["service"]["name"], "users");
    let (status, _, body) = get(&f, "/api/services/default/orders", BOUND).await;
    assert_eq!(status, 404);
    assert_eq!(
        json(&body)["error"],
        "MicroService default/orders not found"
    );

    let (status, _, body) = get(&f, "/api/timeline?namespace=default&service=users", BOUND).await;
    assert_eq!(status, 200);
    let timeline = json(&body);
    assert_eq!(timeline["entries"], Value::Array(vec![]));
    assert_eq!(timeline["series"][0]["service"], "users");
    assert_eq!(
        get(&f, "/api/timeline?namespace=a&namespace=b", BOUND)
            .await
            .0,
        400
    );
}

/// On loopback the server answers only requests addressed to a loopback name (a foreign page
/// cannot read the cluster through a DNS name that points to 127.0.0.1), and it changes nothing.
#[tokio::test]
async fn foreign_hosts_and_writes_are_refused() {
    let f = fleet_of(&["users"]);
    assert_eq!(get(&f, "/api/fleet", "localhost:8001").await.0, 200);
    assert_eq!(get(&f, "/api/fleet", "[::1]:8001").await.0, 200);
    let (status, _, body) = get(&f, "/api/fleet", "attacker.example:8001").await;
    assert_eq!(status, 403);
    assert!(body.contains("localhost only"));
    let post = warp::test::request()
        .method("POST")
        .path("/api/fleet")
        .header("host", BOUND)
        .reply(&routes(f.clone(), bound()))
        .await;
    assert_eq!(post.status().as_u16(), 405);
}

/// Which `Host` headers a server may answer, by where it listens.
#[test]
fn host_rules() {
    let loopback = bound();
    assert!(host_allowed(Some("127.0.0.1:8001"), loopback));
    assert!(host_allowed(Some("LOCALHOST"), loopback));
    assert!(host_allowed(Some("127.9.9.9"), loopback));
    assert!(host_allowed(Some("[::1]:80"), loopback));
    assert!(!host_allowed(Some("rebind.example:8001"), loopback));
    assert!(!host_allowed(Some("10.0.0.1:8001"), loopback));
    assert!(!host_allowed(None, loopback));
    let everywhere: SocketAddr = "0.0.0.0:8001".parse().unwrap_or(loopback);
    assert!(host_allowed(Some("dashboard.example"), everywhere));
}

fn names(events: &[warp::sse::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| {
            e.to_string()
                .lines()
                .find_map(|l| l.strip_prefix("event:").map(str::to_owned))
        })
        .collect()
}

/// A stream sends every view first, then only the views that changed: a new pod verdict
/// elsewhere does not resend an unchanged timeline.
#[test]
fn only_changed_views_are_sent_again() {
    let f = fleet_of(&["users"]);
    let service = ("default".to_owned(), "users".to_owned());
    let mut sent = Sent::default();
    assert_eq!(
        names(&sent.changes(&f.snapshot(), Some(&service))),
        ["fleet", "service", "timeline"]
    );
    assert!(sent.changes(&f.snapshot(), Some(&service)).is_empty());
    f.on_msvc(
        watcher::Event::Apply(msvc("users", "0/1")),
        Timestamp::UNIX_EPOCH,
    );
    assert_eq!(
        names(&sent.changes(&f.snapshot(), Some(&service))),
        ["fleet", "service"],
        "ready is not a sampled figure, so the timeline is unchanged"
    );
    let missing = ("default".to_owned(), "orders".to_owned());
    let first = Sent::default().changes(&f.snapshot(), Some(&missing));
    assert!(first[1]
        .to_string()
        .contains("MicroService default/orders not found"));
}

async fn next<S>(s: &mut S) -> String
where
    S: Stream<Item = Result<warp::sse::Event, Infallible>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
        Ok(Some(Ok(e))) => e.to_string(),
        Ok(Some(Err(never))) => match never {},
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("no event within 5 s"),
    }
}

/// Over the wire: the stream opens with the reconnect delay and the views, and pushes a change
/// made afterwards.
#[tokio::test]
async fn the_stream_pushes_changes() {
    let f = fleet_of(&["users"]);
    let mut s = std::pin::pin!(updates(f.clone(), None));
    assert!(next(&mut s).await.starts_with("retry:2000"));
    assert!(next(&mut s).await.starts_with("event:fleet"));
    assert!(next(&mut s).await.starts_with("event:timeline"));
    f.on_msvc(
        watcher::Event::Apply(msvc("auth", "1/1")),
        Timestamp::UNIX_EPOCH,
    );
    let fleet = next(&mut s).await;
    assert!(
        fleet.starts_with("event:fleet") && fleet.contains("\"name\":\"auth\""),
        "{fleet}"
    );
}
