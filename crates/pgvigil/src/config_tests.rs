use super::*;

const GOOD: &str = r#"
name = "a"
state_dir = "/tmp/pgvigil-a"
listen = "127.0.0.1:7001"
members = [
  { name = "a", address = "127.0.0.1:7001" },
  { name = "b", address = "127.0.0.1:7002" },
  { name = "w", address = "127.0.0.1:7003" },
]
[peer_auth]
insecure_unauthenticated = true
[postgres]
data_dir = "/tmp/pgvigil-a/data"
listen_address = "127.0.0.1"
port = 6001
replication_password = "secret"
[timing]
loop_interval = "200ms"
lease_timeout = "2s"
"#;

fn load_str(text: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().map_err(|e| bad("test", e.to_string()))?;
    let path = dir.path().join("pgvigil.toml");
    std::fs::write(&path, text).map_err(|e| bad("test", e.to_string()))?;
    load(&path)
}

fn key_of(text: &str) -> String {
    match load_str(text) {
        Ok(_) => "(accepted)".into(),
        Err(e) => e.key,
    }
}

#[test]
fn a_good_file_loads_with_defaults_filled_in() {
    let s = load_str(GOOD).expect("good config");
    assert_eq!(s.advertise, "127.0.0.1:7001");
    assert_eq!(s.timings.loop_interval, Duration::from_millis(200));
    assert_eq!(s.timings.lease_margin, Timings::default().lease_margin);
    assert_eq!(s.replication_password, "secret");
    let pg = s.raw.postgres.as_ref().expect("postgres section");
    assert_eq!((pg.replication_user.as_str(), pg.superuser.as_str()), ("replicator", "postgres"));
    assert_eq!(s.socket_dir(), PathBuf::from("/tmp/pgvigil-a/run"));
}

#[test]
fn bad_files_name_the_key() {
    let cases = [
        ("missing name", GOOD.replace("name = \"a\"\n", ""), "name"),
        ("unknown top key", GOOD.replace("listen =", "colour = \"red\"\nlisten ="), "colour"),
        ("unknown nested key", GOOD.replace("port = 6001", "port = 6001\nprot = 1"), "postgres.prot"),
        ("bad duration", GOOD.replace("\"200ms\"", "\"fast\""), "timing.loop_interval"),
        ("bad number", GOOD.replace("port = 6001", "port = \"many\""), "postgres.port"),
        ("unknown peer", GOOD.replace("name = \"a\"\nstate_dir", "name = \"zz\"\nstate_dir"), "name"),
        ("duplicate member", GOOD.replace("name = \"b\"", "name = \"a\""), "members[1].name"),
        ("bad address", GOOD.replace("\"127.0.0.1:7002\"", "\"nowhere\""), "members[1].address"),
        ("bad listen", GOOD.replace("listen = \"127.0.0.1:7001\"", "listen = \"x\""), "listen"),
        (
            "inconsistent timings",
            GOOD.replace("lease_timeout = \"2s\"", "lease_timeout = \"300ms\""),
            "timing.lease_timeout (with timing.loop_interval)",
        ),
        ("no password", GOOD.replace("replication_password = \"secret\"", ""), "postgres.replication_password"),
        ("relative data dir", GOOD.replace("\"/tmp/pgvigil-a/data\"", "\"data\""), "postgres.data_dir"),
        ("bad kind", GOOD.replace("name = \"a\"\n", "name = \"a\"\nkind = \"oracle\"\n"), "kind"),
        ("bad api listen", format!("{GOOD}[api]\nlisten = \"localhost\"\n"), "api.listen"),
        ("api without listen", format!("{GOOD}[api]\ntoken = \"t\"\n"), "api.listen"),
        ("unknown api key", format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntokn = \"t\"\n"), "api.tokn"),
        ("empty token", format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken = \" \"\n"), "api.token"),
        (
            "token twice",
            format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken = \"t\"\ntoken_file = \"/x\"\n"),
            "api.token",
        ),
        (
            "unreadable token file",
            format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken_file = \"/nonexistent/token\"\n"),
            "api.token_file",
        ),
        (
            "switchover timeout longer than pg_restart_timeout",
            GOOD.replace("lease_timeout = \"2s\"", "lease_timeout = \"2s\"\nswitchover_timeout = \"1m\""),
            "timing.switchover_timeout",
        ),
        (
            "unknown preferred primary",
            format!("{GOOD}[replication]\npreferred_primary = \"zz\"\n"),
            "replication.preferred_primary",
        ),
        ("empty hook", format!("{GOOD}[hooks]\non_fence = \" \"\n"), "hooks.on_fence"),
        ("empty hook argv", format!("{GOOD}[hooks]\non_failover = []\n"), "hooks.on_failover"),
        ("unknown hook", format!("{GOOD}[hooks]\non_reboot = \"x\"\n"), "hooks.on_reboot"),
        ("zero hook timeout", format!("{GOOD}[hooks]\ntimeout = \"0s\"\n"), "hooks.timeout"),
    ];
    for (what, text, key) in cases {
        assert_eq!(key_of(&text), key, "case: {what}");
    }
}

