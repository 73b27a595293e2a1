//! Storage: the `orders` table and the `outbox` of events, behind sqlx's `Any` driver, so the
//! same queries run on the embedded SQLite default and on PostgreSQL (the users service follows
//! the same rules: `$N` placeholders, `RETURNING`, integers and text only). Only this module
//! speaks SQL; what an event says is decided in [`crate::events`].
//!
//! An order and its event are written in one transaction ([`Db::insert_with_event`]): both or
//! neither. The relay reads unsent events in `seq` order and marks each sent once the broker
//! confirmed it.

use flotilla_kit::db::{Backend, Database, Migrations, UnsupportedUrl};
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
    #[error(transparent)]
    UnsupportedUrl(#[from] UnsupportedUrl),
    /// An event could not be encoded; the order was not stored either.
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
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

/// The migrations of each backend (`migrations/<backend>/`), compiled in.
const MIGRATIONS: Migrations = Migrations {
    sqlite: flotilla_kit::embedded_migrations!("sqlite", "0001_orders.sql", "0002_outbox.sql"),
    postgres: flotilla_kit::embedded_migrations!("postgres", "0001_orders.sql", "0002_outbox.sql"),
};

/// One stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// An event to store in the outbox, in the transaction of the change it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event id (a UUID), also the message id consumers deduplicate by.
    pub event_id: String,
    /// The event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// The routing key it is published with.
    pub routing_key: String,
    /// The JSON envelope, as it is sent.
    pub body: String,
    /// W3C `traceparent` of the request that wrote it; `None` with tracing off.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that came with it.
    pub tracestate: Option<String>,
    /// Unix milliseconds: when the change was made (the start of the publish delay).
    pub created_at: i64,
}

flotilla_kit::from_row!(OrderRow {
    id,
    owner,
    item,
    quantity,
    created_at
});

/// One stored event the broker has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Position in the outbox: events are published in this order.
    pub seq: i64,
    /// See [`NewEvent`].
    pub event_id: String,
    /// See [`NewEvent`].
    pub event_type: String,
    /// See [`NewEvent`].
    pub routing_key: String,
    /// See [`NewEvent`].
    pub body: String,
    /// See [`NewEvent`].
    pub traceparent: Option<String>,
    /// See [`NewEvent`].
    pub tracestate: Option<String>,
    /// See [`NewEvent`].
    pub created_at: i64,
}

flotilla_kit::from_row!(OutboxRow {
    seq,
    event_id,
    event_type,
    routing_key,
    body,
    traceparent,
    tracestate,
    created_at
});

const OUTBOX_COLUMNS: &str =
    "seq, event_id, event_type, routing_key, body, traceparent, tracestate, created_at";

const INSERT_ORDER: &str = "INSERT INTO orders (owner, item, quantity, created_at) \
     VALUES ($1, $2, $3, $4) RETURNING id, owner, item, quantity, created_at";

fn to_order(row: &AnyRow) -> Result<OrderRow, sqlx::Error> {
    use sqlx::FromRow;
    OrderRow::from_row(row)
}

/// Whether the URL names a supported backend; `true` for PostgreSQL.
pub fn is_postgres(url: &str) -> Result<bool, DbError> {
    Ok(Backend::from_url(url)? == Backend::Postgres)
}

/// The order store.
#[derive(Debug, Clone)]
pub struct Db {
    db: Database,
}

