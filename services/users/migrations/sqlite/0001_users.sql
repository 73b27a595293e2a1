-- User accounts. Timestamps are Unix milliseconds so the same queries work on SQLite and
-- PostgreSQL through sqlx's Any driver; emails are stored lower-cased.
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
