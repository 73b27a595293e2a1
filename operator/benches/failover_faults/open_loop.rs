//! An open-loop client: a request on a fresh connection every interval, each in its own task,
//! whether or not the earlier ones have answered. A client that waits for each answer is held
//! by a request to a stopped process until its own timeout and sends nothing meanwhile, so it
//! cannot show how long *new* connections kept going to hung pods; this one keeps asking, and
//! its failures by send time show exactly that: the part of a hang Flotilla controls.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::sim::http;

/// Per request, in sending order: when it was sent and, once it ended, whether it succeeded.
type Log = Arc<Mutex<Vec<(Instant, Option<bool>)>>>;

/// The running client; stops when dropped (requests in flight end on their own timeout).
pub struct OpenLoop {
    log: Log,
    task: JoinHandle<()>,
}

impl Drop for OpenLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OpenLoop {
    /// Sends `GET path` to `addr` every `every`, each on a fresh connection.
    pub fn start(addr: SocketAddr, path: &'static str, every: Duration) -> OpenLoop {
        let log = Log::default();
        let sink = log.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Ok(index) = sink.lock().map(|mut l| {
                    l.push((Instant::now(), None));
                    l.len() - 1
                }) else {
                    return;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let ok = matches!(http(addr, "GET", path, None).await, Ok(c) if c < 500);
                    if let Ok(mut l) = sink.lock() {
                        l[index].1 = Some(ok);
                    }
                });
            }
        });
        OpenLoop { log, task }
    }

    /// Finished requests, each at the time it was sent, in the order they were sent.
    pub fn by_send_time(&self) -> Vec<(Instant, bool)> {
        self.log
            .lock()
            .map(|l| {
                l.iter()
                    .filter_map(|&(sent, ok)| Some((sent, ok?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether every request sent before `t` has ended.
    pub fn settled_before(&self, t: Instant) -> bool {
        self.log.lock().is_ok_and(|l| {
            l.iter()
                .take_while(|(sent, _)| *sent < t)
                .all(|(_, ok)| ok.is_some())
        })
    }
}
