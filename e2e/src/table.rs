//! Reading kubectl's table output (`kubectl get`, `kubectl flotilla list`) as a person does: by
//! column name, not by position, so a new printer column does not break a check.

/// The cell of `column` in the row whose first cell is `row`, if both exist. Cells are
/// separated by runs of spaces, so an empty cell is not seen: ask only for columns that are
/// filled in the rows the check is about.
pub fn cell<'a>(table: &'a str, row: &str, column: &str) -> Option<&'a str> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let at = header.iter().position(|c| *c == column)?;
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&row))
        .and_then(|cells| cells.get(at).copied())
}

/// The column names of the table's header.
pub fn columns(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells are found by row and column name, wherever the column stands.
    #[test]
    fn cells_by_name() {
        let table = "NAME    READY   ACTIVE     HELD   AGE\n\
                     users   3/3     fallback   true   69s\n\
                     auth    2/2     primary    false  70s\n";
        assert_eq!(cell(table, "users", "HELD"), Some("true"));
        assert_eq!(cell(table, "auth", "ACTIVE"), Some("primary"));
        assert_eq!(cell(table, "nosuch", "HELD"), None);
        assert_eq!(cell(table, "users", "NOSUCH"), None);
        assert_eq!(columns(table), ["NAME", "READY", "ACTIVE", "HELD", "AGE"]);
    }
}
