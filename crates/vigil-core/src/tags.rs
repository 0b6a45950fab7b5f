//! A member's tags: the `[tags]` table of its config, carried as it is (a map of strings) through
//! its report, its member record, the peer protocol and the API, so a new tag needs no new field
//! anywhere. The rules read the tags they know through the typed accessors here; any other tag
//! is the operator's own (`zone = "b"`), shown by the API and matched by `?tag_zone=b`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Never promoted, never a switchover target, never a synchronous standby.
pub const NOFAILOVER: &str = "nofailover";
/// Among candidates with the same data, a higher priority wins.
pub const PRIORITY: &str = "priority";
/// The routing proxies send it no read-only sessions.
pub const NOLOADBALANCE: &str = "noloadbalance";
/// Never named in `synchronous_standby_names` (it may still be promoted in `off` mode).
pub const NOSYNC: &str = "nosync";

/// The tags the rules read, and the type each must have.
pub const KNOWN: &[(&str, Kind)] =
    &[(NOFAILOVER, Kind::Bool), (PRIORITY, Kind::Integer), (NOLOADBALANCE, Kind::Bool), (NOSYNC, Kind::Bool)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Integer,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    pub fn new() -> Tags {
        Tags::default()
    }

    /// Sets `key` to `value` (builder style, for tests and the launcher).
    pub fn with(mut self, key: &str, value: impl ToString) -> Tags {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    pub fn nofailover(&self) -> bool {
        self.flag(NOFAILOVER)
    }

    pub fn noloadbalance(&self) -> bool {
        self.flag(NOLOADBALANCE)
    }

    pub fn nosync(&self) -> bool {
        self.flag(NOSYNC)
    }

    /// 0 when not set (or not a number: the config refuses that).
    pub fn priority(&self) -> i32 {
        self.get(PRIORITY).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }

    /// Whether the tag `key` has `value`, as a health check's `?tag_<key>=<value>` asks: the
    /// known flags compare as booleans (`True` matches `true`), an unset flag is `false`, and an
    /// unset priority is `0`; other tags compare ignoring ASCII case, as Patroni's checks do.
    pub fn matches(&self, key: &str, value: &str) -> bool {
        match KNOWN.iter().find(|(k, _)| *k == key).map(|(_, kind)| kind) {
            Some(Kind::Bool) => value.parse::<bool>().ok().or_else(|| bool_word(value)) == Some(self.flag(key)),
            Some(Kind::Integer) => value.trim().parse::<i64>().ok() == Some(i64::from(self.priority())),
            None => self.get(key).is_some_and(|v| v.eq_ignore_ascii_case(value)),
        }
    }

    /// `key=value` pairs, comma separated (for history details and logs).
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "no tags".into();
        }
        self.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    }
}

impl FromIterator<(String, String)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Tags {
        Tags(iter.into_iter().collect())
    }
}

fn bool_word(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_accessors_read_the_known_tags_and_default_when_unset() {
        let none = Tags::new();
        assert!(!none.nofailover() && !none.noloadbalance() && !none.nosync());
        assert_eq!(none.priority(), 0);
        let t = Tags::new().with(NOFAILOVER, true).with(PRIORITY, -3).with("zone", "b");
        assert!(t.nofailover() && !t.noloadbalance());
        assert_eq!(t.priority(), -3);
        assert_eq!(t.get("zone"), Some("b"));
        assert_eq!(t.describe(), "nofailover=true, priority=-3, zone=b");
    }

    #[test]
    fn matches_compares_flags_as_booleans_and_other_tags_as_written() {
        let t = Tags::new().with(NOFAILOVER, true).with(PRIORITY, 3).with("zone", "b");
        assert!(t.matches("nofailover", "True"));
        assert!(!t.matches("nofailover", "false"));
        assert!(t.matches("noloadbalance", "false"), "an unset flag is false");
        assert!(!t.matches("noloadbalance", "maybe"));
        assert!(t.matches("priority", "3") && !t.matches("priority", "4"));
        assert!(Tags::new().matches("priority", "0"));
        assert!(t.matches("zone", "b") && t.matches("zone", "B") && !t.matches("zone", "c") && !t.matches("rack", "b"));
    }

    #[test]
    fn serialises_as_a_plain_map() {
        let t = Tags::new().with(NOFAILOVER, true).with("zone", "b");
        let json = serde_json::to_string(&t).expect("encodes");
        assert_eq!(json, r#"{"nofailover":"true","zone":"b"}"#);
        assert_eq!(serde_json::from_str::<Tags>(&json).expect("decodes"), t);
    }
}
