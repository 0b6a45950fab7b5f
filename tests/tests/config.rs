//! The daemon refuses bad configuration files: exit code 64, and the key named on stderr.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vigil_tests::{pgvigil_bin, ClusterSpec};

/// A daemon that refuses its file exits at once; one that takes it would run on: stopped after
/// a deadline, and the case fails.
fn run_with(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgvigil.toml");
    std::fs::write(&path, text).expect("write config");
    let mut child = Command::new(pgvigil_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgvigil");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pgvigil") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pgvigil took this file and ran for 30 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    (status.code(), stderr)
}

#[test]
fn bad_config_files_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), 2, 0).expect("spec");
    spec.write_secret().expect("secret file");
    let good = spec.config_text(&spec.members[0]).expect("config text");
    let cases = [
        // The first `name` is the member's own (top-level keys come before the tables).
        ("missing key", good.replacen("name = \"pg1\"\n", "", 1), "`name`"),
        ("bad duration", good.replace("[timing]\n", "[timing]\nlease_timeout = \"soon\"\n"), "timing.lease_timeout"),
        ("unknown peer", good.replacen("name = \"pg1\"\n", "name = \"pg9\"\n", 1), "`name`"),
        ("unknown key", good.replace("[timing]\n", "[timing]\nlease_timout = \"2s\"\n"), "lease_timout"),
        (
            "inconsistent timings",
            good.replace("[timing]\n", "[timing]\nloop_interval = \"1s\"\nlease_timeout = \"2s\"\n"),
            "timing.lease_timeout",
        ),
        ("no peer credential", good.replace("[peer_auth]\n", "[peer_authx]\n"), "peer_authx"),
        (
            "proxy limit",
            format!("{good}\n[proxy]\nlisten_address = \"127.0.0.1\"\nrw_port = 16432\nro_port = 16433\nmax_sessions_per_backend = -1\n"),
            "proxy.max_sessions_per_backend",
        ),
        (
            "proxy queue",
            format!("{good}\n[proxy]\nlisten_address = \"127.0.0.1\"\nrw_port = 16432\nro_port = 16433\nqueue_timeout = \"0s\"\n"),
            "proxy.queue_timeout",
        ),
        (
            "no peer credential",
            good.replace("[peer_auth]\n", "").replace("secret_file =", "# secret_file ="),
            "peer_auth.secret_file",
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
    spec.write_secret().expect("secret file");
    let path = dir.path().join("pgvigil.toml");
    std::fs::write(&path, spec.config_text(&spec.members[0]).expect("config text")).expect("write config");
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

fn check_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgvigil.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(pgvigil_bin()).arg("check-config").arg(&path).output().expect("run pgvigil");
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_validates_a_file_without_starting_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::local(dir.path(), &pgvigil_bin(), 2, 0).expect("spec");
    spec.write_secret().expect("secret file");
    let good = spec.config_text(&spec.members[0]).expect("config text");
    let (code, stdout, stderr) = check_config(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("ok: ") && stdout.contains("member pg1"), "{stdout}");
    assert!(!spec.state_dir("pg1").exists(), "check-config creates nothing");
    let cases = [
        ("a string for a boolean", good.replace("nofailover = false", "nofailover = \"yes\""), "tags.nofailover"),
        (
            "a string for a number",
            good.replace("[tags]", "[tags]\npriority = \"2\"").replace("priority = 0\n", ""),
            "tags.priority",
        ),
        ("a level that logs nothing", good.replace("level = \"info\"", "level = \"verbose!!\""), "log.level"),
        (
            "a relative state_dir",
            good.replace(
                &format!("state_dir = {:?}", spec.state_dir("pg1").display().to_string()),
                "state_dir = \"pg1\"",
            ),
            "state_dir",
        ),
        (
            "no PostgreSQL in bin_dir",
            good.replace("/usr/lib/postgresql/15/bin", "/nonexistent/bin"),
            "postgres.bin_dir",
        ),
        (
            "a timing the user set",
            good.replace("[timing]\n", "[timing]\nelection_ticks = 0\n"),
            "timing.election_ticks",
        ),
    ];
    for (what, text, key) in cases {
        let (code, _, stderr) = check_config(&text);
        assert_eq!(code, Some(64), "{what}: {stderr}");
        assert!(stderr.contains(key), "{what}: stderr should name {key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    }
    // `run` refuses the same file the same way, before starting anything.
    let (code, stderr) = run_with(&good.replace("level = \"info\"", "level = \"verbose!!\""));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("log.level"), "{stderr}");
}
