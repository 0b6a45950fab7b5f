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
            "timing.lease_timeout",
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
    ];
    for (what, text, key) in cases {
        assert_eq!(key_of(&text), key, "case: {what}");
    }
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
    // No [api]: no HTTP API, no token.
    assert!(load_str(GOOD).expect("loads").api_token.is_none());
}
