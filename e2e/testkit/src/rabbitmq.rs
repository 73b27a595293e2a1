//! A real RabbitMQ broker for one test: the machine's `rabbitmq-server` (Debian's package,
//! installed by `e2e/install-tools.sh`) run as a child process on a free loopback port, with its
//! own node name, data and log directories, so tests run side by side and leave nothing behind.
//!
//! The broker is started by kubesim's entrypoint of the `rabbitmq:3` image
//! (`e2e/kubesim/images/rabbitmq.sh`), the one place that spells its environment, in the
//! broker's own directory. It can be stopped (SIGTERM, as a pod is stopped) and started again on
//! the same port and directory, so durable queues and persistent messages survive as they do
//! across a real broker restart; or killed (SIGKILL).
//!
//! A test that never stops its broker takes [`Broker::shared`] instead: a virtual host of its
//! own on the one broker the test command starts for the run (see [`SHARED_DIR_ENV`]), which
//! saves a broker start (an Erlang VM booting, seconds of CPU) per test. Virtual hosts share
//! nothing a test sees: queues, exchanges and their messages are per host.

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

/// Environment variable naming the directory of the run's shared broker, set by the test
/// command. The entrypoint ran there; the directory holds `address` (the broker's AMQP
/// address), `vhosts` (the virtual hosts made for the tests, one per line; user `guest` may use
/// each) and `leases/`, where a test claims a virtual host by creating a file of its name.
pub const SHARED_DIR_ENV: &str = "FLOTILLA_TEST_RABBITMQ_DIR";

/// The entrypoint that runs the broker, relative to the repository root.
const ENTRYPOINT: &str = "e2e/kubesim/images/rabbitmq.sh";

/// Where a broker lives: a directory of its own, or the run's shared broker's.
enum Home {
    Own(tempfile::TempDir),
    Shared(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Self::Own(dir) => dir.path(),
            Self::Shared(dir) => dir,
        }
    }
}

/// A running (or stopped) broker owned by one test, or a virtual host of the run's shared
/// broker. Dropping an own broker kills it.
pub struct Broker {
    port: u16,
    home: Home,
    /// The virtual host the test uses: `/` on an own broker.
    vhost: String,
    process: Option<Process>,
}

