//! A `/metrics` body shaped like a Flotilla kit service's (users): `http_requests_total` and
//! `http_request_duration_seconds` for its routes, the probe and metrics routes among them,
//! and the process metrics, with counters that grow as a service answering `rps` requests a
//! second would make them grow. The prober CPU measurement scrapes it from every test pod.

use std::fmt::Write as _;

/// API routes (method, template) and the share of their traffic.
const API: [(&str, &str, f64); 4] = [
    ("GET", "/users", 0.5),
    ("GET", "/users/{id}", 0.3),
    ("POST", "/users", 0.15),
    ("DELETE", "/users/{id}", 0.05),
];

/// Routes the prober, the kubelet and scrapers call, at a steady rate each.
const PROBES: [&str; 3] = ["/readyz", "/healthz", "/metrics"];

/// The Prometheus client's default buckets, as the kit's histogram uses them.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Cumulative share of requests at or below each bucket bound: most requests take under 5 ms.
const SHARES: [f64; 11] = [
    0.90, 0.96, 0.985, 0.993, 0.997, 0.999, 1.0, 1.0, 1.0, 1.0, 1.0,
];

/// The exposition after `seconds` of `rps` API requests a second, 1 % of them answered 500.
pub fn text(seconds: u64, rps: f64) -> String {
    let mut out = String::with_capacity(16 << 10);
    let total = rps * seconds as f64;
    out.push_str(
        "# HELP http_requests_total HTTP requests answered, by route template and status.\n",
    );
    out.push_str("# TYPE http_requests_total counter\n");
    for (method, route, share) in API {
        let n = (total * share).floor();
        let errors = (n * 0.01).floor();
        let _ = writeln!(
            out,
            "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"200\"}} {}",
            n - errors
        );
        let _ = writeln!(
            out,
            "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"500\"}} {errors}"
        );
    }
    for route in PROBES {
        let _ = writeln!(
            out,
            "http_requests_total{{method=\"GET\",route=\"{route}\",status=\"200\"}} {}",
            seconds * 2
        );
    }
    out.push_str("# HELP http_request_duration_seconds Time from receiving a request to producing its response, by route template.\n");
    out.push_str("# TYPE http_request_duration_seconds histogram\n");
    let probes = PROBES.iter().map(|r| ("GET", *r, 0.0));
    for (method, route, share) in API.into_iter().chain(probes) {
        let n = if share > 0.0 {
            (total * share).floor()
        } else {
            (seconds * 2) as f64
        };
        let labels = format!("method=\"{method}\",route=\"{route}\"");
        for (le, cum) in BUCKETS.iter().zip(SHARES) {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                (n * cum).floor()
            );
        }
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {n}"
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_sum{{{labels}}} {}",
            n * 0.003
        );
        let _ = writeln!(out, "http_request_duration_seconds_count{{{labels}}} {n}");
    }
    for (name, value) in [
        ("process_cpu_seconds_total", seconds as f64 * 0.02),
        ("process_max_fds", 1_048_576.0),
        ("process_open_fds", 23.0),
        ("process_resident_memory_bytes", 18_874_368.0),
        ("process_start_time_seconds", 1_700_000_000.0),
        ("process_threads", 5.0),
        ("process_virtual_memory_bytes", 1_234_567_168.0),
    ] {
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
    }
    out
}
