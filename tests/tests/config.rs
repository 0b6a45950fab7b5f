//! The daemon refuses bad configuration files: exit code 64, and the key named on stderr.

use std::process::Command;
use vigil_tests::{pgvigil_bin, ClusterSpec};

fn run_with(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgvigil.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(pgvigil_bin()).arg("run").arg("--config").arg(&path).output().expect("run pgvigil");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_config_files_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), 2, 0).expect("spec");
    let good = spec.config_text(&spec.members[0]);
    let cases = [
        ("missing key", good.replace("name = \"pg1\"\n", ""), "`name`"),
        ("bad duration", good.replace("[timing]\n", "[timing]\nlease_timeout = \"soon\"\n"), "timing.lease_timeout"),
        ("unknown peer", good.replace("name = \"pg1\"\n", "name = \"pg9\"\n"), "`name`"),
        ("unknown key", good.replace("[timing]\n", "[timing]\nlease_timout = \"2s\"\n"), "lease_timout"),
        (
            "inconsistent timings",
            good.replace("[timing]\n", "[timing]\nloop_interval = \"1s\"\nlease_timeout = \"2s\"\n"),
            "timing.lease_timeout",
        ),
    ];
    for (what, text, key) in cases {
        let (code, stderr) = run_with(&text);
        assert_eq!(code, Some(64), "{what}: {stderr}");
        assert!(stderr.contains(key), "{what}: stderr should name {key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    }
    let (code, stderr) = run_with("this is not toml = = =");
    assert_eq!(code, Some(64), "{stderr}");
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), 2, 0).expect("spec");
    let path = dir.path().join("pgvigil.toml");
    std::fs::write(&path, spec.config_text(&spec.members[0])).expect("write config");
    let run = |var: &str, value: &str| {
        let out = Command::new(pgvigil_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env(var, value)
            .output()
            .expect("run pgvigil");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // Each override makes the good file bad, so the exit code proves it was read.
    let (code, stderr) = run("PGVIGIL_NAME", "pg9");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("`name`") && stderr.contains("pg9"), "{stderr}");
    let (code, stderr) = run("PGVIGIL_TIMING__LEASE_TIMEOUT", "100ms");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("timing.lease_timeout"), "{stderr}");
}
