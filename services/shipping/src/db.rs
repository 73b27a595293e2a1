//! Storage: shipments and the ids of the events handled, behind sqlx's `Any` driver (SQLite by
//! default, PostgreSQL with the same queries). Only this module speaks SQL.
//!
//! Idempotence lives here: [`Db::record`] writes the event id (insert-or-ignore on its primary
//! key) and the shipment in one transaction, so an event delivered twice, by a redelivery or a
//! publisher's retry, is stored once, and the second delivery learns it was a duplicate.

use flotilla_kit::db::{Database, Embedded, Migrations, UnsupportedUrl};
use serde::Serialize;
use sqlx::AnyPool;

pub use flotilla_kit::db::{redact, Backend};

use crate::classify::Event;

/// A storage failure, classified for the consumer (retry or dead-letter) and the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No shipment for that order.
    #[error("shipment not found")]
    NotFound,
    /// A failure another attempt may not meet: the database is busy, locked, unreachable, the
    /// pool is exhausted or closed, a serialization conflict.
    #[error("database unavailable: {0}")]
    Transient(sqlx::Error),
    /// A failure another attempt would meet again (a constraint the data breaks, say).
    #[error("database error: {0}")]
    Permanent(sqlx::Error),
    /// The `DATABASE_URL` scheme is neither SQLite nor PostgreSQL.
    #[error(transparent)]
    UnsupportedUrl(#[from] UnsupportedUrl),
    /// Migrating the schema failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Migrate(_))
    }
}

/// Whether a database error code names a failure that passes: SQLite's busy or locked
/// database (`SQLITE_BUSY`, `SQLITE_LOCKED` and their extended codes; SQLite codes are numbers
/// of at most four digits), or a PostgreSQL SQLSTATE (five characters) for a serialization
/// failure, deadlock, lock not available, too many connections, a shutdown, or a connection
/// failure (class 08).
fn transient_code(code: &str) -> bool {
    if code.len() <= 4 {
        return code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
    }
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Database(ref d) => {
                let busy = d.code().is_some_and(|c| transient_code(&c))
                    || d.message().contains("database is locked");
                if busy {
                    Self::Transient(e)
                } else {
                    Self::Permanent(e)
                }
            }
            sqlx::Error::Configuration(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::Decode(_) => Self::Permanent(e),
            // Io, Tls, Protocol, PoolTimedOut, PoolClosed, WorkerCrashed and the rest.
            other => Self::Transient(other),
        }
    }
}

/// What [`Db::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The event was new: its shipment is stored.
    Stored,
    /// The event id was handled before: nothing changed.
    Duplicate,
}

/// The migrations (`migrations/`, the same portable SQL on both backends), compiled in.
const MIGRATIONS: Embedded = flotilla_kit::embedded_migrations!(".", "0001_shipments.sql");

/// A shipment as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipment {
    /// The order shipped.
    pub order_id: String,
    /// The event that scheduled it.
    pub event_id: String,
    /// Who placed the order.
    pub user_id: String,
    /// What is shipped.
    pub item: String,
    /// How many.
    pub quantity: i64,
    /// `scheduled`.
    pub status: String,
    /// When the order was placed (the event's `occurredAt`).
    pub placed_at: String,
    /// When the event was handled, Unix milliseconds.
    pub created_at_ms: i64,
}

flotilla_kit::from_row!(Shipment {
    order_id,
    event_id,
    user_id,
    item,
    quantity,
    status,
    placed_at,
    created_at_ms
});

const COLUMNS: &str =
    "order_id, event_id, user_id, item, quantity, status, placed_at, created_at AS created_at_ms";

/// The shipment store. Until its migrations ran, readiness fails and nothing is consumed.
#[derive(Debug, Clone)]
pub struct Db {
    db: Database,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Db {
    /// Prepares the pool without connecting, so the service can start (not ready) while the
    /// database is down; [`Self::migrate_until_ready`] brings it up.
    pub fn open(url: &str) -> Result<Self, DbError> {
        Ok(Self {
            db: Database::open::<DbError>(url, Migrations::portable(MIGRATIONS))?,
        })
    }

    /// Opens and migrates at once (tests, tools).
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let db = Self::open(url)?;
        db.migrate().await?;
        Ok(db)
    }

    /// Applies pending migrations (the same portable SQL on both backends).
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

