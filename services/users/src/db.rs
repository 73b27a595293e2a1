//! Storage: one `users` table behind sqlx's `Any` driver, so the same queries run on the
//! embedded SQLite default and on PostgreSQL. Only this module speaks SQL.
//!
//! Portability rules the queries follow: `$N` placeholders (both drivers accept them),
//! `RETURNING` (SQLite 3.35+ and PostgreSQL), integers and text only (timestamps are Unix
//! milliseconds). Each backend has its own migration directory for the DDL differences.

use flotilla_kit::db::{Database, Migrations, UnsupportedUrl};
use sqlx::any::AnyRow;
use sqlx::AnyPool;

pub use flotilla_kit::db::{redact, Backend};

use crate::model::User;

/// A storage failure, classified for the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The email is already used by another user.
    #[error("email already registered")]
    DuplicateEmail,
    /// No user with that id.
    #[error("user not found")]
    NotFound,
    /// The database cannot be reached or the pool is closed or exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The `DATABASE_URL` scheme is neither SQLite nor PostgreSQL.
    #[error(transparent)]
    UnsupportedUrl(#[from] UnsupportedUrl),
    /// Migrating the schema failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error: {0}")]
    Other(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(ref d) if d.is_unique_violation() => Self::DuplicateEmail,
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(e)
            }
            other => Self::Other(other),
        }
    }
}

/// The user store.
#[derive(Debug, Clone)]
pub struct Db {
    db: Database,
}

/// The migrations of each backend (`migrations/<backend>/`), compiled in.
const MIGRATIONS: Migrations = Migrations {
    sqlite: flotilla_kit::embedded_migrations!("sqlite", "0001_users.sql", "0002_user_uuids.sql"),
    postgres: flotilla_kit::embedded_migrations!(
        "postgres",
        "0001_users.sql",
        "0002_user_uuids.sql"
    ),
};

/// A stored row, password hash included; never serialised.
#[derive(Debug)]
struct Row {
    id: String,
    name: String,
    email: String,
    created_at: i64,
    updated_at: i64,
}

flotilla_kit::from_row!(Row {
    id,
    name,
    email,
    created_at,
    updated_at
});

const COLUMNS: &str = "id, name, email, created_at, updated_at";

fn millis_to_rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

impl From<Row> for User {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            name: r.name,
            email: r.email,
            created_at: millis_to_rfc3339(r.created_at),
            updated_at: millis_to_rfc3339(r.updated_at),
        }
    }
}

fn to_user(row: &AnyRow) -> Result<User, sqlx::Error> {
    use sqlx::FromRow;
    Row::from_row(row).map(User::from)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Db {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let db = Self::open(url)?;
        db.migrate().await?;
        Ok(db)
    }

    /// Prepares the pool without connecting, so the service can start (not ready) while the
    /// database is down; call [`Self::migrate_until_ready`] to bring it up. In-memory SQLite
    /// keeps one database for the whole pool (see [`flotilla_kit::db::pool`]).
    pub fn open(url: &str) -> Result<Self, DbError> {
        Ok(Self {
            db: Database::open::<DbError>(url, MIGRATIONS)?,
        })
    }

    /// Applies pending migrations once.
    pub async fn migrate(&self) -> Result<(), DbError> {
        Ok(self.db.migrate().await?)
    }

    /// Retries [`Self::migrate`] with backoff (0.5 s doubling to 5 s) until it succeeds.
    pub async fn migrate_until_ready(&self) {
        self.db.migrate_until_ready().await;
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Readiness probe: the schema is migrated and the `users` table answers a query (an
    /// open connection alone proves nothing: an empty in-memory database opens too).
    pub async fn ping(&self) -> Result<(), String> {
        self.db.ping::<DbError>("users").await
    }

    fn pool(&self) -> &AnyPool {
        self.db.pool()
    }

    /// Closes the pool; every later call fails as unavailable.
    pub async fn close(&self) {
        self.pool().close().await;
    }

    /// Inserts a user under a fresh random UUID; `email` must already be normalised.
    pub async fn insert(&self, name: &str, email: &str, hash: &str) -> Result<User, DbError> {
        let sql = format!(
            "INSERT INTO users (id, name, email, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(name)
            .bind(email)
            .bind(hash)
            .bind(now_ms())
            .fetch_one(self.pool())
            .await?;
        Ok(to_user(&row)?)
    }

    /// One user by id.
    pub async fn get(&self, id: &str) -> Result<User, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_one(self.pool()).await?;
        Ok(to_user(&row)?)
    }

    /// A page of users, oldest first.
    pub async fn list(&self, limit: i64, offset: i64) -> Result<Vec<User>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2");
        let rows = sqlx::query(&sql)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(to_user).collect::<Result<_, _>>()?)
    }

    /// Updates the given fields; `None` keeps the stored value.
    pub async fn update(
        &self,
        id: &str,
        name: Option<&str>,
        email: Option<&str>,
        hash: Option<&str>,
    ) -> Result<User, DbError> {
        let sql = format!(
            "UPDATE users SET name = COALESCE($1, name), email = COALESCE($2, email), \
             password_hash = COALESCE($3, password_hash), updated_at = $4 \
             WHERE id = $5 RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .bind(email)
            .bind(hash)
            .bind(now_ms())
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        Ok(to_user(&row)?)
    }

    /// Deletes a user.
    pub async fn delete(&self, id: &str) -> Result<(), DbError> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// The id and password hash for an email, if registered.
    pub async fn credentials(&self, email: &str) -> Result<Option<(String, String)>, DbError> {
        use sqlx::Row as _;
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_migrations_are_the_directorys() {
        assert_eq!(MIGRATIONS.check().await, Ok(()));
    }
}
