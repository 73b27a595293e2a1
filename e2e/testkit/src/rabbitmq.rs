//! A real RabbitMQ broker for one test: the machine's `rabbitmq-server` (Debian's package,
//! installed by `e2e/install-tools.sh`) run as a child process on a free loopback port, with its
//! own node name, data and log directories, so tests run side by side and leave nothing behind.
//!
//! The broker is started by kubesim's entrypoint of the `rabbitmq:3` image
//! (`e2e/kubesim/images/rabbitmq.sh`), the one place that spells its environment, in the
//! broker's own directory. It can be stopped (SIGTERM, as a pod is stopped) and started again on
//! the same port and directory, so durable queues and persistent messages survive as they do
//! across a real broker restart; or killed (SIGKILL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::operator::free_port;
use crate::paths::repo_root;
use crate::process::{self, Builder, Process};
use crate::wait;

/// Environment variable naming the `rabbitmq-server` to run instead of the machine's (the
/// entrypoint reads it).
pub const SERVER_ENV: &str = "FLOTILLA_RABBITMQ_SERVER";

/// The entrypoint that runs the broker, relative to the repository root.
const ENTRYPOINT: &str = "e2e/kubesim/images/rabbitmq.sh";

/// A running (or stopped) broker owned by one test. Dropping it kills the broker.
pub struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Broker {
    /// Starts a broker with an empty data directory and waits until it accepts AMQP
    /// connections.
    pub async fn start() -> Result<Self> {
        let mut broker = Self {
            port: free_port()?,
            dir: tempfile::tempdir().context("creating the broker's directory")?,
            process: None,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// The AMQP URL of the default virtual host (user `guest`, the entrypoint's default).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the broker process runs.
    pub fn running(&self) -> bool {
        self.process.is_some()
    }

    /// Starts the broker again after [`Broker::stop`] or [`Broker::kill`], on the same port and
    /// data directory, and waits until it accepts connections. Durable queues and persistent
    /// messages are back.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("the broker is already running");
        }
        let port = self.port;
        let ready = process::check(move |_| async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        });
        let process = Builder::new("rabbitmq", entrypoint())
            .current_dir(self.dir.path())
            .env("LISTEN_ADDR", self.addr().to_string())
            // The user is the entrypoint's default, the one `url` names.
            .env_remove("RABBITMQ_DEFAULT_USER")
            .env_remove("RABBITMQ_DEFAULT_PASS")
            .ready(ready)
            .start()
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the broker with SIGTERM (it closes client connections and flushes its queues)
    /// and waits for it to exit.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let process = self.process.take().context("the broker is not running")?;
        process.terminate().await
    }

    /// Kills the broker with SIGKILL: no goodbye to its clients.
    pub async fn kill(&mut self) -> Result<()> {
        let process = self.process.take().context("the broker is not running")?;
        process.kill().await
    }

    /// Runs `rabbitmqctl` against this broker (e.g. `list_queues name messages`) and returns
    /// its output; fails with its output when it fails.
    pub async fn ctl(&self, args: &[&str]) -> Result<String> {
        let output = tokio::process::Command::new(entrypoint())
            .args(["ctl", "--quiet"])
            .args(args)
            .env("LISTEN_ADDR", self.addr().to_string())
            .current_dir(self.dir.path())
            .output()
            .await
            .with_context(|| format!("running {ENTRYPOINT} ctl"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "rabbitmqctl {} failed ({}): {text}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(text)
    }

    /// Messages in `queue` (ready and unacknowledged), as `rabbitmqctl list_queues` tells.
    pub async fn queue_len(&self, queue: &str) -> Result<u64> {
        let listed = self.ctl(&["list_queues", "name", "messages"]).await?;
        listed
            .lines()
            .find_map(|l| {
                let (name, n) = l.split_once('\t')?;
                (name == queue).then(|| n.trim().parse().ok())?
            })
            .with_context(|| format!("no queue {queue} in {listed}"))
    }

    /// Waits up to `timeout` until `queue` holds exactly `n` messages.
    pub async fn wait_queue_len(&self, queue: &str, n: u64, timeout: Duration) -> Result<()> {
        wait::poll(
            &format!("{queue} to hold {n} messages"),
            timeout,
            || async move { Ok((self.queue_len(queue).await? == n).then_some(())) },
        )
        .await
    }

    /// The broker's directory (its data, logs and configuration are in `rabbitmq/` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The entrypoint script in this checkout.
fn entrypoint() -> PathBuf {
    repo_root().join(ENTRYPOINT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::connect;
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::BasicProperties;

    #[tokio::test]
    async fn a_persistent_message_survives_a_broker_restart() -> Result<()> {
        // A durable queue and a persistent message are back after SIGTERM and a start in the
        // same directory, and rabbitmqctl reaches the broker's node.
        let mut broker = Broker::start().await?;
        let (_conn, channel) = connect(&broker).await?;
        channel
            .queue_declare(
                "kept".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel.confirm_select(Default::default()).await?;
        channel
            .basic_publish(
                "".into(),
                "kept".into(),
                BasicPublishOptions::default(),
                b"hello",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        assert_eq!(broker.queue_len("kept").await?, 1);

        broker.stop().await?;
        assert!(tokio::net::TcpStream::connect(broker.addr()).await.is_err());
        broker.start_again().await?;

        let (_conn, channel) = connect(&broker).await?;
        let mut consumer = channel
            .basic_consume(
                "kept".into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await?
            .context("consumer ended")??;
        assert_eq!(delivery.data, b"hello");
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}
