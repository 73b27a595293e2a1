//! The path from the source to images a real cluster can pull, checked without a container engine:
//! `images/build.sh --dry-run` prints exactly one build per image (and one push each with
//! `--push`) under the registry given, refuses bad input before printing anything, and needs no
//! engine to do so; both charts point every Flotilla image at the registry from one value each
//! (`image.registry`, `imageRegistry`), naming exactly the images the script builds; the
//! README's real-cluster walkthrough does the same with its own lines; and `e2e/kind/run.sh`
//! builds its images with the script.
//!
//! The chart checks need `helm` (`e2e/install-tools.sh`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use flotilla_e2e::{chart, tools};
use serde_json::Value;

/// The script under test, relative to the repository root.
const SCRIPT: &str = "images/build.sh";

/// A registry with a port and a path, the shape a team's registry usually has.
const REGISTRY: &str = "registry.example.com:5000/team";

/// Every image, its Dockerfile and its build target there (the sample services share one
/// Dockerfile, a target each), in build order.
const IMAGES: &[(&str, &str, Option<&str>)] = &[
    ("flotilla/operator", "operator/Dockerfile", None),
    ("flotilla/users", "services/Dockerfile", Some("users")),
    ("flotilla/auth", "services/Dockerfile", Some("auth")),
    ("flotilla/orders", "services/Dockerfile", Some("orders")),
    ("flotilla/shipping", "services/Dockerfile", Some("shipping")),
];

/// One command of the script's dry run.
#[derive(Debug, PartialEq)]
enum Step {
    /// `[env DOCKER_BUILDKIT=1] <engine> build --file <dockerfile> [--ignorefile <file>]
    /// [--target <stage>] --tag <tag> <context>`.
    Build {
        engine: String,
        buildkit: bool,
        dockerfile: String,
        ignorefile: Option<String>,
        target: Option<String>,
        tag: String,
        context: String,
    },
    /// `<engine> push <image>`.
    Push { engine: String, image: String },
}

/// Parses one dry-run line; anything but the two command shapes is an error.
fn parse_step(line: &str) -> Result<Step> {
    let mut words: Vec<&str> = line.split(' ').collect();
    let buildkit = words.starts_with(&["env", "DOCKER_BUILDKIT=1"]);
    if buildkit {
        words.drain(..2);
    }
    match words.as_slice() {
        [engine, "build", "--file", dockerfile, rest @ .., tag_flag, tag, context]
            if *tag_flag == "--tag" =>
        {
            let (ignorefile, target) = match rest {
                [] => (None, None),
                ["--ignorefile", i] => (Some(*i), None),
                ["--target", t] => (None, Some(*t)),
                ["--ignorefile", i, "--target", t] => (Some(*i), Some(*t)),
                _ => bail!("unexpected build options in {line:?}"),
            };
            Ok(Step::Build {
                engine: (*engine).to_owned(),
                buildkit,
                dockerfile: (*dockerfile).to_owned(),
                ignorefile: ignorefile.map(str::to_owned),
                target: target.map(str::to_owned),
                tag: (*tag).to_owned(),
                context: (*context).to_owned(),
            })
        }
        [engine, "push", image] if !buildkit => Ok(Step::Push {
            engine: (*engine).to_owned(),
            image: (*image).to_owned(),
        }),
        _ => bail!("not a build or push command: {line:?}"),
    }
}

/// The charts' appVersion, which the script tags with.
fn app_version() -> Result<String> {
    let text = std::fs::read_to_string(chart::chart_dir("flotilla").join("Chart.yaml"))?;
    let chart: Value = serde_norway::from_str(&text)?;
    chart
        .get("appVersion")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("Chart.yaml has no appVersion")
}

/// Runs the script with `args` (and `PATH` replaced when given), whatever its exit status.
fn script(args: &[&str], path: Option<&Path>) -> Result<Output> {
    let bash = tools::find("bash")?;
    let mut cmd = Command::new(bash);
    cmd.arg(tools::repo_root().join(SCRIPT)).args(args);
    if let Some(path) = path {
        cmd.env_clear().env("PATH", path);
    }
    cmd.output().with_context(|| format!("running {SCRIPT}"))
}

