//! A database of its own for each test that runs against the PostgreSQL server the test
//! command starts (`TEST_POSTGRES_URL`): services migrate their schema with sqlx, which keeps one
//! migration table per database, so two services (or two runs) sharing a database would refuse
//! each other's migrations.

use anyhow::{Context, Result};
use sqlx::{Connection, Executor, PgConnection};

/// Creates an empty database on the server `server_url` names (its user needs `CREATEDB`) and
/// returns the URL of the new database: the same URL with the database name replaced.
pub async fn fresh_database(server_url: &str) -> Result<String> {
    let mut conn = PgConnection::connect(server_url)
        .await
        .context("connecting to TEST_POSTGRES_URL")?;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .with_context(|| format!("creating database {name}"))?;
    conn.close().await?;
    with_database(server_url, &name)
}

/// `url` with its database (the path after the host) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .context("TEST_POSTGRES_URL is not a URL")?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let host = rest.split_once('/').map_or(rest, |(host, _)| host);
    Ok(match query {
        Some(q) => format!("{scheme}://{host}/{name}?{q}"),
        None => format!("{scheme}://{host}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() -> Result<()> {
        assert_eq!(
            with_database("postgres://u:p@h:5432/flotilla", "t1")?,
            "postgres://u:p@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@h/flotilla?sslmode=disable", "t1")?,
            "postgres://u@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1")?, "postgres://h/t1");
        Ok(())
    }
}