impl Db {
    /// Connects (creating a SQLite file if needed) and applies pending migrations. Pool
    /// bounds, SQLite file creation and in-memory handling are the kit's, shared with users.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let db = Database::open::<DbError>(url, MIGRATIONS)?;
        db.migrate().await?;
        Ok(Self { db })
    }

    /// Readiness probe: the `orders` table answers a query.
    pub async fn ping(&self) -> Result<(), String> {
        self.db.ping::<DbError>("orders").await
    }

    fn pool(&self) -> &AnyPool {
        self.db.pool()
    }

    /// Closes the pool; every later call fails as unavailable.
    pub async fn close(&self) {
        self.pool().close().await;
    }

    /// Stores a new order for `owner`.
    pub async fn insert(
        &self,
        owner: &str,
        item: &str,
        quantity: i64,
    ) -> Result<OrderRow, DbError> {
        let row = sqlx::query(INSERT_ORDER)
            .bind(owner)
            .bind(item)
            .bind(quantity)
            .bind(jiff::Timestamp::now().as_millisecond())
            .fetch_one(self.pool())
            .await?;
        Ok(to_order(&row)?)
    }

    /// Stores a new order for `owner` and the event `event` makes of it, in one transaction:
    /// if either write (or `event`) fails, neither is stored.
    pub async fn insert_with_event(
        &self,
        owner: &str,
        item: &str,
        quantity: i64,
        event: impl FnOnce(&OrderRow) -> Result<NewEvent, serde_json::Error>,
    ) -> Result<OrderRow, DbError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(INSERT_ORDER)
            .bind(owner)
            .bind(item)
            .bind(quantity)
            .bind(jiff::Timestamp::now().as_millisecond())
            .fetch_one(&mut *tx)
            .await?;
        let order = to_order(&row)?;
        let e = event(&order)?;
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, routing_key, body, traceparent, \
             tracestate, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.event_id)
        .bind(e.event_type)
        .bind(e.routing_key)
        .bind(e.body)
        .bind(e.traceparent)
        .bind(e.tracestate)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(order)
    }

    /// Up to `limit` unsent events, oldest first.
    pub async fn unsent(&self, limit: i64) -> Result<Vec<OutboxRow>, DbError> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1"
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(self.pool()).await?;
        Ok(rows
            .iter()
            .map(|r| {
                use sqlx::FromRow;
                OutboxRow::from_row(r)
            })
            .collect::<Result<_, _>>()?)
    }

    /// Marks the event at `seq` sent at `sent_at` (Unix milliseconds).
    pub async fn mark_sent(&self, seq: i64, sent_at: i64) -> Result<(), DbError> {
        sqlx::query("UPDATE outbox SET sent_at = $1 WHERE seq = $2 AND sent_at IS NULL")
            .bind(sent_at)
            .bind(seq)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// How many events are waiting: `(unsent, all)`.
    pub async fn outbox_counts(&self) -> Result<(i64, i64), DbError> {
        let row = sqlx::query(
            "SELECT COUNT(*) - COUNT(sent_at) AS unsent, COUNT(*) AS total FROM outbox",
        )
        .fetch_one(self.pool())
        .await?;
        use sqlx::Row;
        Ok((row.try_get("unsent")?, row.try_get("total")?))
    }

    /// One of `owner`'s orders; another owner's order is [`DbError::NotFound`] too.
    pub async fn get(&self, owner: &str, id: i64) -> Result<OrderRow, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE id = $1 AND owner = $2");
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(owner)
            .fetch_one(self.pool())
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
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(to_order).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_migrations_are_the_directorys() {
        assert_eq!(MIGRATIONS.check().await, Ok(()));
    }

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

    fn event(order: &OrderRow, id: &str) -> NewEvent {
        NewEvent {
            event_id: id.into(),
            event_type: "OrderPlaced".into(),
            routing_key: "orders.placed".into(),
            body: format!("{{\"order\":{}}}", order.id),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
            created_at: order.created_at,
        }
    }

    #[tokio::test]
    async fn an_order_and_its_event_are_stored_together_or_not_at_all() {
        // The event is in the outbox with the order, unsent, in commit order; an event that
        // cannot be written (here: a duplicate event id) takes its order down with it.
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("o.db").display());
        let db = Db::connect(&url).await.expect("connect");
        let first = db
            .insert_with_event("1", "apples", 3, |o| Ok(event(o, "e1")))
            .await
            .expect("insert");
        let second = db
            .insert_with_event("1", "pears", 1, |o| Ok(event(o, "e2")))
            .await
            .expect("insert");
        let unsent = db.unsent(10).await.expect("unsent");
        assert_eq!(
            unsent
                .iter()
                .map(|r| r.event_id.as_str())
                .collect::<Vec<_>>(),
            ["e1", "e2"]
        );
        assert_eq!(unsent[0].body, format!("{{\"order\":{}}}", first.id));
        assert_eq!(unsent[0].traceparent, event(&first, "e1").traceparent);
        assert_eq!(unsent[0].tracestate, None);
        assert_eq!(unsent[1].created_at, second.created_at);

        let duplicate = db
            .insert_with_event("1", "plums", 2, |o| Ok(event(o, "e1")))
            .await;
        assert!(duplicate.is_err(), "{duplicate:?}");
        let unencodable = db
            .insert_with_event("1", "plums", 2, |_| {
                Err(<serde_json::Error as serde::ser::Error>::custom("no"))
            })
            .await;
        assert!(
            matches!(unencodable, Err(DbError::Encode(_))),
            "{unencodable:?}"
        );
        let orders = db.list("1", 0, 10).await.expect("list");
        assert_eq!(orders, vec![first, second]);
        assert_eq!(db.outbox_counts().await.expect("counts"), (2, 2));
    }

    #[tokio::test]
    async fn a_sent_event_is_no_longer_offered() {
        // Marking sent removes a row from the unsent ones and the pending count, keeps the
        // rest in order, and marking it again changes nothing.
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("o.db").display());
        let db = Db::connect(&url).await.expect("connect");
        for id in ["e1", "e2", "e3"] {
            db.insert_with_event("1", "tea", 1, |o| Ok(event(o, id)))
                .await
                .expect("insert");
        }
        let unsent = db.unsent(10).await.expect("unsent");
        db.mark_sent(unsent[0].seq, 1).await.expect("mark");
        db.mark_sent(unsent[0].seq, 2).await.expect("mark again");
        let rest = db.unsent(1).await.expect("unsent");
        assert_eq!(rest, vec![unsent[1].clone()]);
        assert_eq!(db.outbox_counts().await.expect("counts"), (2, 3));
        // A plain insert (events off) writes no event.
        db.insert("1", "tea", 1).await.expect("insert");
        assert_eq!(db.outbox_counts().await.expect("counts"), (2, 3));
    }

    #[tokio::test]
    async fn the_outbox_works_on_postgres_too() {
        // The same transaction and queries on PostgreSQL, when TEST_POSTGRES_URL names one.
        let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
            return;
        };
        // A database of its own: other services migrate theirs on the same server.
        let url = flotilla_testkit::postgres::fresh_database(&url)
            .await
            .expect("a fresh database");
        let db = Db::connect(&url).await.expect("connect");
        let id = uuid::Uuid::new_v4().to_string();
        let order = db
            .insert_with_event("pg", "tea", 1, |o| Ok(event(o, &id)))
            .await
            .expect("insert");
        let row = db
            .unsent(i64::MAX)
            .await
            .expect("unsent")
            .into_iter()
            .find(|r| r.event_id == id)
            .expect("the event is unsent");
        assert_eq!(row.created_at, order.created_at);
        db.mark_sent(row.seq, 1).await.expect("mark");
        assert!(!db
            .unsent(i64::MAX)
            .await
            .expect("unsent")
            .iter()
            .any(|r| r.event_id == id));
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
