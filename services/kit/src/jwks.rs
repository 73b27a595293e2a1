//! Keeps a [`Verifier`]'s fetched keys in step with auth's published JWKS
//! (`GET /.well-known/jwks.json`), so a rotated signing key reaches users and orders without a
//! restart.
//!
//! One task per service: it fetches at start, then every [`REFRESH`] while the last fetch
//! worked and every [`RETRY`] while it fails. A failed fetch keeps the keys of the last good
//! one (auth being down must not log everyone out), and the keys given in configuration stay
//! accepted throughout: they are the fallback while auth cannot be reached. Plain HTTP only,
//! like every call between the samples. No request handling here.

use std::time::Duration;

use crate::jwt::{Jwks, Verifier};

/// The URL type of `AUTH_JWKS_URL`.
pub use reqwest::Url;

/// Time between fetches while auth answers: a rotated key is published a token lifetime ahead
/// of use, so minutes of delay cost nothing.
pub const REFRESH: Duration = Duration::from_secs(60);

/// Time between fetches while auth does not answer.
pub const RETRY: Duration = Duration::from_secs(5);

/// Timeout of one fetch, connect included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A fetch that produced no keys.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed or timed out.
    #[error("cannot fetch the JWKS: {0}")]
    Http(#[from] reqwest::Error),
    /// auth answered, but not with a usable JWKS.
    #[error("unusable JWKS: {0}")]
    Document(String),
}

/// Fetches `url` once and installs its keys in `verifier`; returns how many it holds.
pub async fn fetch_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    verifier: &Verifier,
) -> Result<usize, FetchError> {
    let jwks: Jwks = client
        .get(url.clone())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let keys = jwks
        .public_keys()
        .map_err(|e| FetchError::Document(e.to_string()))?;
    if keys.is_empty() {
        return Err(FetchError::Document("no keys".into()));
    }
    let n = keys.len();
    verifier.set_fetched(keys);
    Ok(n)
}

/// Spawns the refresh task; it ends when the returned handle is aborted or dropped with the
/// runtime.
pub fn spawn_refresh(
    url: reqwest::Url,
    verifier: Verifier,
) -> Result<tokio::task::JoinHandle<()>, FetchError> {
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .build()?;
    Ok(tokio::spawn(async move {
        let mut failing = false;
        loop {
            let wait = match fetch_once(&client, &url, &verifier).await {
                Ok(n) => {
                    if failing {
                        tracing::info!(%url, keys = n, "JWKS fetched again");
                    } else {
                        tracing::debug!(%url, keys = n, "JWKS fetched");
                    }
                    failing = false;
                    REFRESH
                }
                Err(e) => {
                    // Once per outage: a verifier that starts before auth (or beside an
                    // unreachable one) would otherwise warn every few seconds.
                    if failing {
                        tracing::debug!(%url, error = %e, "JWKS fetch failed again");
                    } else {
                        tracing::warn!(%url, error = %e, "JWKS fetch failed; keeping the keys held, retrying every 5 s");
                    }
                    failing = true;
                    RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::SigningKey;

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_keys_held() {
        // With auth unreachable the fetch fails and the verifier keeps the keys it had.
        let key = SigningKey::generate().expect("key");
        let verifier = Verifier::for_audience("users", Vec::new());
        verifier.set_fetched(vec![key.public_key().clone()]);
        let url = Url::parse("http://127.0.0.1:9/.well-known/jwks.json").expect("url");
        let fetched = fetch_once(&reqwest::Client::new(), &url, &verifier).await;
        assert!(fetched.is_err());
        assert_eq!(verifier.keys(), vec![key.public_key().clone()]);
    }
}
