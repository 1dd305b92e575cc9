//! Checks that the Kubernetes manifests in `cluster-configs/kubernetes/` agree with the
//! program they run: the cluster config in the ConfigMap loads and names the StatefulSet's
//! pods, every `shoal` command line in a container parses with this binary's flags, and
//! every `SHOAL_*` variable a container sets is one the command reads. (Their schemas are
//! checked by scripts/check-kubernetes.sh.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use serde_yaml_ng::Value;
use shoal_coordinator::config::ClusterConfig;

use super::Cli;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-configs/kubernetes")
}

/// Every resource in every manifest file.
fn resources() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("cluster-configs/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !v.is_null() {
                out.push((path.file_name().expect("name").to_string_lossy().to_string(), v));
            }
        }
    }
    out
}

fn find<'a>(all: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// A container port by name.
fn port(container: &Value, name: &str) -> u64 {
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}"))
}

/// Every container (init containers too) of every workload, with its file.
fn containers(all: &[(String, Value)]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for (file, r) in all {
        let spec = &r["spec"]["template"]["spec"];
        for c in seq(&spec["initContainers"]).iter().chain(seq(&spec["containers"])) {
            out.push((format!("{file} {}/{}", s(&r["kind"]), s(&c["name"])), c));
        }
    }
    out
}

/// Splits one shell command line: words, double-quoted strings, `$VAR`s given a sample
/// value; stops at a redirection.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '>' if !quoted => break,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            '$' => {
                let mut name = String::new();
                while let Some(n) = chars.peek().filter(|n| n.is_ascii_alphanumeric() || **n == '_') {
                    name.push(*n);
                    chars.next();
                }
                word += &sample(&name);
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// What Kubernetes would put in `$(NAME)` or a shell in `$NAME`.
fn sample(name: &str) -> String {
    match name {
        "POD_IP" => "10.244.1.7".into(),
        "SHOAL_COORDINATOR_ID" => "2".into(),
        other => format!("sample-{}", other.to_ascii_lowercase()),
    }
}

/// Kubernetes' `$(NAME)` expansion in args.
fn expand(arg: &str) -> String {
    let mut out = arg.to_string();
    while let Some(start) = out.find("$(") {
        let end = out[start..].find(')').expect("closing parenthesis") + start;
        let value = sample(&out[start + 2..end]);
        out.replace_range(start..=end, &value);
    }
    out
}

/// The `shoal` command lines a container runs.
fn shoal_command_lines(c: &Value) -> Vec<Vec<String>> {
    let command: Vec<&str> = seq(&c["command"]).iter().map(s).collect();
    let args: Vec<String> = seq(&c["args"]).iter().map(|a| expand(s(a))).collect();
    match command.as_slice() {
        ["shoal"] => vec![std::iter::once("shoal".to_string()).chain(args).collect()],
        ["/bin/sh", "-c"] => args
            .iter()
            .flat_map(|script| script.lines().map(str::to_string).collect::<Vec<_>>())
            .map(|l| l.trim().trim_start_matches("exec ").to_string())
            .filter(|l| l.starts_with("shoal "))
            .map(|l| shell_words(&l))
            .collect(),
        _ => Vec::new(),
    }
}

/// The environment variables that the subcommand named by `argv` reads.
fn env_read_by(argv: &[String]) -> BTreeSet<String> {
    let mut cmd = Cli::command();
    let mut names = BTreeSet::new();
    let mut words = argv.iter().skip(1);
    loop {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                names.insert(e.to_string_lossy().to_string());
            }
        }
        let Some(next) = words.next() else { break };
        match cmd.find_subcommand(next) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    names
}