/// The script's stdout, one entry a line, when it succeeds.
fn script_lines(args: &[&str], path: Option<&Path>) -> Result<Vec<String>> {
    let out = script(args, path)?;
    ensure!(
        out.status.success(),
        "{SCRIPT} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn dry_run(args: &[&str], path: Option<&Path>) -> Result<Vec<Step>> {
    script_lines(args, path)?
        .iter()
        .map(|line| parse_step(line))
        .collect()
}

/// The builds the script must print for `engine`, tagged under `prefix` ("" or "<registry>/"):
/// Podman is handed each `<Dockerfile>.dockerignore` that exists (BuildKit finds it itself).
fn expected_builds(engine: &str, prefix: &str, version: &str) -> Vec<Step> {
    IMAGES
        .iter()
        .map(|(name, dockerfile, target)| {
            let ignore = format!("{dockerfile}.dockerignore");
            let ignorefile = (engine == "podman" && tools::repo_root().join(&ignore).is_file())
                .then_some(ignore);
            Step::Build {
                engine: engine.to_owned(),
                buildkit: engine == "docker",
                dockerfile: (*dockerfile).to_owned(),
                ignorefile,
                target: target.map(str::to_owned),
                tag: format!("{prefix}{name}:{version}"),
                context: ".".to_owned(),
            }
        })
        .collect()
}

#[test]
fn dry_run_prints_one_build_and_one_push_per_image_under_the_registry() -> Result<()> {
    // With --push and a registry the script builds every image under it, then pushes each,
    // and prints exactly those commands, for either engine.
    let version = app_version()?;
    let prefix = format!("{REGISTRY}/");
    for engine in ["docker", "podman"] {
        let steps = dry_run(
            &[
                "--dry-run",
                "--push",
                "--registry",
                REGISTRY,
                "--engine",
                engine,
            ],
            None,
        )?;
        let mut want = expected_builds(engine, &prefix, &version);
        want.extend(IMAGES.iter().map(|(name, ..)| Step::Push {
            engine: engine.to_owned(),
            image: format!("{prefix}{name}:{version}"),
        }));
        ensure!(steps == want, "{engine}: got {steps:#?}\nwant {want:#?}");
    }

    // Without --push nothing is pushed; a trailing slash on the registry is the same registry.
    let steps = dry_run(
        &[
            "--dry-run",
            &format!("--registry={REGISTRY}/"),
            "--engine=podman",
        ],
        None,
    )?;
    let want = expected_builds("podman", &prefix, &version);
    ensure!(steps == want, "got {steps:#?}\nwant {want:#?}");
    Ok(())
}

#[test]
fn every_dockerfile_and_target_the_script_builds_exists() -> Result<()> {
    // The Dockerfiles the builds name are in the repository, with a stage of each target's
    // name that runs that service's binary.
    for (name, dockerfile, target) in IMAGES {
        let path = tools::repo_root().join(dockerfile);
        ensure!(path.is_file(), "{dockerfile} ({name}) is missing");
        let Some(target) = target else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let stage = text
            .split("\nFROM ")
            .find(|s| {
                s.lines()
                    .next()
                    .is_some_and(|l| l.ends_with(&format!(" AS {target}")))
            })
            .with_context(|| format!("{dockerfile} has no stage {target} ({name})"))?;
        ensure!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")),
            "{dockerfile}'s stage {target} does not run /usr/local/bin/{target}:\n{stage}"
        );
    }
    Ok(())
}