#[test]
fn hooks_are_command_lines_or_argument_lists() {
    let text = format!(
        "{GOOD}[replication]\npreferred_primary = \"b\"\n[hooks]\non_role_change = \"/bin/vip.sh\"\n\
         on_fence = [\"/bin/page\", \"--team\", \"dba\"]\ntimeout = \"5s\"\n"
    );
    let s = load_str(&text).expect("loads");
    assert_eq!(s.raw.hooks.on_role_change, Some(HookCommand::Shell("/bin/vip.sh".into())));
    assert_eq!(s.raw.hooks.on_fence, Some(HookCommand::Argv(vec!["/bin/page".into(), "--team".into(), "dba".into()])));
    assert_eq!(s.raw.hooks.timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.raw.replication.preferred_primary.as_deref(), Some("b"));
    assert_eq!(s.timings.switchover_timeout, Duration::from_secs(15));
    // Durations humantime reads but the daemon cannot count with are refused, naming the key.
    assert_eq!(key_of(&text.replace("timeout = \"5s\"", "timeout = \"500000000000years\"")), "hooks.timeout");
    let huge = GOOD.replace("loop_interval = \"200ms\"", "loop_interval = \"18446744073709551615s\"");
    assert_eq!(key_of(&huge), "timing.loop_interval");
}

#[test]
fn a_witness_needs_no_postgres_section() {
    let text = GOOD.replace("name = \"a\"\n", "name = \"w\"\nkind = \"witness\"\n");
    let text = text.split("[postgres]").next().unwrap_or_default().to_string();
    let s = load_str(&text).expect("witness config");
    assert_eq!(s.raw.kind, MemberKind::Witness);
    let no_pg = GOOD.split("[postgres]").next().unwrap_or_default().to_string();
    assert_eq!(key_of(&no_pg), "postgres");
}

#[test]
fn passwords_can_come_from_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").expect("write");
    let text =
        GOOD.replace("replication_password = \"secret\"", &format!("replication_password_file = {:?}", pw.display()));
    assert_eq!(load_str(&text).expect("loads").replication_password, "from-file");
}

