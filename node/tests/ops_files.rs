//! The operator files under `ops/` stay true to the code: the Prometheus alert rules pass
//! `promtool check rules`, and every metric the rules and the Grafana dashboard name is one a
//! real `shoal agent` exports on `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use common::Agent;
use tracing::info;

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

const RULES: &str = "ops/prometheus/shoal.rules.yml";
const DASHBOARD: &str = "ops/grafana/shoal.json";

/// Every `shoal_…` metric name in `text` (a PromQL expression or a whole rules file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shoal_") {
        let starts_a_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_name_char(c));
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name_char(c)).unwrap_or(tail.len());
        if starts_a_word {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The series names a metrics page declares (`# TYPE` lines), with a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut fields = line.split_whitespace();
        if (fields.next(), fields.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match inner {
                    serde_json::Value::String(expr) if key == "expr" => out.push(expr.clone()),
                    _ => dashboard_exprs(inner, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| dashboard_exprs(item, out)),
        _ => {}
    }
}

#[test]
fn metric_names_are_found_as_whole_words() {
    let names = metric_names(
        "max(delta(shoal_raft_term[15m])) > 3 and not_shoal_x and shoal_nodes{state=\"down\"}",
    );
    let expected: BTreeSet<String> = ["shoal_raft_term", "shoal_nodes"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn promtool_accepts_the_alert_rules() -> anyhow::Result<()> {
    let rules = repo_file(RULES);
    let output = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                anyhow::bail!("promtool is missing (Debian package prometheus; ops/install-deps.sh installs it) and CI=true");
            }
            eprintln!("skipped: promtool is not installed (Debian package prometheus)");
            return Ok(());
        }
        Err(err) => return Err(err).context("running promtool"),
    };
    assert!(
        output.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() -> anyhow::Result<()> {
    common::init_tracing();
    let rules = std::fs::read_to_string(repo_file(RULES)).context("reading the rules")?;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file(DASHBOARD)).context("reading the dashboard")?,
    )
    .context("the dashboard is not JSON")?;
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no expr");

    info!("--- a real agent: one request, so that the route-labelled histogram has a series");
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?).anonymous();
    assert_eq!(api.get("/healthz").await?.status, 200);
    let page = api.get("/metrics").await?;
    assert_eq!(page.status, 200);
    let exported = exported_names(&page.text);
    assert!(exported.contains("shoal_is_leader"), "{}", page.text);

    for (file, names) in [
        (RULES, metric_names(&rules)),
        (DASHBOARD, metric_names(&exprs.join("\n"))),
    ] {
        assert!(!names.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no node exports: {unknown:?}\nexported: {exported:?}"
        );
    }
    Ok(())
}
