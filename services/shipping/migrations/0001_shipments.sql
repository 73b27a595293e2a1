-- Events handled, keyed by event id: the idempotence record. A shipment and its event's row are
-- written in one transaction, so an event delivered twice finds its row and changes nothing.
-- Portable SQL (SQLite and PostgreSQL through sqlx's Any driver); times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    event_type TEXT NOT NULL,
    handled_at BIGINT NOT NULL
);

-- One shipment per order, scheduled when its OrderPlaced event is handled.
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    status TEXT NOT NULL,
    placed_at TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The listing's order: newest first.
CREATE INDEX IF NOT EXISTS shipments_created ON shipments (created_at, order_id);