#[test]
fn the_configmap_names_every_statefulset_pod_and_loads() {
    let all = resources();
    let cm = find(&all, "ConfigMap", "shoal-cluster");
    let cfg: ClusterConfig = toml::from_str(s(&cm["data"]["cluster.toml"])).expect("cluster.toml parses");
    let cfg = cfg.validate().expect("cluster.toml is valid");
    let sts = find(&all, "StatefulSet", "shoal-coordinator");
    let (name, ns) = (s(&sts["metadata"]["name"]), s(&sts["metadata"]["namespace"]));
    let service = s(&sts["spec"]["serviceName"]);
    find(&all, "Service", service);
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    let first = sts["spec"]["ordinals"]["start"].as_u64().unwrap_or(0);
    assert_eq!(first, 1, "member ids start at 1: ordinals.start must be 1");
    let container = &seq(&sts["spec"]["template"]["spec"]["containers"])[0];
    let (quic, http) = (port(container, "quic"), port(container, "http"));
    let ids: Vec<u64> = cfg.coordinators.iter().filter(|m| m.initial).map(|m| m.id).collect();
    assert_eq!(ids, (first..first + replicas).collect::<Vec<_>>(), "one bootstrap member per pod");
    for m in &cfg.coordinators {
        let host = format!("{name}-{}.{service}.{ns}.svc.cluster.local", m.id);
        assert_eq!(m.quic, format!("{host}:{quic}"));
        assert_eq!(m.http, format!("{host}:{http}"));
        assert_eq!(m.quic_listen().port() as u64, quic);
        assert!(m.http_listen().ip().is_unspecified(), "a named member listens on every interface");
    }
    // The CA directory is the one the start script fills from the Secret.
    let ca_dir = cfg.pki.ca_dir.expect("[pki] ca_dir").display().to_string();
    let script = s(&seq(&container["args"])[0]);
    assert!(script.contains(&format!("{ca_dir}/ca.key")) && script.contains(&format!("{ca_dir}/ca.crt")), "{script}");
    // The nodes join through the headless Service, in the same namespace.
    let nodes = find(&all, "DaemonSet", "shoal-node");
    let join = s(&seq(&nodes["spec"]["template"]["spec"]["containers"])[0]["args"][1]);
    assert_eq!(join, format!("{service}.{ns}.svc.cluster.local:{quic}"));
    // The PodDisruptionBudget keeps a quorum.
    let pdb = find(&all, "PodDisruptionBudget", "shoal-coordinator");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(replicas / 2 + 1));
}

#[test]
fn every_shoal_command_in_the_manifests_parses_and_its_variables_are_read() {
    let all = resources();
    let mut parsed = 0;
    for (at, c) in containers(&all) {
        for argv in shoal_command_lines(c) {
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("{at}: {argv:?} does not parse:\n{e}");
            }
            parsed += 1;
            let read = env_read_by(&argv);
            for e in seq(&c["env"]) {
                let name = s(&e["name"]);
                let used_by_script = seq(&c["args"]).iter().any(|a| s(a).contains(&format!("${name}")));
                if name.starts_with("SHOAL_") && name != "SHOAL_LOG" && !used_by_script {
                    assert!(read.contains(name), "{at}: sets {name}, which `{}` does not read", argv.join(" "));
                }
            }
        }
    }
    // Coordinator, token creation, and the two node DaemonSets.
    assert_eq!(parsed, 4);
}

#[test]
fn the_join_secret_holds_what_the_token_job_writes() {
    let all = resources();
    let written: BTreeSet<&str> = super::token::ENV_FORMAT.iter().map(|(name, _)| *name).collect();
    let mut read = 0;
    for (at, c) in containers(&all) {
        for e in seq(&c["env"]) {
            let key = &e["valueFrom"]["secretKeyRef"];
            if key["name"] == "shoal-join" {
                assert!(written.contains(s(&key["key"])), "{at}: {} is not written by the token Job", s(&key["key"]));
                assert_eq!(key["optional"].as_bool(), Some(true), "{at}: a node that already joined needs no token");
                read += 1;
            }
        }
    }
    assert_eq!(read, 4, "both node DaemonSets read the token and the CA hash");
    let job = find(&all, "Job", "shoal-join-token");
    let script = s(&seq(&job["spec"]["template"]["spec"]["initContainers"])[0]["args"][0]);
    assert!(script.contains("--format env") && script.contains("name: shoal-join"), "{script}");
}
