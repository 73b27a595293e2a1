//! Database setup shared by the sample services that store data (users, orders, shipping):
//! backend choice from `DATABASE_URL`, SQLite file creation, in-memory SQLite kept to one
//! connection, pool bounds, migrations compiled in and run once the database is there, the
//! readiness check, and password redaction for logs ([`Database`] puts them together). Queries,
//! the migrations' SQL and error classification stay in each service. Behind the `db` feature,
//! so services without storage skip sqlx.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};
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

/// A service's migrations for each backend: the same [`Embedded`] twice when its SQL is portable
/// ([`Migrations::portable`]).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Run on SQLite.
    pub sqlite: Embedded,
    /// Run on PostgreSQL.
    pub postgres: Embedded,
}

impl Migrations {
    /// One set of migrations for both backends.
    pub const fn portable(all: Embedded) -> Self {
        Self {
            sqlite: all,
            postgres: all,
        }
    }

    /// The migrations of `backend`.
    pub fn of(self, backend: Backend) -> Embedded {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }

    /// [`Embedded::check`] of both backends' lists.
    pub async fn check(self) -> Result<(), String> {
        self.sqlite.check().await?;
        self.postgres.check().await
    }
}

/// A service's database: the lazy [`pool`] of its `DATABASE_URL`, the backend the URL names, its
/// migrations, and whether they have run. Until they have, [`Database::ping`] fails, so a service
/// starts (not ready) while its database is down and [`Database::migrate_until_ready`] waits for
/// it. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    migrations: Migrations,
    migrated: Arc<AtomicBool>,
}

impl Database {
    /// Prepares the pool for `url` without connecting. Fails on a URL that names neither
    /// backend ([`UnsupportedUrl`]) or that sqlx cannot read.
    pub fn open<E>(url: &str, migrations: Migrations) -> Result<Self, E>
    where
        E: From<UnsupportedUrl> + From<sqlx::Error>,
    {
        Ok(Self {
            backend: Backend::from_url(url)?,
            pool: pool(url)?,
            migrations,
            migrated: Arc::default(),
        })
    }

    /// Applies the backend's pending migrations; from then on [`Database::ping`] asks the
    /// database itself.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let migrations = self.migrations.of(self.backend);
        migrations.migrator().await?.run(&self.pool).await?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// Retries [`Database::migrate`] with backoff (0.5 s doubling to 5 s) until it succeeds.
    pub async fn migrate_until_ready(&self) {
        migrate_until_ready(|| self.migrate()).await;
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for the service's queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Readiness: the schema is migrated and `table` answers a query that reads no row (an open
    /// connection alone proves nothing: an empty in-memory database opens too). A failed query
    /// is described as the service's error type `E` describes it.
    pub async fn ping<E>(&self, table: &str) -> Result<(), String>
    where
        E: From<sqlx::Error> + std::fmt::Display,
    {
        if !self.migrated.load(Ordering::Acquire) {
            return Err("database not reachable or not migrated yet".into());
        }
        sqlx::query(&format!("SELECT 1 FROM {table} WHERE 1 = 0"))
            .execute(&self.pool)
            .await
            .map_err(|e| E::from(e).to_string())?;
        Ok(())
    }
}

/// A service's migrations compiled into its binary: `(file name, SQL)` pairs from one directory,
/// each file named as sqlx names migration files (`<version>_<description>.sql`) and read with
/// `include_str!` (see [`embedded_migrations!`]). They resolve to the versions, descriptions and
/// checksums that `sqlx::migrate!` and `Migrator::new(<directory>)` give the same files, so
/// databases migrated either way stay valid, without building sqlx's query macros (and a second
/// copy of its drivers for them) into every build. [`Embedded::check`] keeps the list and the
/// directory the same.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    /// The directory the files were read from, at build time.
    pub dir: &'static str,
    /// Each file's name and contents.
    pub files: &'static [(&'static str, &'static str)],
}

impl Embedded {
    /// The migrator that applies them.
    pub async fn migrator(self) -> Result<Migrator, MigrateError> {
        Migrator::new(self).await
    }

