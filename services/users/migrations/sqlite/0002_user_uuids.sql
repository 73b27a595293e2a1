-- Stable user ids: a UUID per account instead of the row id. A row id restarts at 1 when a pod's
-- embedded database is recreated, so unexpired tokens (and orders, which name users by the
-- token's subject) would point at whoever signs up next. Existing accounts get a random UUID.
CREATE TABLE users_v2 (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO users_v2 (id, name, email, password_hash, created_at, updated_at)
SELECT lower(
           hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
           substr(hex(randomblob(2)), 2) || '-' ||
           substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' ||
           hex(randomblob(6))
       ),
       name, email, password_hash, created_at, updated_at
FROM users;
DROP TABLE users;
ALTER TABLE users_v2 RENAME TO users;
-- The listing's order: oldest first.
CREATE INDEX users_created ON users (created_at, id);