    /// Readiness: migrated, and the `shipments` table answers.
    pub async fn ping(&self) -> Result<(), String> {
        self.db.ping::<DbError>("shipments").await
    }

    fn pool(&self) -> &AnyPool {
        self.db.pool()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool().close().await;
    }

    /// Records a handled event and its shipment in one transaction; an event id already
    /// recorded changes nothing and answers [`Recorded::Duplicate`]. A second event for an
    /// order that already has a shipment is recorded, and the shipment kept as it was.
    pub async fn record(&self, event: &Event, kind: &str) -> Result<Recorded, DbError> {
        let now = now_ms();
        let id = event.id.to_string();
        let mut tx = self.pool().begin().await?;
        // The write comes first, so SQLite takes its write lock at once (waiting out other
        // writers with its busy timeout) instead of failing an upgrade from a read lock.
        let inserted = sqlx::query(
            "INSERT INTO processed_events (event_id, event_type, handled_at) VALUES ($1, $2, $3) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&id)
        .bind(kind)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(Recorded::Duplicate);
        }
        let order = &event.order;
        sqlx::query(
            "INSERT INTO shipments \
             (order_id, event_id, user_id, item, quantity, status, placed_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'scheduled', $6, $7) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&order.order_id)
        .bind(&id)
        .bind(&order.user_id)
        .bind(&order.item)
        .bind(i64::from(order.quantity))
        .bind(&event.occurred_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Recorded::Stored)
    }

    /// The shipment of one order.
    pub async fn get(&self, order_id: &str) -> Result<Shipment, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM shipments WHERE order_id = $1");
        Ok(sqlx::query_as::<_, Shipment>(&sql)
            .bind(order_id)
            .fetch_one(self.pool())
            .await?)
    }

    /// The newest shipments, newest first.
    pub async fn list(&self, limit: i64) -> Result<Vec<Shipment>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM shipments ORDER BY created_at DESC, order_id DESC LIMIT $1"
        );
        Ok(sqlx::query_as::<_, Shipment>(&sql)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// How many events were recorded (duplicates excluded).
    pub async fn events_recorded(&self) -> Result<i64, DbError> {
        use sqlx::Row as _;
        let row = sqlx::query("SELECT COUNT(*) FROM processed_events")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_kit::amqp::OrderPlaced;

    #[tokio::test]
    async fn the_embedded_migrations_are_the_directorys() {
        assert_eq!(MIGRATIONS.check().await, Ok(()));
    }

    fn event(id: u128, order: &str) -> Event {
        Event {
            id: uuid::Uuid::from_u128(id),
            occurred_at: "2026-12-07T08:00:00Z".into(),
            order: OrderPlaced {
                order_id: order.into(),
                user_id: "u1".into(),
                item: "book".into(),
                quantity: 2,
            },
        }
    }

    #[tokio::test]
    async fn an_event_recorded_twice_stores_one_shipment() {
        // The second recording of an event id is a duplicate and changes nothing.
        let db = Db::connect("sqlite::memory:").await.expect("db");
        let e = event(1, "o1");
        assert_eq!(
            db.record(&e, "OrderPlaced").await.ok(),
            Some(Recorded::Stored)
        );
        assert_eq!(
            db.record(&e, "OrderPlaced").await.ok(),
            Some(Recorded::Duplicate)
        );
        assert_eq!(db.events_recorded().await.ok(), Some(1));
        let s = db.get("o1").await.expect("stored");
        assert_eq!(
            (s.event_id.as_str(), s.quantity),
            (e.id.to_string().as_str(), 2)
        );
        assert_eq!(db.list(10).await.map(|l| l.len()).ok(), Some(1));
        assert!(matches!(db.get("o2").await, Err(DbError::NotFound)));
    }

    #[tokio::test]
    async fn a_closed_pool_is_a_transient_failure() {
        // A database that went away is retried, not dead-lettered.
        let db = Db::connect("sqlite::memory:").await.expect("db");
        db.close().await;
        let err = db
            .record(&event(2, "o2"), "OrderPlaced")
            .await
            .expect_err("closed");
        assert!(err.is_transient(), "{err}");
        for (code, transient) in [
            ("5", true),
            ("517", true),
            ("6", true),
            ("19", false),
            ("2067", false),
            ("40001", true),
            ("08006", true),
            ("23505", false),
        ] {
            assert_eq!(transient_code(code), transient, "{code}");
        }
    }
}