    /// Checks that the files are the migrations in their directory, as sqlx resolves it: the
    /// same versions, descriptions, checksums and transaction modes, in the same order. For a
    /// test beside each service's lists, so a migration file added without its entry fails it.
    pub async fn check(self) -> Result<(), String> {
        let key = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        let listed = self.migrator().await.map_err(|e| e.to_string())?;
        let found = Migrator::new(std::path::Path::new(self.dir))
            .await
            .map_err(|e| e.to_string())?;
        let listed: Vec<_> = listed.iter().map(key).collect();
        let found: Vec<_> = found.iter().map(key).collect();
        if listed == found {
            return Ok(());
        }
        let names = |v: &[(i64, String, Vec<u8>, bool)]| {
            v.iter()
                .map(|(n, d, ..)| format!("{n} {d}"))
                .collect::<Vec<_>>()
        };
        Err(format!(
            "the embedded migrations {:?} differ from {}'s {:?} (or a file's contents differ)",
            names(&listed),
            self.dir,
            names(&found)
        ))
    }
}

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let mut migrations = self
                .files
                .iter()
                .map(|&(name, sql)| embedded(name, sql))
                .collect::<Result<Vec<_>, _>>()?;
            migrations.sort_by_key(|m| m.version);
            Ok(migrations)
        })
    }
}

fn embedded(name: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = name
        .split_once('_')
        .ok_or_else(|| format!("migration {name:?} is not named <version>_<description>.sql"))?;
    let version = version
        .parse::<i64>()
        .map_err(|_| format!("migration {name:?} has no integer version prefix"))?;
    let description = rest
        .strip_suffix(".sql")
        .filter(|d| !d.ends_with(".up") && !d.ends_with(".down"))
        .ok_or_else(|| format!("migration {name:?} is not a simple <description>.sql"))?
        .replace('_', " ");
    Ok(Migration::new(
        version,
        description.into(),
        MigrationType::Simple,
        sql.into(),
        sql.starts_with("-- no-transaction"),
    ))
}

/// The `sqlx` this module is built on, for the macros below.
pub use sqlx;

/// `impl FromRow<AnyRow>` for a struct whose fields are read from the row's columns of the same
/// names, as `#[derive(sqlx::FromRow)]` would (without building sqlx's macros):
/// `from_row!(OrderRow { id, owner, item, quantity, created_at });`
#[macro_export]
macro_rules! from_row {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::db::sqlx::FromRow<'_, $crate::db::sqlx::any::AnyRow> for $ty {
            fn from_row(
                row: &$crate::db::sqlx::any::AnyRow,
            ) -> Result<Self, $crate::db::sqlx::Error> {
                use $crate::db::sqlx::Row as _;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?),+
                })
            }
        }
    };
}

/// [`Embedded`] migrations from files in a directory of the calling crate's `migrations/`
/// (`"."` for `migrations/` itself), each read with `include_str!`:
/// `embedded_migrations!("sqlite", "0001_users.sql", "0002_user_uuids.sql")`.
#[macro_export]
macro_rules! embedded_migrations {
    ($dir:literal, $($file:literal),+ $(,)?) => {
        $crate::db::Embedded {
            dir: concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir),
            files: &[$((
                $file,
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir, "/", $file)),
            )),+],
        }
    };
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

    #[tokio::test]
    async fn a_database_is_ready_once_migrated_and_only_while_its_table_answers() {
        // Readiness fails until the migrations ran, then asks the named table.
        const THINGS: Embedded = Embedded {
            dir: "things",
            files: &[("0001_things.sql", "CREATE TABLE things (id INTEGER);")],
        };
        let open =
            |url| Database::open::<Box<dyn std::error::Error>>(url, Migrations::portable(THINGS));
        let err = open("mysql://root:hunter2@h/d").expect_err("unsupported");
        assert!(err.to_string().contains("unsupported"), "{err}");
        let db = open("sqlite::memory:").expect("open");
        assert_eq!(db.backend(), Backend::Sqlite);
        let before = db
            .ping::<sqlx::Error>("things")
            .await
            .expect_err("not migrated");
        assert!(before.contains("not migrated"), "{before}");
        db.migrate().await.expect("migrate");
        assert_eq!(db.ping::<sqlx::Error>("things").await, Ok(()));
        let missing = db
            .ping::<sqlx::Error>("nothing")
            .await
            .expect_err("no such table");
        assert!(missing.contains("nothing"), "{missing}");
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
