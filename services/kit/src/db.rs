//! Database pool setup shared by the sample services that store data (users, orders): backend
//! choice from `DATABASE_URL`, SQLite file creation, in-memory SQLite kept to one connection,
//! pool bounds, and password redaction for logs. Queries, migrations and error classification
//! stay in each service. Behind the `db` feature, so services without storage skip sqlx.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

/// Connections per pool.
pub const MAX_CONNECTIONS: u32 = 8;

/// How long a query waits for a free connection: a stuck database turns into a quick
/// "unavailable" answer rather than requests piling up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A `DATABASE_URL` that names neither SQLite nor PostgreSQL (the URL, password redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported DATABASE_URL scheme in {0:?}: use sqlite:// or postgres://")]
pub struct UnsupportedUrl(pub String);

/// Which backend a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (or memory).
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Picks the backend from the URL scheme.
    pub fn from_url(url: &str) -> Result<Self, UnsupportedUrl> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(UnsupportedUrl(redact(url)))
        }
    }
}

/// Adds `mode=rwc` to a SQLite URL that names no mode, so the file is created on first start.
pub fn sqlite_create_mode(url: &str) -> String {
    if !url.starts_with("sqlite:") || url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

/// Hides a password in a URL before it is logged or returned.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Whether a SQLite URL names an in-memory database, which lives only as long as the one
/// connection that opened it.
pub fn is_sqlite_memory(url: &str) -> bool {
    url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
}

/// A pool for `url` that connects on first use, so a service can start (not ready) while its
/// database is down. An in-memory SQLite URL gets exactly one connection that never expires:
/// every pooled connection would otherwise open its own empty database.
pub fn pool(url: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let mut options = AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT);
    if is_sqlite_memory(url) {
        options = options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    options.connect_lazy(&sqlite_create_mode(url))
}

/// Runs `migrate` until it succeeds, 0.5 s doubling to 5 s between tries, each failure logged:
/// a database that comes up after the service (a managed instance still booting) is waited
/// for, while readiness says the database is not there yet.
pub async fn migrate_until_ready<F, Fut, E>(mut migrate: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match migrate().await {
            Ok(()) => {
                tracing::info!("database ready");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        // The default URL must create the file on first start; explicit modes are kept.
        assert_eq!(
            sqlite_create_mode("sqlite://users.db"),
            "sqlite://users.db?mode=rwc"
        );
        assert_eq!(
            sqlite_create_mode("sqlite://u.db?x=1"),
            "sqlite://u.db?x=1&mode=rwc"
        );
        assert_eq!(
            sqlite_create_mode("sqlite://u.db?mode=ro"),
            "sqlite://u.db?mode=ro"
        );
        assert_eq!(sqlite_create_mode("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(sqlite_create_mode("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn backends_and_redaction() {
        // Only SQLite and PostgreSQL are accepted, and errors never echo a password.
        assert_eq!(Backend::from_url("sqlite://a.db"), Ok(Backend::Sqlite));
        assert_eq!(Backend::from_url("postgresql://h/d"), Ok(Backend::Postgres));
        let err = Backend::from_url("mysql://root:hunter2@h/d").expect_err("unsupported");
        assert!(!err.to_string().contains("hunter2"));
        assert_eq!(
            redact("postgres://u:pw@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert!(is_sqlite_memory("sqlite::memory:"));
        assert!(!is_sqlite_memory("sqlite://m.db"));
    }
}
