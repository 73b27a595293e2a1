//! Tests of the bounded streaming scrape: the caps, and that streaming reads exactly what the
//! whole-text parser reads wherever the chunks are cut.

use super::*;
use crate::failover::error_rate;

const TEXT: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
    http_requests_total{method=\"GET\",path=\"/caf\u{e9}\",status=\"200\"} 90\n\
    http_requests_total{method=\"GET\",path=\"/a,b} c\",status=\"503\"} 6 1395066363000\n\
    http_requests_total{code=\"500\",} 4\r\n\
    process_open_fds 12\n\
    go_gc_duration_seconds{quantile=\"0.5\"} NaN\n\
    http_requests_total{status=\"404\"} 10";

fn scan(chunks: &[&[u8]], limits: ScrapeLimits) -> Result<Option<Counts>, Rejected> {
    let mut s = Scanner::new(limits);
    for c in chunks {
        s.feed(c)?;
    }
    s.finish()
}

fn tiny_lines(n: usize, name: &str) -> String {
    (0..n).map(|i| format!("{name}{{i=\"{i}\"}} 1\n")).collect()
}

#[test]
fn streaming_reads_what_the_whole_text_parser_reads_at_any_chunk_size() {
    // Cutting the body anywhere (even inside a multi-byte character) changes nothing.
    let whole = error_rate::counts(&promtext::parse(TEXT).expect("valid"));
    assert_eq!(
        whole,
        Some(Counts {
            total: 110.0,
            errors: 10.0,
            probes: 0.0,
        })
    );
    let bytes = TEXT.as_bytes();
    for size in [1, 2, 3, 7, 64, bytes.len()] {
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        assert_eq!(
            scan(&chunks, ScrapeLimits::default()),
            Ok(whole),
            "chunk size {size}"
        );
    }
}

#[test]
fn a_body_over_the_byte_cap_is_rejected_and_one_at_the_cap_is_read() {
    // The byte cap counts every byte, comments included, and is checked as bytes arrive.
    let text = "# padding\n".repeat(100) + "http_requests_total 5\n";
    let limits = ScrapeLimits {
        max_body_bytes: text.len(),
        ..ScrapeLimits::default()
    };
    assert!(scan(&[text.as_bytes()], limits).is_ok_and(|c| c.is_some()));
    let limits = ScrapeLimits {
        max_body_bytes: text.len() - 1,
        ..limits
    };
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(100).collect();
    assert_eq!(scan(&chunks, limits), Err(Rejected::BodyTooLarge));
}

#[test]
fn more_series_than_the_cap_are_rejected_counting_every_metric() {
    // Series of other metrics count towards the cap (like Prometheus's sample_limit); comment
    // lines do not.
    let limits = ScrapeLimits {
        max_series: 100,
        ..ScrapeLimits::default()
    };
    let ok = "# c\n".repeat(500) + &tiny_lines(99, "other") + "http_requests_total 1\n";
    assert!(scan(&[ok.as_bytes()], limits).is_ok_and(|c| c.is_some()));
    let over = tiny_lines(101, "other");
    assert_eq!(
        scan(&[over.as_bytes()], limits),
        Err(Rejected::TooManySeries)
    );
}

#[test]
fn a_line_longer_than_the_cap_is_rejected_whether_or_not_it_ends() {
    // The only buffer that grows with the input is bounded.
    let limits = ScrapeLimits {
        max_line_bytes: 1000,
        ..ScrapeLimits::default()
    };
    let long = format!("m{{a=\"{}\"}} 1", "x".repeat(2000));
    let chunks: Vec<&[u8]> = long.as_bytes().chunks(300).collect();
    assert_eq!(scan(&chunks, limits), Err(Rejected::LineTooLong));
    let with_nl = long + "\n";
    assert_eq!(
        scan(&[with_nl.as_bytes()], limits),
        Err(Rejected::LineTooLong)
    );
}

#[test]
fn megabytes_of_tiny_lines_keep_only_one_partial_line_in_memory() {
    // Reading a large body in small chunks never buffers more than a line.
    let body = tiny_lines(60_000, "x") + "http_requests_total{status=\"500\"} 3\n";
    let limits = ScrapeLimits {
        max_series: 100_000,
        ..ScrapeLimits::default()
    };
    let mut s = Scanner::new(limits);
    for c in body.as_bytes().chunks(4096) {
        s.feed(c).expect("within the caps");
        assert!(s.partial.capacity() <= 256, "{}", s.partial.capacity());
    }
    assert_eq!(
        s.finish(),
        Ok(Some(Counts {
            total: 3.0,
            errors: 3.0,
            probes: 0.0,
        }))
    );
}

#[test]
fn a_malformed_line_of_any_metric_rejects_the_scrape() {
    // As in Prometheus, one bad line fails the whole exposition, even in a metric not kept.
    let bad = "http_requests_total 1\nother{a=x} 1\n";
    assert_eq!(
        scan(&[bad.as_bytes()], ScrapeLimits::default()),
        Err(Rejected::Malformed)
    );
    let not_utf8: &[u8] = b"http_requests_total{a=\"\xff\"} 1\n";
    assert_eq!(
        scan(&[not_utf8], ScrapeLimits::default()),
        Err(Rejected::Malformed)
    );
}

#[test]
fn no_request_counter_is_no_data_not_an_error() {
    // An exposition without http_requests_total is valid and simply has nothing to judge.
    assert_eq!(scan(&[b"up 1\n"], ScrapeLimits::default()), Ok(None));
    assert_eq!(scan(&[], ScrapeLimits::default()), Ok(None));
}

#[test]
fn every_reason_has_a_distinct_fixed_label() {
    // The metric's reason label is a small fixed set.
    let labels: std::collections::BTreeSet<_> = Rejected::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), Rejected::ALL.len());
}