impl Broker {
    /// Starts a broker with an empty data directory and waits until it accepts AMQP
    /// connections.
    pub async fn start() -> Result<Self> {
        let mut broker = Self {
            port: free_port()?,
            home: Home::Own(tempfile::tempdir().context("creating the broker's directory")?),
            vhost: "/".to_owned(),
            process: None,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// A virtual host of its own on the run's shared broker, for a test that never stops,
    /// kills or restarts its broker; a broker of its own ([`Broker::start`]) when the test
    /// command started none (a test run on its own) or every virtual host is taken.
    pub async fn shared() -> Result<Self> {
        let Some(dir) = std::env::var_os(SHARED_DIR_ENV).map(PathBuf::from) else {
            return Self::start().await;
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {name} of the shared broker in {dir:?}"))
        };
        let addr: SocketAddr = read("address")?
            .trim()
            .parse()
            .context("the shared broker's address")?;
        for vhost in read("vhosts")?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let lease = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join("leases").join(vhost));
            match lease {
                Ok(_) => {
                    return Ok(Self {
                        port: addr.port(),
                        home: Home::Shared(dir),
                        vhost: vhost.to_owned(),
                        process: None,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("claiming a virtual host of the shared broker"),
            }
        }
        Self::start().await
    }

    /// The AMQP URL of the test's virtual host (user `guest`, the entrypoint's default).
    pub fn url(&self) -> String {
        let vhost = self.vhost.replace('/', "%2f");
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the broker process runs.
    pub fn running(&self) -> bool {
        self.process.is_some() || self.is_shared()
    }

    /// Whether this is a virtual host of the run's shared broker.
    pub fn is_shared(&self) -> bool {
        matches!(self.home, Home::Shared(_))
    }

    /// Fails for a shared broker: other tests use it.
    fn own(&self, what: &str) -> Result<()> {
        if self.is_shared() {
            bail!("a shared broker is not one test's to {what}: take Broker::start instead");
        }
        Ok(())
    }

    /// Starts the broker again after [`Broker::stop`] or [`Broker::kill`], on the same port and
    /// data directory, and waits until it accepts connections. Durable queues and persistent
    /// messages are back.
    pub async fn start_again(&mut self) -> Result<()> {
        self.own("start")?;
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
            .current_dir(self.home.path())
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
        self.own("stop")?;
        let process = self.process.take().context("the broker is not running")?;
        process.terminate().await
    }

    /// Kills the broker with SIGKILL: no goodbye to its clients.
    pub async fn kill(&mut self) -> Result<()> {
        self.own("kill")?;
        let process = self.process.take().context("the broker is not running")?;
        process.kill().await
    }

    /// Runs `rabbitmqctl` against this broker (e.g. `status`) and returns its output; fails
    /// with its output when it fails. Commands about queues take the test's virtual host:
    /// [`Broker::list_queues`].
    pub async fn ctl(&self, args: &[&str]) -> Result<String> {
        let output = tokio::process::Command::new(entrypoint())
            .args(["ctl", "--quiet"])
            .args(args)
            .env("LISTEN_ADDR", self.addr().to_string())
            .current_dir(self.home.path())
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

    /// `rabbitmqctl list_queues` of the test's virtual host with `columns` (e.g. `name`,
    /// `durable`), one queue per line, tab-separated.
    pub async fn list_queues(&self, columns: &[&str]) -> Result<String> {
        let mut args = vec!["list_queues", "-p", &self.vhost];
        args.extend_from_slice(columns);
        self.ctl(&args).await
    }

    /// Messages in `queue` (ready and unacknowledged), as `rabbitmqctl list_queues` tells.
    pub async fn queue_len(&self, queue: &str) -> Result<u64> {
        let listed = self.list_queues(&["name", "messages"]).await?;
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
        self.home.path()
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

    /// Declares `queue` on a connection to `broker` and publishes one message to it, with
    /// publisher confirms; the connection closes on return.
    async fn declare_and_publish(
        broker: &Broker,
        queue: &str,
        declare: QueueDeclareOptions,
        properties: BasicProperties,
    ) -> Result<()> {
        let (_conn, channel) = connect(broker).await?;
        channel
            .queue_declare(queue.into(), declare, FieldTable::default())
            .await?;
        channel.confirm_select(Default::default()).await?;
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"hello",
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn shared_brokers_keep_each_tests_queues_apart() -> Result<()> {
        // Two tests on the run's shared broker each have a virtual host of their own: a queue
        // and its message in one are not seen in the other, and neither may stop the broker.
        // (Run without the test command, each is a broker of its own and the same holds.)
        let mut first = Broker::shared().await?;
        let second = Broker::shared().await?;
        assert_ne!(first.url(), second.url());
        declare_and_publish(
            &first,
            "mine",
            QueueDeclareOptions::default(),
            BasicProperties::default(),
        )
        .await?;
        assert_eq!(first.queue_len("mine").await?, 1);
        let others = second.list_queues(&["name"]).await?;
        assert!(!others.contains("mine"), "{others}");
        if first.is_shared() {
            let refused = first.stop().await.expect_err("a shared broker was stopped");
            assert!(refused.to_string().contains("shared"), "{refused}");
            assert!(first.running());
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_persistent_message_survives_a_broker_restart() -> Result<()> {
        // A durable queue and a persistent message are back after SIGTERM and a start in the
        // same directory, and rabbitmqctl reaches the broker's node.
        let mut broker = Broker::start().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let persistent = BasicProperties::default().with_delivery_mode(2);
        declare_and_publish(&broker, "kept", durable, persistent).await?;
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
