//! The `kubectl-flotilla` executable: kubectl runs it as `kubectl flotilla ...` when it is on the
//! PATH. Parses the command line, runs the command, prints one line on error.

use clap::Parser;
use kubectl_flotilla::cli::{run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
