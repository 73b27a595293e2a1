//! A parser for the Prometheus text exposition format (version 0.0.4), enough to read counters
//! such as `http_requests_total{status="503"}` from a pod's metrics endpoint.
//!
//! It follows the format as Prometheus reads it: `#` lines are comments (HELP/TYPE included),
//! label values carry `\\`, `\"` and `\n` escapes, values may be `NaN`/`+Inf`/`-Inf`, and a sample
//! may end with an integer timestamp. Pure: text in, samples out. [`visit_line`] reads a line
//! without allocating, for the scrapes that run once a second per pod.

use thiserror::Error;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `http_requests_total`.
    pub name: String,
    /// Labels in the order they appear.
    pub labels: Vec<(String, String)>,
    /// The sample value.
    pub value: f64,
    /// Optional timestamp in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of a label, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// Parses a whole exposition; the first malformed line is an error.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let sample = parse_line(raw, |_| true).map_err(|reason| ParseError {
            line: i + 1,
            reason,
        })?;
        out.extend(sample);
    }
    Ok(out)
}

/// What one line of an exposition is.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Empty, or a comment (`# HELP`, `# TYPE` and any other `#` line).
    Blank,
    /// A valid sample of a metric the caller did not ask for (checked, but nothing allocated).
    Skipped,
    /// A sample of a metric the caller asked for.
    Kept(Sample),
}

/// Reads one line (without its `\n`). Every sample line is checked in full, so a malformed
/// line is an error whether or not it is kept (a malformed exposition fails the whole scrape in
/// Prometheus too); only lines whose metric name `keep` accepts are turned into owned values.
pub fn read_line(raw: &str, keep: impl Fn(&str) -> bool) -> Result<Line, &'static str> {
    let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Blank);
    }
    Ok(match parse_sample(line, keep)? {
        Some(s) => Line::Kept(s),
        None => Line::Skipped,
    })
}

fn parse_line(raw: &str, keep: impl Fn(&str) -> bool) -> Result<Option<Sample>, &'static str> {
    match read_line(raw, keep)? {
        Line::Kept(s) => Ok(Some(s)),
        Line::Blank | Line::Skipped => Ok(None),
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn name(&mut self, start: fn(char) -> bool) -> Option<&'a str> {
        let from = self.pos;
        match self.peek() {
            Some(c) if start(c) => self.pos += c.len_utf8(),
            _ => return None,
        }
        while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
            self.pos += c.len_utf8();
        }
        Some(&self.s[from..self.pos])
    }

    fn token(&mut self) -> &'a str {
        let from = self.pos;
        while let Some(c) = self.peek().filter(|c| *c != ' ' && *c != '\t') {
            self.pos += c.len_utf8();
        }
        &self.s[from..self.pos]
    }
}

/// Where the labels of a sample line go.
enum Sink<'s, 'a> {
    /// Nowhere: the line is only checked.
    Check,
    /// Decoded into owned pairs.
    Own(&'s mut Vec<(String, String)>),
    /// Handed over as written (name, value between the quotes, escapes not decoded).
    Visit(&'s mut dyn FnMut(&'a str, &'a str)),
}

/// Parses one sample line; returns `None` (after checking the whole line) when `keep` refuses
/// its metric name.
fn parse_sample(line: &str, keep: impl Fn(&str) -> bool) -> Result<Option<Sample>, &'static str> {
    let mut labels = Vec::new();
    let kept = scan_sample(line, &keep, &mut Sink::Own(&mut labels))?;
    Ok(kept.map(|(name, value, timestamp_ms)| Sample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    }))
}

/// A kept sample's name, value and timestamp.
type Head<'a> = (&'a str, f64, Option<i64>);

/// Checks a whole sample line; for a metric `keep` accepts, its labels go to `sink` and its
/// name, value and timestamp are returned.
fn scan_sample<'a>(
    line: &'a str,
    keep: &impl Fn(&str) -> bool,
    sink: &mut Sink<'_, 'a>,
) -> Result<Option<Head<'a>>, &'static str> {
    let mut cur = Cursor { s: line, pos: 0 };
    let name = cur.name(is_name_start).ok_or("invalid metric name")?;
    let kept = keep(name);
    cur.skip_ws();
    if cur.peek() == Some('{') {
        cur.bump();
        let mut check = Sink::Check;
        parse_labels(&mut cur, if kept { sink } else { &mut check })?;
    }
    cur.skip_ws();
    let value = parse_value(cur.token())?;
    cur.skip_ws();
    let ts = cur.token();
    let timestamp_ms = if ts.is_empty() {
        None
    } else {
        Some(ts.parse::<i64>().map_err(|_| "invalid timestamp")?)
    };
    cur.skip_ws();
    if cur.peek().is_some() {
        return Err("unexpected text after timestamp");
    }
    Ok(kept.then_some((name, value, timestamp_ms)))
}

/// What [`visit_line`] read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Visited<'a> {
    /// Empty, or a comment.
    Blank,
    /// A valid sample of a metric the caller did not ask for.
    Skipped,
    /// A sample of a metric the caller asked for; its labels went to the visitor.
    Kept {
        /// Metric name.
        name: &'a str,
        /// The sample value.
        value: f64,
    },
}

/// Reads one line as [`read_line`] does, without allocating: the labels of a kept sample are
/// handed to `label` as written, `(name, value)` with the value's escapes (`\\`, `\"`, `\n`)
/// not decoded. Comparing such a value with text that has no backslash, quote or newline (a
/// status code, a route, a bucket bound) gives what comparing the decoded value would.
pub fn visit_line<'a>(
    raw: &'a str,
    keep: impl Fn(&str) -> bool,
    mut label: impl FnMut(&'a str, &'a str),
) -> Result<Visited<'a>, &'static str> {
    let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
    if line.is_empty() || line.starts_with('#') {
        return Ok(Visited::Blank);
    }
    Ok(
        match scan_sample(line, &keep, &mut Sink::Visit(&mut label))? {
            Some((name, value, _)) => Visited::Kept { name, value },
            None => Visited::Skipped,
        },
    )
}

