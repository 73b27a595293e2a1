-- Stable user ids: a UUID per account instead of the row id. A sequence restarts at 1 when the
-- database is recreated, so unexpired tokens (and orders, which name users by the token's
-- subject) would point at whoever signs up next. Existing accounts get a random UUID. Stored as
-- text so the same queries run on SQLite through sqlx's Any driver.
ALTER TABLE users ADD COLUMN uid TEXT;
UPDATE users SET uid = md5(random()::text || clock_timestamp()::text || id::text)::uuid::text;
ALTER TABLE users DROP COLUMN id;
ALTER TABLE users RENAME COLUMN uid TO id;
ALTER TABLE users ALTER COLUMN id SET NOT NULL;
ALTER TABLE users ADD PRIMARY KEY (id);
-- The listing's order: oldest first.
CREATE INDEX users_created ON users (created_at, id);
