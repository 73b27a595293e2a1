-- Orders, one row per order. `owner` is the user id from the caller's token (the JWT `sub`).
-- Timestamps are Unix milliseconds so the same queries work on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS orders (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    item TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_owner_id ON orders (owner, id);