#[test]
fn the_api_token_comes_from_the_file_and_never_shows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cret-token\n").expect("write");
    let text = format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken_file = {:?}\n", path.display());
    let s = load_str(&text).expect("loads");
    assert_eq!(s.api_token, Some(Secret("s3cret-token".into())));
    assert!(!format!("{s:?}").contains("s3cret-token"), "Debug hides the token");
    let inline =
        load_str(&format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken = \"s3cret-token\"\n")).expect("loads");
    let json = inline.redacted_json().to_string();
    assert!(!json.contains("s3cret-token") && !json.contains("\"secret\""), "{json}");
    assert_eq!(inline.redacted_json()["api"]["token"], REDACTED);
    assert_eq!(inline.redacted_json()["postgres"]["replication_password"], REDACTED);
    assert_eq!(inline.redacted_json()["timing"]["lease_timeout"], "2s");
    assert!(format!("{:?}", inline.raw.api).contains(REDACTED));
    let with_su =
        load_str(&GOOD.replace("port = 6001", "port = 6001\nsuperuser_password = \"su-s3cret\"")).expect("loads");
    let debug = format!("{with_su:?}");
    assert!(!debug.contains("\"secret\"") && !debug.contains("su-s3cret"), "Debug hides the passwords: {debug}");
    assert!(debug.contains("6001"), "{debug}");
    // No [api]: no HTTP API, no token.
    assert!(load_str(GOOD).expect("loads").api_token.is_none());
    // Found by the fuzz targets: a token no request could present was taken (the API reads the
    // header as visible ASCII and trims it): every mutating request would have been refused.
    for token in ["pässwort", " lead", "trail ", "tab\there"] {
        let text = format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken = {token:?}\n");
        assert_eq!(load_str(&text).map_err(|e| e.key).err().as_deref(), Some("api.token"), "{token:?}");
    }
    std::fs::write(&path, "s3cret token\n").expect("write");
    let spaced = format!("{GOOD}[api]\nlisten = \"127.0.0.1:8008\"\ntoken_file = {:?}\n", path.display());
    assert_eq!(load_str(&spaced).expect("loads").api_token, Some(Secret("s3cret token".into())));
}

fn pg_table(extra: &str) -> String {
    GOOD.replace("port = 6001", &format!("port = 6001\n{extra}"))
}

