//! Storage: one `orders` table behind sqlx's `Any` driver, so the same queries run on the
//! embedded SQLite default and on PostgreSQL (the users service follows the same rules: `$N`
//! placeholders, `RETURNING`, integers and text only). Only this module speaks SQL.

use flotilla_kit::db::Backend;
use sqlx::any::AnyRow;
use sqlx::AnyPool;

pub use flotilla_kit::db::redact;

/// A storage failure, classified for the gRPC layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No such order for this owner.
    #[error("order not found")]
    NotFound,
    /// The database cannot be reached or the pool is closed or exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The `DATABASE_URL` scheme is neither SQLite nor PostgreSQL.
    #[error("unsupported DATABASE_URL scheme in {0:?}: use sqlite:// or postgres://")]
    UnsupportedUrl(String),
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
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(e)
            }
            other => Self::Other(other),
        }
    }
}

/// One stored order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    /// Primary key.
    pub id: i64,
    /// User id of the caller who placed it.
    pub owner: String,
    /// What was ordered.
    pub item: String,
    /// How many.
    pub quantity: i64,
    /// Unix milliseconds.
    pub created_at: i64,
}

const COLUMNS: &str = "id, owner, item, quantity, created_at";

fn to_order(row: &AnyRow) -> Result<OrderRow, sqlx::Error> {
    use sqlx::FromRow;
    OrderRow::from_row(row)
}

/// Whether the URL names a supported backend; `true` for PostgreSQL.
pub fn is_postgres(url: &str) -> Result<bool, DbError> {
    Backend::from_url(url)
        .map(|b| b == Backend::Postgres)
        .map_err(|e| DbError::UnsupportedUrl(e.0))
}

/// The order store.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
}

impl Db {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let postgres = is_postgres(url)?;
        // Pool bounds, SQLite file creation and in-memory handling are shared with users.
        let pool = flotilla_kit::db::pool(url)?;
        if postgres {
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        } else {
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        }
        Ok(Self { pool })
    }

    /// Readiness probe: one trivial query.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool; every later call fails as unavailable.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores a new order for `owner`.
    pub async fn insert(
        &self,
        owner: &str,
        item: &str,
        quantity: i64,
    ) -> Result<OrderRow, DbError> {
        let sql = format!(
            "INSERT INTO orders (owner, item, quantity, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(owner)
            .bind(item)
            .bind(quantity)
            .bind(jiff::Timestamp::now().as_millisecond())
            .fetch_one(&self.pool)
            .await?;
        Ok(to_order(&row)?)
    }

    /// One of `owner`'s orders; another owner's order is [`DbError::NotFound`] too.
    pub async fn get(&self, owner: &str, id: i64) -> Result<OrderRow, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE id = $1 AND owner = $2");
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
        Ok(to_order(&row)?)
    }

    /// Up to `limit` of `owner`'s orders with an id above `after_id`, by id.
    pub async fn list(
        &self,
        owner: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<OrderRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM orders WHERE owner = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(to_order).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn orders_are_private_to_their_owner() {
        // An owner sees only their own orders, in id order, a page at a time.
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("o.db").display());
        let db = Db::connect(&url).await.expect("connect");
        let a1 = db.insert("1", "apples", 3).await.expect("insert");
        let _b = db.insert("2", "pears", 1).await.expect("insert");
        let a2 = db.insert("1", "plums", 2).await.expect("insert");
        assert_eq!(db.get("1", a1.id).await.expect("own order"), a1);
        assert!(matches!(db.get("2", a1.id).await, Err(DbError::NotFound)));
        let page = db.list("1", 0, 1).await.expect("list");
        assert_eq!(page, vec![a1.clone()]);
        let rest = db.list("1", a1.id, 10).await.expect("list");
        assert_eq!(rest, vec![a2]);
    }

    #[test]
    fn backends_and_redaction() {
        // Only SQLite and PostgreSQL are accepted, and errors never echo a password.
        assert!(!is_postgres("sqlite://o.db").expect("sqlite"));
        assert!(is_postgres("postgresql://h/d").expect("postgres"));
        let err = is_postgres("mysql://root:hunter2@h/d").expect_err("unsupported");
        assert!(!err.to_string().contains("hunter2"));
    }
}
