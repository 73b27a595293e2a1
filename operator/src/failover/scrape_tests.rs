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
    s.finish().map(|s| s.counts)
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
        s.finish().map(|s| s.counts),
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

/// A kit service's exposition: API and probe routes, with their latency histogram.
const KIT: &str = "# TYPE http_requests_total counter\n\
    http_requests_total{method=\"GET\",route=\"/users\",status=\"200\"} 180\n\
    http_requests_total{method=\"GET\",route=\"/users\",status=\"500\"} 20\n\
    http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1000\n\
    http_requests_total{method=\"GET\",route=\"/readyz\",status=\"503\"} 7\n\
    # TYPE http_request_duration_seconds histogram\n\
    http_request_duration_seconds_bucket{method=\"GET\",route=\"/users\",le=\"0.005\"} 190\n\
    http_request_duration_seconds_bucket{method=\"GET\",route=\"/users\",le=\"0.1\"} 200\n\
    http_request_duration_seconds_bucket{method=\"GET\",route=\"/users\",le=\"+Inf\"} 200\n\
    http_request_duration_seconds_sum{method=\"GET\",route=\"/users\"} 0.9\n\
    http_request_duration_seconds_count{method=\"GET\",route=\"/users\"} 200\n\
    http_request_duration_seconds_bucket{method=\"GET\",route=\"/readyz\",le=\"0.005\"} 1007\n\
    http_request_duration_seconds_bucket{method=\"GET\",route=\"/readyz\",le=\"0.1\"} 1007\n\
    http_request_duration_seconds_bucket{method=\"GET\",route=\"/readyz\",le=\"+Inf\"} 1007\n";

#[test]
fn traffic_reads_api_requests_and_their_latency_without_the_probes() {
    // The traffic figures count API requests only: the readiness route's requests, failures
    // and latencies are the prober's own. The error-rate counts are read as before.
    let mut s = Scanner::new(ScrapeLimits::default()).with_traffic();
    s.feed(KIT.as_bytes()).expect("within the caps");
    let got = s.finish().expect("valid");
    assert_eq!(
        got.counts,
        Some(Counts {
            total: 1207.0,
            errors: 27.0,
            probes: 1007.0,
        })
    );
    let t = got.traffic.expect("counter present");
    assert_eq!((t.requests, t.errors), (200.0, 20.0));
    let h = t.latency.expect("histogram present");
    assert_eq!(
        h.buckets(),
        &[(0.005, 190.0), (0.1, 200.0), (f64::INFINITY, 200.0)]
    );
    // Without traffic asked for, the histogram is not kept.
    let mut plain = Scanner::new(ScrapeLimits::default());
    plain.feed(KIT.as_bytes()).expect("within the caps");
    assert_eq!(plain.finish().map(|s| s.traffic), Ok(None));
}

#[test]
fn grpc_traffic_reads_the_handling_histogram_without_health_checks() {
    // For a gRPC service (the orders sample): `grpc_server_handled_total` by code and the
    // `grpc_server_handling_seconds` histogram; the health service's calls are probes.
    let text = "grpc_server_handled_total{grpc_service=\"flotilla.orders.v1.Orders\",grpc_method=\"ListOrders\",grpc_code=\"OK\"} 90\n\
        grpc_server_handled_total{grpc_service=\"flotilla.orders.v1.Orders\",grpc_method=\"ListOrders\",grpc_code=\"Unavailable\"} 10\n\
        grpc_server_handled_total{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"OK\"} 500\n\
        grpc_server_handling_seconds_bucket{grpc_service=\"flotilla.orders.v1.Orders\",grpc_method=\"ListOrders\",le=\"0.01\"} 100\n\
        grpc_server_handling_seconds_bucket{grpc_service=\"flotilla.orders.v1.Orders\",grpc_method=\"ListOrders\",le=\"+Inf\"} 100\n\
        grpc_server_handling_seconds_bucket{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",le=\"0.01\"} 500\n\
        grpc_server_handling_seconds_bucket{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",le=\"+Inf\"} 500\n\
        http_request_duration_seconds_bucket{route=\"/metrics\",le=\"+Inf\"} 3\n";
    let mut s = Scanner::grpc(ScrapeLimits::default()).with_traffic();
    s.feed(text.as_bytes()).expect("within the caps");
    let t = s.finish().expect("valid").traffic.expect("counter present");
    assert_eq!((t.requests, t.errors), (100.0, 10.0));
    assert_eq!(
        t.latency.map(|h| h.buckets().to_vec()),
        Some(vec![(0.01, 100.0), (f64::INFINITY, 100.0)])
    );
}

#[test]
fn traffic_without_a_counter_is_no_data() {
    // A histogram alone is not traffic: no request counter, no figures.
    let mut s = Scanner::new(ScrapeLimits::default()).with_traffic();
    s.feed(b"http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n")
        .expect("within the caps");
    assert_eq!(s.finish(), Ok(Scraped::default()));
}

#[test]
fn a_histogram_with_too_many_bounds_gives_no_latency_but_keeps_the_counts() {
    // An exposition cannot grow the scanner with bucket bounds: past the cap the latency is
    // dropped for that scrape, and the request counts still count.
    let mut body = String::from("http_requests_total{status=\"200\"} 10\n");
    for i in 0..=MAX_BUCKETS {
        body.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"{}\"}} 1\n",
            i + 1
        ));
    }
    let mut s = Scanner::new(ScrapeLimits::default()).with_traffic();
    s.feed(body.as_bytes()).expect("within the caps");
    let t = s.finish().expect("valid").traffic.expect("counter present");
    assert_eq!((t.requests, t.latency), (10.0, None));
}