#[test]
fn dry_run_needs_no_container_engine() -> Result<()> {
    // With no docker or podman anywhere on PATH, a dry run still prints the (docker) builds,
    // and a real run stops with a reason instead of a "command not found" halfway through.
    let empty = tempfile::tempdir()?;
    let steps = dry_run(&["--dry-run"], Some(empty.path()))?;
    let want = expected_builds("docker", "", &app_version()?);
    ensure!(steps == want, "got {steps:#?}\nwant {want:#?}");

    let out = script(&[], Some(empty.path()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "{}: {stderr}", out.status);
    ensure!(out.stdout.is_empty(), "printed commands without an engine");
    ensure!(
        stderr.trim() == "images/build.sh: no container engine: install Docker or Podman (or pass --dry-run to only print the commands)",
        "{stderr}"
    );
    Ok(())
}

#[test]
fn bad_input_is_refused_before_anything_runs() -> Result<()> {
    // Each mistake exits 2 with one line naming it, and prints no command.
    let cases: &[(&[&str], &str)] = &[
        (
            &["--dry-run", "--push"],
            "--push needs --registry: the registry to push to, e.g. --registry registry.example.com/team",
        ),
        (
            &["--dry-run", "--engine", "nerdctl"],
            "unknown --engine 'nerdctl': docker or podman",
        ),
        (
            &["--dry-run", "--registry", "https://registry.example.com"],
            "--registry 'https://registry.example.com' is not a lower-case host[:port][/path] such as registry.example.com/team (no tag, no scheme)",
        ),
        (
            &["--dry-run", "--registry", "registry.example.com/team:1.0"],
            "--registry 'registry.example.com/team:1.0' is not a lower-case host[:port][/path] such as registry.example.com/team (no tag, no scheme)",
        ),
        (
            &["--dry-run", "--registry"],
            "--registry needs a value, e.g. --registry registry.example.com/team",
        ),
        (
            &["--dry-run", "--regsitry", "r.example.com"],
            "unknown argument '--regsitry' (see --help)",
        ),
    ];
    for (args, reason) in cases {
        let out = script(args, None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{args:?}: {} {stderr}",
            out.status
        );
        ensure!(out.stdout.is_empty(), "{args:?} printed commands");
        ensure!(
            stderr.lines().collect::<Vec<_>>() == [format!("images/build.sh: {reason}")],
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

/// Every `image` string anywhere in `docs`: container images and MicroServices' `spec.image`.
fn images_in(docs: &[Value], out: &mut BTreeSet<String>) {
    fn walk(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("image", Value::String(image)) => {
                            out.insert(image.clone());
                        }
                        _ => walk(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    docs.iter().for_each(|doc| walk(doc, out));
}

/// The images both charts render (every sample service on, `helm test` objects included) with
/// the operator chart's `operator_sets` and the samples chart's `samples_sets`.
fn chart_images(operator_sets: &[&str], samples_sets: &[&str]) -> Result<BTreeSet<String>> {
    let mut images = BTreeSet::new();
    let operator = chart::render_docs("flotilla", "flotilla", "flotilla-system", operator_sets)?;
    images_in(&operator, &mut images);
    let mut sets = vec!["orders.enabled=true", "shipping.enabled=true"];
    sets.extend_from_slice(samples_sets);
    let samples = chart::render_docs("flotilla-samples", "samples", "shop", &sets)?;
    images_in(&samples, &mut images);
    Ok(images)
}

/// The `helm test` pod's kubectl image: upstream's, not built here, so no registry value moves it.
fn kubectl_test_image() -> Result<String> {
    let text = std::fs::read_to_string(chart::chart_dir("flotilla").join("values.yaml"))?;
    let values: Value = serde_norway::from_str(&text)?;
    let field = |name: &str| {
        values
            .pointer(&format!("/test/image/{name}"))
            .and_then(Value::as_str)
            .with_context(|| format!("values.yaml has no test.image.{name}"))
    };
    Ok(format!("{}:{}", field("repository")?, field("tag")?))
}

#[test]
fn one_registry_value_per_chart_points_every_image_at_the_registry() -> Result<()> {
    // With `image.registry` and `imageRegistry` set to the registry, every Flotilla image both
    // charts render starts with it, and they are exactly the images the script pushes there.
    let kubectl = kubectl_test_image()?;
    let mut images = chart_images(
        &[&format!("image.registry={REGISTRY}")],
        &[&format!("imageRegistry={REGISTRY}")],
    )?;
    ensure!(
        images.remove(&kubectl),
        "the helm test image {kubectl} is not rendered"
    );
    let prefix = format!("{REGISTRY}/");
    let outside: Vec<&String> = images.iter().filter(|i| !i.starts_with(&prefix)).collect();
    ensure!(outside.is_empty(), "images outside {REGISTRY}: {outside:?}");
    let pushed: BTreeSet<String> = script_lines(&["--list", "--registry", REGISTRY], None)?
        .into_iter()
        .collect();
    ensure!(
        images == pushed,
        "charts render {images:?}, the script pushes {pushed:?}"
    );
    Ok(())
}

#[test]
fn by_default_the_charts_install_the_images_the_script_tags_without_a_registry() -> Result<()> {
    // Nothing changes for an install without the registry values, and what the script builds
    // without --registry (what kind loads) is exactly what the charts then run.
    let mut images = chart_images(&[], &[])?;
    ensure!(images.remove(&kubectl_test_image()?), "no helm test image");
    let built: BTreeSet<String> = script_lines(&["--list"], None)?.into_iter().collect();
    ensure!(
        images == built,
        "charts render {images:?}, the script builds {built:?}"
    );
    Ok(())
}

#[test]
fn a_registry_with_a_scheme_is_refused_by_both_charts() -> Result<()> {
    // A URL where a registry belongs fails `helm install` with the key named, not ImagePullBackOff.
    let helm = tools::find("helm")?;
    for (chart_name, key) in [
        ("flotilla", "image.registry"),
        ("flotilla-samples", "imageRegistry"),
    ] {
        let set = format!("{key}=https://registry.example.com");
        let args = chart::template_args(chart_name, "r", "ns", &[&set]);
        let out = tools::run(&helm, args, None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{chart_name} accepted {set}");
        let path = format!("/{}", key.replace('.', "/"));
        ensure!(stderr.contains(&path), "{chart_name}: {stderr}");
    }
    Ok(())
}

#[test]
fn kind_run_builds_its_images_with_the_script() -> Result<()> {
    // e2e/kind/run.sh builds through images/build.sh (no build command of its own) and loads
    // into kind exactly the images the script lists.
    let run = std::fs::read_to_string(tools::repo_root().join("e2e/kind/run.sh"))?;
    let commands: Vec<Vec<&str>> = run
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let script = format!("\"$repo/{SCRIPT}\"");
    ensure!(
        commands
            .iter()
            .any(|c| c.as_slice() == [script.as_str(), "--engine", "docker"]),
        "run.sh does not build with `{script} --engine docker`"
    );
    ensure!(
        run.contains(&format!("$({script} --list)")),
        "run.sh does not take the image names from `{script} --list`"
    );
    for words in &commands {
        ensure!(
            !words
                .windows(2)
                .any(|w| w[1] == "build" && ["docker", "podman", "buildah"].contains(&w[0])),
            "run.sh builds an image itself: {}",
            words.join(" ")
        );
    }
    ensure!(
        commands.iter().any(|c| c.starts_with(&[
            "kind",
            "load",
            "docker-image",
            "--name",
            "\"$cluster\"",
            "\"$image\""
        ])),
        "run.sh does not load the images into kind"
    );
    Ok(())
}

#[test]
fn dry_run_lines_parse_only_as_builds_and_pushes() -> Result<()> {
    // The parser the checks above rely on rejects other shapes instead of reading them loosely.
    ensure!(parse_step("docker tag a b").is_err());
    ensure!(parse_step("env DOCKER_BUILDKIT=1 docker push a").is_err());
    ensure!(parse_step("podman build --file F --tag T . extra").is_err());
    ensure!(
        parse_step("podman push r/x:1")?
            == Step::Push {
                engine: "podman".into(),
                image: "r/x:1".into()
            }
    );
    Ok(())
}

/// The `$ ` lines of the README's "On a real cluster" section.
fn readme_real_cluster_lines() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(tools::repo_root().join("README.md"))?;
    let section = readme
        .split("\n### On a real cluster")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .context("README.md has no \"On a real cluster\" section")?;
    Ok(section
        .lines()
        .filter_map(|line| line.strip_prefix("$ "))
        .map(str::to_owned)
        .collect())
}

#[test]
fn readme_real_cluster_walkthrough_uses_one_registry_for_every_image() -> Result<()> {
    // The README's dry run, run as written, prints the builds and pushes under $REGISTRY, and its
    // two `helm install` lines, rendered with their `--set` values, run only images from there.
    let lines = readme_real_cluster_lines()?;
    let registry_line = lines
        .iter()
        .find_map(|l| l.strip_prefix("REGISTRY="))
        .context("the README sets no REGISTRY")?;
    let registry = registry_line.trim();

    let dry_run_line = lines
        .iter()
        .find(|l| l.starts_with("images/build.sh ") && l.contains("--dry-run"))
        .context("the README has no images/build.sh dry run")?;
    let bash = tools::find("bash")?;
    let out = Command::new(bash)
        .args(["-c", dry_run_line])
        .env("REGISTRY", registry)
        .current_dir(tools::repo_root())
        .output()?;
    ensure!(
        out.status.success(),
        "{dry_run_line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Step> = String::from_utf8(out.stdout)?
        .lines()
        .map(parse_step)
        .collect::<Result<_>>()?;
    let builds = steps
        .iter()
        .filter(|s| matches!(s, Step::Build { .. }))
        .count();
    let pushes: BTreeSet<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Push { image, .. } => Some(image.clone()),
            Step::Build { .. } => None,
        })
        .collect();
    ensure!(
        builds == IMAGES.len() && pushes.len() == IMAGES.len(),
        "{dry_run_line} printed {steps:#?}"
    );

    let mut images = BTreeSet::new();
    let mut charts = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("helm install ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let chart_name = words
            .get(3)
            .and_then(|c| c.strip_prefix("charts/"))
            .with_context(|| format!("no chart in {line:?}"))?;
        let sets: Vec<String> = words
            .windows(2)
            .filter(|w| w[0] == "--set")
            .map(|w| w[1].replace("$REGISTRY", registry))
            .collect();
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let mut all_sets = sets.clone();
        if chart_name == "flotilla-samples" {
            all_sets.push("orders.enabled=true");
            all_sets.push("shipping.enabled=true");
        }
        images_in(
            &chart::render_docs(chart_name, words[2], "shop", &all_sets)?,
            &mut images,
        );
        charts.push(chart_name.to_owned());
    }
    ensure!(
        charts == ["flotilla", "flotilla-samples"],
        "the README installs {charts:?}"
    );
    ensure!(images.remove(&kubectl_test_image()?), "no helm test image");
    ensure!(
        images == pushes,
        "the README's installs run {images:?}, its build pushes {pushes:?}"
    );
    Ok(())
}