/// Reads a label set after its `{` into `sink`.
fn parse_labels<'a>(cur: &mut Cursor<'a>, sink: &mut Sink<'_, 'a>) -> Result<(), &'static str> {
    loop {
        cur.skip_ws();
        if cur.peek() == Some('}') {
            cur.bump();
            return Ok(());
        }
        let key = cur
            .name(|c| c.is_ascii_alphabetic() || c == '_')
            .ok_or("invalid label name")?;
        cur.skip_ws();
        if cur.bump() != Some('=') {
            return Err("expected '=' after label name");
        }
        cur.skip_ws();
        if cur.bump() != Some('"') {
            return Err("expected '\"' to open label value");
        }
        let start = cur.pos;
        let mut value = matches!(sink, Sink::Own(_)).then(String::new);
        loop {
            let c = match cur.bump() {
                None => return Err("unterminated label value"),
                Some('"') => break,
                Some('\\') => match cur.bump() {
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('n') => '\n',
                    _ => return Err("invalid escape in label value"),
                },
                Some(c) => c,
            };
            if let Some(v) = value.as_mut() {
                v.push(c);
            }
        }
        match sink {
            Sink::Check => {}
            Sink::Own(labels) => labels.push((key.to_owned(), value.unwrap_or_default())),
            // The closing quote is one byte.
            Sink::Visit(f) => f(key, &cur.s[start..cur.pos - 1]),
        }
        cur.skip_ws();
        match cur.bump() {
            Some(',') => continue,
            Some('}') => return Ok(()),
            _ => return Err("expected ',' or '}' after label value"),
        }
    }
}

fn parse_value(tok: &str) -> Result<f64, &'static str> {
    match tok {
        "" => Err("missing value"),
        "NaN" | "nan" => Ok(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        t => t.parse::<f64>().map_err(|_| "invalid value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_typical_exposition() {
        // Comments are skipped and labelled counters are read with every label.
        let text = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
                    http_requests_total{method=\"GET\",path=\"/users\",status=\"200\"} 1027\n\
                    http_requests_total{method=\"GET\",path=\"/users\",status=\"503\"} 3 1395066363000\n\
                    process_open_fds 12\n";
        let s = parse(text).expect("valid text");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "http_requests_total");
        assert_eq!(s[0].label("status"), Some("200"));
        assert_eq!(s[0].value, 1027.0);
        assert_eq!(s[1].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(s[2].labels, vec![]);
    }

    #[test]
    fn label_escapes_and_trailing_comma() {
        // Escaped quotes, backslashes and newlines in label values decode as Prometheus does.
        let s = parse("m{a=\"x\\\"y\",b=\"c:\\\\d\",n=\"l1\\nl2\",} 1\n").expect("valid");
        assert_eq!(s[0].label("a"), Some("x\"y"));
        assert_eq!(s[0].label("b"), Some("c:\\d"));
        assert_eq!(s[0].label("n"), Some("l1\nl2"));
    }

    #[test]
    fn special_values() {
        // NaN and infinities are values, not errors.
        let s = parse("a NaN\nb +Inf\nc -Inf\nd 1.5e3\ne{} 2\n").expect("valid");
        assert!(s[0].value.is_nan());
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert_eq!(s[3].value, 1500.0);
        assert_eq!(s[4].value, 2.0);
    }

    #[test]
    fn braces_and_commas_inside_values_do_not_confuse() {
        // A label value may contain '}' or ',' or spaces.
        let s = parse("m{path=\"/a,b} c\"} 7").expect("valid");
        assert_eq!(s[0].label("path"), Some("/a,b} c"));
        assert_eq!(s[0].value, 7.0);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        // Bad input is reported, never panics.
        assert_eq!(parse("ok 1\nm{a=\"x} 1").map_err(|e| e.line), Err(2));
        assert!(parse("m{a=x} 1").is_err());
        assert!(parse("1m 1").is_err());
        assert!(parse("m").is_err());
        assert!(parse("m 1 notatime").is_err());
        assert!(parse("m{a=\"\\q\"} 1").is_err());
        assert!(parse("m 1 2 3").is_err());
    }

    #[test]
    fn visiting_reads_what_parsing_reads_without_decoding() {
        // The visitor sees every label of a kept line as written, and the same name and value
        // the parser gives; other lines are only checked.
        let line = "m{a=\"x\\\"y\",le=\"0.5\"} 7";
        let mut seen = Vec::new();
        let got = visit_line(line, |n| n == "m", |k, v| seen.push((k, v)));
        assert_eq!(
            got,
            Ok(Visited::Kept {
                name: "m",
                value: 7.0
            })
        );
        assert_eq!(seen, [("a", "x\\\"y"), ("le", "0.5")]);
        let parsed = parse(line).expect("valid");
        assert_eq!(parsed[0].label("le"), Some("0.5"));
        let mut none = 0;
        assert_eq!(
            visit_line(line, |_| false, |_, _| none += 1),
            Ok(Visited::Skipped)
        );
        assert_eq!(none, 0);
        assert_eq!(visit_line("# c", |_| true, |_, _| {}), Ok(Visited::Blank));
        assert!(visit_line("m{a=\"\\q\"} 1", |_| false, |_, _| {}).is_err());
    }
}