#[test]
fn strings_are_not_taken_for_booleans_or_numbers() {
    let cases = [
        ("nofailover yes", format!("{GOOD}[tags]\nnofailover = \"yes\"\n"), "tags.nofailover"),
        ("nofailover 1", format!("{GOOD}[tags]\nnofailover = 1\n"), "tags.nofailover"),
        ("priority as a string", format!("{GOOD}[tags]\npriority = \"3\"\n"), "tags.priority"),
        ("priority over 32 bit", format!("{GOOD}[tags]\npriority = 4294967296\n"), "tags.priority"),
        ("a tag that is a table", format!("{GOOD}[tags]\nzone = {{ a = 1 }}\n"), "tags.zone"),
        ("a tag that is a list", format!("{GOOD}[tags.rack]\nx = 1\n"), "tags.rack"),
        ("port as a string", GOOD.replace("port = 6001", "port = \"55501\""), "postgres.port"),
        ("port out of range", GOOD.replace("port = 6001", "port = 70000"), "postgres.port"),
        (
            "ticks as a string",
            GOOD.replace("lease_timeout = \"2s\"", "election_ticks = \"10\""),
            "timing.election_ticks",
        ),
        (
            "peer_mtls as a string",
            GOOD.replace(
                "[timing]",
                "[tls]\nca_file = \"/x\"\ncert_file = \"/y\"\nkey_file = \"/z\"\npeer_mtls = \"no\"\n[timing]",
            ),
            "tls.peer_mtls",
        ),
        ("missing nested key", GOOD.replace("listen_address = \"127.0.0.1\"\n", ""), "postgres.listen_address"),
    ];
    for (what, text, key) in cases {
        assert_eq!(key_of(&text), key, "case: {what}");
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    check(parse(GOOD, env(pairs))?)
}

#[test]
fn environment_overrides_are_parsed_as_their_key_type() {
    let s = parse_env(&[("PGVIGIL_TAGS__NOFAILOVER", "yes"), ("PGVIGIL_POSTGRES__PORT", "5433")]).expect("loads");
    assert!(s.raw.tags.tags().nofailover());
    assert_eq!(s.raw.postgres.as_ref().map(|p| p.port), Some(5433));
    let s = parse_env(&[("PGVIGIL_TAGS__NOFAILOVER", "0"), ("PGVIGIL_TIMING__LEASE_TIMEOUT", "3s")]).expect("loads");
    assert!(!s.raw.tags.tags().nofailover());
    assert_eq!(s.timings.lease_timeout, Duration::from_secs(3));
    // Any tag may be set from the environment; an unknown one is a string.
    let s = parse_env(&[("PGVIGIL_TAGS__ZONE", "b")]).expect("loads");
    assert_eq!(s.raw.tags.tags().get("zone"), Some("b"));
    // A string key stays a string, even when it looks like a number.
    let s = parse_env(&[("PGVIGIL_POSTGRES__REPLICATION_PASSWORD", "12345")]).expect("loads");
    assert_eq!(s.replication_password, "12345");
    let key = |pairs: &[(&str, &str)]| parse_env(pairs).err().map(|e| e.key).unwrap_or_else(|| "(accepted)".into());
    assert_eq!(key(&[("PGVIGIL_POSTGRES__PORT", "many")]), "postgres.port");
    assert_eq!(key(&[("PGVIGIL_TAGS__NOFAILOVER", "perhaps")]), "tags.nofailover");
    assert_eq!(key(&[("PGVIGIL_NAME", "zz")]), "name");
    assert_eq!(key(&[("PGVIGIL_TIMING__LEASE_TIMOUT", "2s")]), "timing.lease_timout");
    assert_eq!(key(&[("PGVIGIL_NAME__X", "1")]), "name");
    // Found by the fuzz targets: no key at all was named "" (an error that names nothing).
    assert_eq!(key(&[("PGVIGIL_", "1")]), "PGVIGIL_");
    assert_eq!(key(&[("PGVIGIL_TAGS____PRIORITY", "1")]), "PGVIGIL_TAGS____PRIORITY");
    // Keys TOML must quote are named quoted, not taken for the file (`""`, `"."`) or for two keys.
    let file_key = |text: &str| parse(text, Vec::new()).map_err(|e| e.key).err().unwrap_or_default();
    assert_eq!(file_key("\"\" = 1\n"), "\"\"");
    assert_eq!(file_key("[\".\"]\n"), "\".\"");
    assert_eq!(file_key(&format!("{GOOD}\"\" = 1\n")), "timing.\"\"");
    assert_eq!(file_key(&format!("{GOOD}\"lease timeout\" = 1\n")), "timing.\"lease timeout\"");
    assert_eq!(file_key(&format!("{GOOD}\"a.b\" = 1\n")), "timing.\"a.b\"");
}

#[test]
fn every_boolean_and_integer_key_has_a_type_for_the_environment() {
    let text = format!(
        "{}\n[tags]\nnofailover = true\npriority = 1\n[replication]\nsynchronous_node_count = 1\n\
         [backup]\nstanza = \"main\"\nrepo_path = \"/r\"\nretention_full = 2\nretention_diff = 1\n{}",
        GOOD.replace(
            "lease_timeout = \"2s\"",
            "lease_timeout = \"2s\"\nelection_ticks = 10\nheartbeat_ticks = 2\nmaximum_lag_on_failover = 1"
        )
        .replace("port = 6001", "port = 6001\nkeep_moved_data_dirs = 2"),
        "[proxy]\nlisten_address = \"127.0.0.1\"\nrw_port = 1\nro_port = 2\nmax_lag_bytes = 3\n"
    );
    let raw = parse(&text, Vec::new()).expect("parses");
    let mut v = serde_json::to_value(&raw).expect("json");
    v["tls"] = serde_json::json!({ "peer_mtls": true, "api": true, "api_verify_client": false });
    let mut typed = Vec::new();
    // Tags are typed by vigil_core::tags::KNOWN (below).
    for (table, t) in v.as_object().into_iter().flatten().filter(|(table, _)| *table != "tags") {
        for (key, leaf) in t.as_object().into_iter().flatten() {
            let key = format!("{table}.{key}");
            if leaf.is_boolean() {
                typed.push((key.clone(), ENV_BOOL_KEYS.contains(&key.as_str())));
            }
            if leaf.is_number() {
                typed.push((key.clone(), ENV_INTEGER_KEYS.contains(&key.as_str())));
            }
        }
    }
    assert_eq!(typed.len(), ENV_BOOL_KEYS.len() + ENV_INTEGER_KEYS.len(), "{typed:?}");
    assert!(typed.iter().all(|(_, listed)| *listed), "{typed:?}");
    for (tag, kind) in vigil_core::tags::KNOWN {
        let var = format!("PGVIGIL_TAGS__{}", tag.to_uppercase());
        let value = if *kind == vigil_core::tags::Kind::Bool { "yes" } else { "7" };
        let s = parse_env(&[(var.as_str(), value)]).expect("loads");
        let expected = if *kind == vigil_core::tags::Kind::Bool { "true" } else { "7" };
        assert_eq!(s.raw.tags.tags().get(tag), Some(expected), "{var}");
    }
}

#[test]
fn a_log_level_must_log_something() {
    let with = |level: &str| key_of(&format!("{GOOD}[log]\nlevel = {level:?}\n"));
    for bad in ["verbose!!", "", "pgvigil=loud", "debug,verbose", "x y=info"] {
        assert_eq!(with(bad), "log.level", "{bad:?}");
    }
    for good in ["info", "WARN", "pgvigil=debug,info", "vigil_pg::keeper=trace,warn", "off"] {
        assert_eq!(with(good), "(accepted)", "{good:?}");
    }
}

#[test]
fn paths_must_be_absolute() {
    let api = "[api]\nlisten = \"127.0.0.1:8008\"\n";
    let cases = [
        ("state_dir", GOOD.replace("state_dir = \"/tmp/pgvigil-a\"", "state_dir = \"state\""), "state_dir"),
        ("data_dir", GOOD.replace("\"/tmp/pgvigil-a/data\"", "\"./data\""), "postgres.data_dir"),
        ("bin_dir", pg_table("bin_dir = \"bin\""), "postgres.bin_dir"),
        ("socket_dir", pg_table("socket_dir = \"run\""), "postgres.socket_dir"),
        ("log_file", pg_table("log_file = \"pg.log\""), "postgres.log_file"),
        (
            "password file",
            GOOD.replace("replication_password = \"secret\"", "replication_password_file = \"pw\""),
            "postgres.replication_password_file",
        ),
        ("superuser password file", pg_table("superuser_password_file = \"su\""), "postgres.superuser_password_file"),
        ("token file", format!("{GOOD}{api}token_file = \"token\"\n"), "api.token_file"),
        (
            "tls file",
            format!("{GOOD}[tls]\nca_file = \"ca.pem\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"),
            "tls.ca_file",
        ),
        ("hook argv", format!("{GOOD}[hooks]\non_fence = [\"./page\", \"x\"]\n"), "hooks.on_fence"),
        ("hook command line", format!("{GOOD}[hooks]\non_failover = \"bin/vip up\"\n"), "hooks.on_failover"),
    ];
    for (what, text, key) in cases {
        assert_eq!(key_of(&text), key, "case: {what}");
    }
    // A bare program name is looked up in PATH.
    assert_eq!(key_of(&format!("{GOOD}[hooks]\non_fence = \"logger fenced\"\n")), "(accepted)");
}

#[test]
fn members_are_distinct_by_name_and_address() {
    assert_eq!(key_of(&GOOD.replace("\"127.0.0.1:7002\"", "\"127.0.0.1:7001\"")), "members[1].address");
    assert_eq!(key_of(&GOOD.replace("name = \"w\"", "name = \"b\"")), "members[2].name");
}

#[test]
fn a_witness_with_a_postgres_table_is_refused() {
    let text = GOOD.replace("name = \"a\"\n", "name = \"w\"\nkind = \"witness\"\n");
    assert_eq!(key_of(&text), "postgres");
}

#[test]
fn timing_errors_name_the_keys_the_user_set() {
    let timing =
        |lines: &str| {
            key_of(&GOOD.replace(
                "[timing]\nloop_interval = \"200ms\"\nlease_timeout = \"2s\"\n",
                &format!("[timing]\n{lines}\n"),
            ))
        };
    assert_eq!(timing("election_ticks = 0"), "timing.election_ticks");
    assert_eq!(timing("heartbeat_ticks = 10"), "timing.heartbeat_ticks");
    assert_eq!(
        timing("heartbeat_ticks = 5\nelection_ticks = 5"),
        "timing.heartbeat_ticks (with timing.election_ticks)"
    );
    assert_eq!(timing("pg_restart_timeout = \"1s\""), "timing.pg_restart_timeout");
    assert_eq!(
        timing("pg_restart_timeout = \"10s\"\nswitchover_timeout = \"12s\""),
        "timing.switchover_timeout (with timing.pg_restart_timeout)"
    );
    assert_eq!(timing("switchover_timeout = \"25s\""), "timing.switchover_timeout");
    assert_eq!(timing("lease_timeout = \"900ms\""), "timing.lease_timeout");
    assert_eq!(timing("loop_interval = \"1s\""), "timing.loop_interval");
}

/// A fake `bin_dir`: every program a script; `postgres --version` answers `version`.
fn fake_bin_dir(dir: &Path, version: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for p in crate::install::PROGRAMS {
        let path = bin.join(p);
        std::fs::write(&path, format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

#[test]
fn bin_dir_must_hold_the_programs_of_the_data_dirs_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let with = |bin: &Path| {
        pg_table(&format!("bin_dir = {:?}", bin.display().to_string()))
            .replace("\"/tmp/pgvigil-a/data\"", &format!("{:?}", data.display().to_string()))
    };
    assert_eq!(key_of(&with(Path::new("/nonexistent/bin"))), "postgres.bin_dir");
    let bin15 = fake_bin_dir(&dir.path().join("15"), "15.8 (Debian 15.8-0+deb12u1)");
    assert_eq!(key_of(&with(&bin15)), "(accepted)", "no cluster yet: any version");
    std::fs::write(data.join("PG_VERSION"), "15\n").expect("write");
    assert_eq!(key_of(&with(&bin15)), "(accepted)");
    let bin14 = fake_bin_dir(&dir.path().join("14"), "14.11");
    assert_eq!(key_of(&with(&bin14)), "postgres.bin_dir");
    let msg = load_str(&with(&bin14)).err().map(|e| e.message).unwrap_or_default();
    assert!(msg.contains("14") && msg.contains("15"), "{msg}");
    std::fs::remove_file(bin15.join("pg_rewind")).expect("rm");
    assert_eq!(key_of(&with(&bin15)), "postgres.bin_dir");
    // The command line's verbs read a member's file without looking at its installation.
    let path = dir.path().join("c.toml");
    std::fs::write(&path, with(&bin15)).expect("write");
    assert!(load_file(&path).is_ok());
}

#[test]
fn the_peer_port_needs_a_credential_unless_the_operator_says_otherwise() {
    let without = GOOD.replace("[peer_auth]\ninsecure_unauthenticated = true\n", "");
    let refused = load_str(&without).expect_err("no credential is refused");
    assert_eq!(refused.key, "peer_auth.secret_file");
    assert!(refused.message.contains("pgvigil gen-secret"), "{}", refused.message);

    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("cluster.secret");
    let with_file = |text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&secret, text).expect("write secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).expect("chmod");
        without.replace("[postgres]", &format!("[peer_auth]\nsecret_file = {:?}\n[postgres]", secret.display()))
    };
    let good = "0123456789abcdef0123456789abcdef0123456789abcdef\n";
    let s = load_str(&with_file(good, 0o600)).expect("a private secret file");
    assert!(s.peer_key.is_some());
    assert!(!format!("{s:?}").contains("0123456789abcdef"), "Debug shows no secret");
    let open = load_str(&with_file(good, 0o644)).expect_err("a secret others can read is refused");
    assert_eq!(open.key, "peer_auth.secret_file");
    assert!(open.message.contains("chmod 600"), "{}", open.message);
    let short = load_str(&with_file("short\n", 0o600)).expect_err("a short secret is refused");
    assert!(short.key == "peer_auth.secret_file" && short.message.contains("at least 32"), "{short}");
    let both = with_file(good, 0o600).replace("[postgres]", "insecure_unauthenticated = true\n[postgres]");
    assert_eq!(key_of(&both), "peer_auth.insecure_unauthenticated");
    let relative = without.replace("[postgres]", "[peer_auth]\nsecret_file = \"cluster.secret\"\n[postgres]");
    assert_eq!(key_of(&relative), "peer_auth.secret_file");
    let coerced = without.replace("[postgres]", "[peer_auth]\ninsecure_unauthenticated = \"yes\"\n[postgres]");
    assert_eq!(key_of(&coerced), "peer_auth.insecure_unauthenticated");
}

#[test]
fn the_proxy_table_is_checked() {
    let proxy = |body: &str| key_of(&format!("{GOOD}[proxy]\n{body}"));
    let ok = "listen_address = \"127.0.0.1\"\nrw_port = 6432\nro_port = 6433\n";
    assert_eq!(proxy(ok), "(accepted)");
    assert_eq!(
        proxy(&format!("{ok}hold_timeout = \"20s\"\nno_standby = \"refuse\"\nmax_lag_time = \"5s\"\n")),
        "(accepted)"
    );
    assert_eq!(proxy(&ok.replace("127.0.0.1", "localhost:1")), "proxy.listen_address");
    assert_eq!(proxy(&ok.replace("6433", "6432")), "proxy.ro_port");
    assert_eq!(proxy(&ok.replace("6432", "0")), "proxy.rw_port");
    assert_eq!(proxy(&ok.replace("rw_port = 6432\n", "")), "proxy.rw_port");
    assert_eq!(proxy(&format!("{ok}hold_timeout = \"0s\"\n")), "proxy.hold_timeout");
    assert_eq!(proxy(&format!("{ok}no_standby = \"random\"\n")), "proxy.no_standby");
    assert_eq!(proxy(&format!("{ok}dead_peer_timeout = \"100ms\"\n")), "proxy.dead_peer_timeout");
    assert_eq!(proxy(&format!("{ok}rw = 1\n")), "proxy.rw");
    assert_eq!(proxy(&format!("{ok}max_sessions_per_backend = 100\nqueue_timeout = \"2s\"\n")), "(accepted)");
    assert_eq!(proxy(&format!("{ok}max_sessions_per_backend = -1\n")), "proxy.max_sessions_per_backend");
    assert_eq!(proxy(&format!("{ok}max_sessions_per_backend = 300000\n")), "proxy.max_sessions_per_backend");
    assert_eq!(proxy(&format!("{ok}queue_timeout = \"0s\"\n")), "proxy.queue_timeout");
    let from = |list: &str| proxy(&format!("{ok}proxy_protocol_from = {list}\n"));
    assert_eq!(from(r#"["10.0.0.0/8", "127.0.0.1/32", "::1", "2001:db8::/32"]"#), "(accepted)");
    assert_eq!(from("[]"), "(accepted)");
    assert_eq!(from(r#"["10.0.0.0/33"]"#), "proxy.proxy_protocol_from");
    assert_eq!(from(r#"["10.0.0.1/8"]"#), "proxy.proxy_protocol_from");
    assert_eq!(from(r#"["lb.example.com"]"#), "proxy.proxy_protocol_from");
    assert_eq!(from(r#""10.0.0.0/8""#), "proxy.proxy_protocol_from");
}
