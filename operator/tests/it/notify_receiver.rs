//! A webhook receiver for the notification tests: a real HTTP server on a loopback port that
//! records every request and answers as the test scripted it (a status code, or no answer until
//! the test releases it), so a test sees what the operator sends and how it copes with a
//! failing or hanging receiver.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This status code, at once.
    Status(u16),
    /// Nothing until [`Receiver::release`], then 200.
    Hang,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `content-type` header.
    pub content_type: Option<String>,
    /// The body parsed as JSON (a JSON string of the raw text when it is not JSON).
    pub body: Value,
}

/// The running receiver; dropping it stops it (a hanging answer then ends too).
pub struct Receiver {
    /// The URL to configure as the webhook.
    pub url: String,
    requests: mpsc::UnboundedReceiver<Received>,
    release: watch::Sender<bool>,
    answered: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    /// Answers by request number; the last one repeats.
    script: Vec<Answer>,
    seen: AtomicUsize,
    answered: Arc<AtomicUsize>,
    requests: mpsc::UnboundedSender<Received>,
    released: watch::Receiver<bool>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port answering by `script`.
    pub async fn start(script: Vec<Answer>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks/flotilla", listener.local_addr()?);
        let (tx, requests) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let answered = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            script,
            seen: AtomicUsize::new(0),
            answered: answered.clone(),
            requests: tx,
            released,
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    // A connection the client closes mid-request is no test failure.
                    let _ = conn.await;
                });
            }
        });
        Ok(Self {
            url,
            requests,
            release,
            answered,
            task,
        })
    }

    /// The next request, waiting up to `timeout` for it.
    pub async fn next(&mut self, what: &str, timeout: Duration) -> Result<Received> {
        let requests = &mut self.requests;
        flotilla_testkit::wait::within(what, timeout, async {
            requests
                .recv()
                .await
                .ok_or_else(|| anyhow!("the receiver stopped"))
        })
        .await
    }

    /// The next request about `reason`, skipping others, waiting up to `timeout`.
    pub async fn next_with_reason(&mut self, reason: &str, timeout: Duration) -> Result<Received> {
        let requests = &mut self.requests;
        let what = format!("a {reason} notification");
        flotilla_testkit::wait::within(&what, timeout, async {
            loop {
                let r = requests
                    .recv()
                    .await
                    .ok_or_else(|| anyhow!("the receiver stopped"))?;
                if r.body["reason"] == reason {
                    return Ok(r);
                }
            }
        })
        .await
    }

    /// Whether a request arrived that no [`Receiver::next`] took yet.
    pub fn has_unread(&mut self) -> bool {
        !self.requests.is_empty()
    }

    /// Requests answered so far (a hanging one counts once released).
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Lets every hanging request, and every later one scripted to hang, answer 200.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.seen.fetch_add(1, Ordering::SeqCst);
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    // The test may have stopped listening; the answer is still given.
    let _ = state.requests.send(Received { content_type, body });
    let answer = state
        .script
        .get(n)
        .or(state.script.last())
        .copied()
        .unwrap_or(Answer::Status(200));
    let code = match answer {
        Answer::Status(code) => code,
        Answer::Hang => {
            let mut released = state.released.clone();
            // An error means the receiver is gone: answer and end.
            let _ = released.wait_for(|r| *r).await;
            200
        }
    };
    state.answered.fetch_add(1, Ordering::SeqCst);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}
