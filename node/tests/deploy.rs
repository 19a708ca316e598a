//! `deploy/` is usable as shipped: every YAML and JSON file parses, the alert rules pass
//! `promtool check rules`, and every metric the dashboard and the alert rules name is one
//! a real node (with its Postgres mirror and ClickHouse click store) exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::clickhouse::ClickHouse;
use support::cluster::{member, Root};
use support::postgres::Postgres;
use support::ADMIN_KEY;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy_files(extensions: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files(&deploy_dir(), &mut all);
    all.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
    });
    all.sort();
    all
}

fn yaml(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PromQL's own words that look like metric names (they contain `_`).
const FUNCTIONS: &[&str] = &["histogram_quantile", "label_replace", "label_join"];

/// The metric names in a PromQL expression: identifiers with an underscore, outside label
/// matchers and strings, that are not functions.
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let mut depth = 0;
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if depth == 0
            && word.contains('_')
            && !word.starts_with(|c: char| c.is_ascii_digit())
            && !FUNCTIONS.contains(&word.as_str())
        {
            out.insert(word.clone());
        }
        word.clear();
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
    }
}

/// Label names inside `by (...)` would look like metrics if they had underscores; ours do
/// not, and this checks that the parser above does not pick them up.
#[test]
fn metric_names_are_found_in_promql() {
    let mut names = BTreeSet::new();
    metric_names(
        r#"histogram_quantile(0.99, sum(rate(redirect_duration_seconds_bucket{job="a_b"}[5m])) by (le, instance)) > 0.001 and time() - max(mirror_last_success_timestamp_seconds) > 300"#,
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "mirror_last_success_timestamp_seconds",
            "redirect_duration_seconds_bucket"
        ]
    );
}

