-- The transactional outbox: one row per event, written in the same transaction as the change
-- it announces, published to RabbitMQ by the relay afterwards, in `seq` order. `body` is the
-- JSON envelope as sent; `traceparent`/`tracestate` are the W3C trace context of the request
-- that wrote it (NULL with tracing off). Times are Unix milliseconds; `sent_at` stays NULL
-- until the broker confirmed the message.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body TEXT NOT NULL,
    traceparent TEXT,
    tracestate TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
