//! Finding and running the external tools the chart checks use: `helm`, `kubectl`,
//! `kubernetes-validate` and the Python venv that holds `jsonschema`.
//!
//! Tools are looked up in `$FLOTILLA_TOOLS_DIR`, then in `<repo>/.tools` (where
//! `e2e/install-tools.sh` puts them), then on `PATH`. A missing tool is an error that says how to
//! install it: the checks never skip silently.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

pub use flotilla_testkit::paths::repo_root;

/// Directories searched before `PATH`, in order.
fn tool_dirs() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("FLOTILLA_TOOLS_DIR") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(repo_root().join(".tools"));
    let mut dirs: Vec<PathBuf> = roots
        .iter()
        .flat_map(|root| [root.join("bin"), root.join("venv").join("bin")])
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Path of the executable `name`, or an error telling how to install it.
pub fn find(name: &str) -> Result<PathBuf> {
    tool_dirs()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .with_context(|| {
            format!(
                "`{name}` not found in $FLOTILLA_TOOLS_DIR, <repo>/.tools or on PATH: \
                 run e2e/install-tools.sh (it installs helm, the Python venv with \
                 kubernetes-validate and jsonschema, promtool and prometheus)"
            )
        })
}

/// The Python interpreter of the venv that holds `kubernetes-validate` and `jsonschema`.
pub fn venv_python() -> Result<PathBuf> {
    let validate = find("kubernetes-validate")?;
    let python = validate.with_file_name("python");
    if !is_executable(&python) {
        bail!(
            "no python next to {} (expected a venv): run e2e/install-tools.sh",
            validate.display()
        );
    }
    Ok(python)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `program args...` with `stdin` fed in, and returns its output whatever the exit status.
pub fn run<I, S>(program: &Path, args: I, stdin: Option<&[u8]>) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    if let Some(input) = stdin {
        // Dropping the handle after the write closes the pipe, so the child sees EOF.
        let mut pipe = child.stdin.take().context("child stdin was not piped")?;
        pipe.write_all(input)
            .with_context(|| format!("writing stdin of {}", program.display()))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", program.display()))
}

/// Like [`run`], but a non-zero exit is an error carrying the command's stdout and stderr.
pub fn run_ok<I, S>(program: &Path, args: I, stdin: Option<&[u8]>) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let output = run(program, args, stdin)?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            program.display(),
            shown.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("tool output is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_error_says_how_to_install() {
        // A tool that is not installed must fail with the install hint, never be skipped.
        let err = find("flotilla-no-such-tool")
            .err()
            .map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|msg| msg.contains("e2e/install-tools.sh")));
    }

    #[test]
    fn run_ok_reports_failure_with_output() {
        // A failing command is an error that carries what the command printed.
        let sh = find("sh").expect("sh is on PATH");
        let err = run_ok(&sh, ["-c", "echo out; echo err >&2; exit 3"], None)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("out") && err.contains("err"), "{err}");
    }

    #[test]
    fn run_feeds_stdin() {
        // Input handed to `run` reaches the child's stdin.
        let cat = find("cat").expect("cat is on PATH");
        let out = run_ok(&cat, Vec::<String>::new(), Some(b"hello")).expect("cat runs");
        assert_eq!(out, "hello");
    }
}
