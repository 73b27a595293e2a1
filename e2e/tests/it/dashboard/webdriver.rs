//! A headless Chromium driven through `chromedriver` over the W3C WebDriver protocol (HTTP and
//! JSON): the few commands the dashboard test needs (open a URL, run a script that reads the
//! DOM, take a screenshot), on the tests' one HTTP client.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use flotilla_testkit::http;
use flotilla_testkit::operator::free_port;
use flotilla_testkit::wait::poll;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Starting Chromium on a loaded 2-core machine.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// One command: a page load of a local server, a script, a screenshot.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A browser session and the chromedriver serving it; both end when this is dropped.
pub struct Browser {
    base: String,
    session: String,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless `chromium` session with a viewport
    /// `width` pixels wide.
    pub async fn start(
        chromedriver: &Path,
        chromium: &Path,
        width: u32,
        height: u32,
    ) -> Result<Browser> {
        let port = free_port()?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        poll(
            "chromedriver to answer /status",
            SESSION_TIMEOUT,
            || async {
                let reply = http::get(&format!("{base}/status")).await?;
                let ready = reply.json()?["value"]["ready"].as_bool() == Some(true);
                Ok(ready.then_some(()))
            },
        )
        .await?;
        let profile = tempfile::tempdir()?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root (CI containers) cannot use Chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let session = send(
            &base,
            http::Method::POST,
            "/session",
            Some(capabilities),
            SESSION_TIMEOUT,
        )
        .await
        .context("starting a headless chromium session")?;
        let session = session["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in {session}"))?
            .to_owned();
        Ok(Browser {
            base,
            session,
            _driver: driver,
            _profile: profile,
        })
    }

    async fn command(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        send(&self.base, method, &path, body, COMMAND_TIMEOUT).await
    }

    /// Opens `url` and waits for its load event.
    pub async fn open(&self, url: &str) -> Result<()> {
        self.command(http::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(|_| ())
            .with_context(|| format!("opening {url}"))
    }

    /// Runs `script` (a function body) in the page; what it returns, as JSON.
    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.command(
            http::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let value = self.command(http::Method::GET, "/screenshot", None).await?;
        let encoded = value.as_str().context("the screenshot is not a string")?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("the screenshot is not base64")
    }

    /// Ends the session (Chromium exits); chromedriver is killed when `self` is dropped.
    pub async fn quit(self) {
        let _ = self.command(http::Method::DELETE, "", None).await;
    }
}

/// Sends one WebDriver command; its `value`, or the WebDriver error as an error.
async fn send(
    base: &str,
    method: http::Method,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<Value> {
    let mut request = http::request(method, &format!("{base}{path}")).timeout(timeout);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let reply = http::send(request).await?;
    let mut answer = reply.json()?;
    let value = answer["value"].take();
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!(
            "WebDriver {path}: {error}: {}",
            value["message"].as_str().unwrap_or_default()
        );
    }
    if !(200..300).contains(&reply.status) {
        bail!("WebDriver {path} answered {}: {}", reply.status, reply.body);
    }
    Ok(value)
}

/// The width and height in a PNG's header, or an error when `bytes` is no PNG.
pub fn png_size(bytes: &[u8]) -> Result<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || !bytes.starts_with(SIGNATURE) || &bytes[12..16] != b"IHDR" {
        bail!("not a PNG ({} bytes)", bytes.len());
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&bytes[16..20]), be(&bytes[20..24])))
}
