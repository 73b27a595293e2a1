//! A real RabbitMQ broker for one test: the machine's `rabbitmq-server` (Debian's package,
//! installed by `e2e/install-tools.sh`) run as a child process on free loopback ports, with its
//! own node name, data and log directories, so tests run side by side and leave nothing behind.
//!
//! The broker can be stopped (SIGTERM, as a pod is stopped) and started again on the same port
//! and data directory, so durable queues and persistent messages survive as they do across a
//! real broker restart; or killed (SIGKILL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::{bail, Context, Result};

use crate::operator::free_port;
use crate::process::{self, Builder, Process};

/// Environment variable naming the `rabbitmq-server` to run instead of the machine's.
pub const SERVER_ENV: &str = "FLOTILLA_RABBITMQ_SERVER";

/// Where Debian's package puts the server script that runs as the calling user (the one in
/// `/usr/sbin` switches to the `rabbitmq` user, which cannot write a test's directories).
const DEBIAN_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A running (or stopped) broker owned by one test. Dropping it kills the broker.
pub struct Broker {
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Broker {
    /// Starts a broker with an empty data directory and waits until it accepts AMQP
    /// connections.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("creating the broker's directory")?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.path().join("rabbitmq.conf"), "log.console = true\n")?;
        let mut broker = Self {
            port: free_port()?,
            dist_port: free_port()?,
            dir,
            process: None,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// The AMQP URL of the default virtual host (user `guest`, allowed from loopback).
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
        let dir = self.dir.path();
        let port = self.port;
        let ready = process::check(move |_| async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        });
        let process = Builder::new("rabbitmq", server_program()?)
            .current_dir(dir)
            .envs(self.env())
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
        let program = server_program()?
            .parent()
            .map(|dir| dir.join("rabbitmqctl"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("rabbitmqctl"));
        let output = tokio::process::Command::new(&program)
            .args(["--quiet"])
            .args(args)
            .envs(self.env())
            .current_dir(self.dir.path())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
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

    /// The broker's environment: its own node name, ports and directories.
    fn env(&self) -> Vec<(String, String)> {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        [
            (
                "RABBITMQ_NODENAME",
                format!("flotilla-{}@localhost", self.port),
            ),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
            // Run the Erlang VM in place of the script (as under systemd): the child is the
            // broker itself, so SIGTERM stops it gracefully and SIGKILL really kills it, instead
            // of orphaning a VM behind a killed wrapper.
            ("RUNNING_UNDER_SYSTEMD", "true".to_owned()),
            // The Erlang cookie lives in $HOME.
            ("HOME", dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The broker's directory (data, logs, configuration).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The `rabbitmq-server` to run: [`SERVER_ENV`], else Debian's, else the one on `PATH`.
fn server_program() -> Result<PathBuf> {
    if let Some(program) = std::env::var_os(SERVER_ENV) {
        return Ok(PathBuf::from(program));
    }
    if Path::new(DEBIAN_SERVER).exists() {
        return Ok(PathBuf::from(DEBIAN_SERVER));
    }
    which("rabbitmq-server").context(
        "rabbitmq-server not found: install it with e2e/install-tools.sh (Debian package \
         rabbitmq-server), or name it in FLOTILLA_RABBITMQ_SERVER",
    )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    #[tokio::test]
    async fn a_persistent_message_survives_a_broker_restart() -> Result<()> {
        let mut broker = Broker::start().await?;
        let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
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
        let listed = broker.ctl(&["list_queues", "name", "messages"]).await?;
        assert!(listed.contains("kept\t1"), "{listed}");

        broker.stop().await?;
        assert!(tokio::net::TcpStream::connect(broker.addr()).await.is_err());
        broker.start_again().await?;

        let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let mut consumer = channel
            .basic_consume(
                "kept".into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.next())
            .await?
            .context("consumer ended")??;
        assert_eq!(delivery.data, b"hello");
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}