/// Every `expr` of the alert rules and of the dashboard's panels.
fn expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let rules = deploy_dir().join("prometheus/alerts.yml");
    for doc in yaml(&rules) {
        for group in doc["groups"].as_vec().unwrap() {
            for rule in group["rules"].as_vec().unwrap() {
                exprs.push((
                    format!("alert {}", rule["alert"].as_str().unwrap()),
                    rule["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/linkrift.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    exprs
}

#[test]
fn no_deploy_file_ships_a_secret() {
    // A value in a deploy file is a value someone deploys: secrets are created by the
    // operator (the files say how), never written into them.
    let mut all = Vec::new();
    files(&deploy_dir(), &mut all);
    for path in all {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lower = text.to_ascii_lowercase();
        for placeholder in ["change-me", "changeme", "change_me"] {
            assert!(
                !lower.contains(placeholder),
                "{} holds a placeholder secret ({placeholder})",
                path.display()
            );
        }
        for line in text.lines() {
            let line = line.trim();
            for key in [
                "LINKRIFT_ADMIN_KEY",
                "LINKRIFT_CLUSTER_SECRET",
                "admin_key",
                "cluster_secret",
            ] {
                let rest = [format!("{key}="), format!("{key} = "), format!("{key}: ")]
                    .iter()
                    .find_map(|p| line.strip_prefix(p.as_str()));
                if let Some(rest) = rest {
                    assert!(
                        rest.starts_with('$') || rest.is_empty(),
                        "{} sets {key} to a literal value: {line}",
                        path.display()
                    );
                }
            }
        }
    }
}

#[test]
fn every_cluster_the_deploy_files_make_talks_mutual_tls() {
    let mut all = Vec::new();
    files(&deploy_dir(), &mut all);
    for path in &all {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            !text.to_ascii_lowercase().contains("node_plaintext"),
            "{} turns TLS between nodes off",
            path.display()
        );
    }
    // Compose: every node has the CA (in the shared environment) and its own pair, which
    // the pki service makes.
    let compose = &yaml(&deploy_dir().join("compose.yaml"))[0];
    assert_eq!(
        compose["x-linkrift"]["environment"]["LINKRIFT_NODE_TLS_CA"].as_str(),
        Some("/etc/linkrift/pki/ca.pem")
    );
    for n in 1..=3 {
        let service = &compose["services"][format!("linkrift-{n}").as_str()];
        let command: Vec<&str> = service["command"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let after = |flag: &str| command[command.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(
            after("--node-tls-cert"),
            format!("/etc/linkrift/pki/linkrift-{n}.pem")
        );
        assert_eq!(
            after("--node-tls-key"),
            format!("/etc/linkrift/pki/linkrift-{n}-key.pem")
        );
        let pki = compose["services"]["pki"]["command"][0].as_str().unwrap();
        assert!(
            pki.contains("--name linkrift-$$n --host 172.28.0.1$$n"),
            "{pki}"
        );
    }
    // Kubernetes: the init container makes the pod's pair; the node reads it.
    let k8s = yaml(&deploy_dir().join("k8s/linkrift.yaml"));
    let pod = &k8s
        .iter()
        .find(|d| d["kind"].as_str() == Some("StatefulSet"))
        .unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["command"][1].as_str(),
        Some("certs")
    );
    let env: Vec<(&str, &str)> = pod["containers"][0]["env"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    for (name, file) in [
        ("LINKRIFT_NODE_TLS_CA", "ca.pem"),
        ("LINKRIFT_NODE_TLS_CERT", "node.pem"),
        ("LINKRIFT_NODE_TLS_KEY", "node-key.pem"),
    ] {
        assert!(
            env.contains(&(name, format!("/etc/linkrift/pki/{file}").as_str())),
            "{name}: {env:?}"
        );
    }
    // systemd: the settings file names its three files.
    let toml = std::fs::read_to_string(deploy_dir().join("systemd/linkrift.toml")).unwrap();
    for key in ["node_tls_ca = ", "node_tls_cert = ", "node_tls_key = "] {
        assert!(toml.lines().any(|l| l.starts_with(key)), "{key}");
    }
}

#[test]
fn every_yaml_and_json_file_parses() {
    let yamls = deploy_files(&["yaml", "yml"]);
    assert!(yamls.len() >= 5, "{yamls:?}");
    for path in &yamls {
        assert!(!yaml(path).is_empty(), "{} is empty", path.display());
    }
    let jsons = deploy_files(&["json"]);
    assert!(!jsons.is_empty());
    for path in &jsons {
        serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // The StatefulSet probes and drains as documented.
    let k8s = yaml(&deploy_dir().join("k8s/linkrift.yaml"));
    let sts = k8s
        .iter()
        .find(|d| d["kind"].as_str() == Some("StatefulSet"))
        .expect("a StatefulSet");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["lifecycle"]["preStop"]["exec"]["command"][1].as_str(),
        Some("prestop")
    );
    assert!(k8s
        .iter()
        .any(|d| d["kind"].as_str() == Some("PodDisruptionBudget")));
}

#[test]
fn the_alert_rules_pass_promtool() {
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy_dir().join("prometheus/alerts.yml"))
        .output()
        .expect("promtool runs (scripts/test installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_alerts_is_exported() {
    let mut wanted = BTreeSet::new();
    for (_, expr) in expressions() {
        metric_names(&expr, &mut wanted);
    }
    assert!(wanted.len() >= 15, "{wanted:?}");

    let pg = Postgres::start();
    let ch = ClickHouse::start().await;
    let root = Root::new();
    let node = member(
        root.path(),
        1,
        None,
        &[
            "--postgres-url",
            pg.url.as_str(),
            "--clickhouse-url",
            ch.url.as_str(),
        ],
    );
    node.wait_ready().await;
    // A write (commit latency), a redirect (latency, cache, a click), an API call.
    let (status, body) = node
        .create(
            ADMIN_KEY,
            json!({ "url": "https://example.com/m", "code": "scraped" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(node.redirect("scraped").await.0, 302);

    // The mirror and the click store report once they have done something.
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let exposition = node.metrics().await;
        let have = exported(&exposition);
        let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
        let ingested = exposition
            .lines()
            .any(|l| l.starts_with("clicks_ingested_total ") && !l.ends_with(" 0"));
        if (missing.is_empty() && ingested) || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}"
    );
}
