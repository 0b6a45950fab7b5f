//! The `[tags]` table: a member's tags as written in its file, checked for the types pgvigil's
//! rules need, and turned into the core's map of strings (`vigil_core::Tags`).

use super::{bad, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[tags]`: any keys, each a boolean, an integer or a string, kept as written (so the config
/// serialises back the same); the member reports them as strings ([`TagTable::tags`]). The tags
/// pgvigil's rules read (`vigil_core::tags::KNOWN`) are checked for their type.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(transparent)]
pub struct TagTable(pub BTreeMap<String, TagValue>);

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged, expecting = "a boolean, an integer or a string")]
pub enum TagValue {
    Bool(bool),
    Integer(i64),
    Text(String),
}

impl From<bool> for TagValue {
    fn from(b: bool) -> TagValue {
        TagValue::Bool(b)
    }
}

impl From<i64> for TagValue {
    fn from(i: i64) -> TagValue {
        TagValue::Integer(i)
    }
}

impl From<&str> for TagValue {
    fn from(t: &str) -> TagValue {
        TagValue::Text(t.to_string())
    }
}

impl TagTable {
    pub fn tags(&self) -> vigil_core::Tags {
        self.0
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    TagValue::Bool(b) => b.to_string(),
                    TagValue::Integer(i) => i.to_string(),
                    TagValue::Text(t) => t.clone(),
                };
                (k.clone(), text)
            })
            .collect()
    }

    /// The tags pgvigil's rules read must have their type (a string "true" is not a boolean).
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        use vigil_core::tags::{Kind, KNOWN};
        for (key, kind) in KNOWN {
            let ok = match (kind, self.0.get(*key)) {
                (_, None) | (Kind::Bool, Some(TagValue::Bool(_))) => true,
                (Kind::Integer, Some(TagValue::Integer(i))) => i32::try_from(*i).is_ok(),
                _ => false,
            };
            if !ok {
                let want = match kind {
                    Kind::Bool => "true or false (unquoted)",
                    Kind::Integer => "an integer from -2147483648 to 2147483647 (unquoted)",
                };
                return Err(bad(format!("tags.{key}"), format!("must be {want}")));
            }
        }
        Ok(())
    }

    /// Sets a tag (for tests and the launcher).
    pub fn set(&mut self, key: &str, value: impl Into<TagValue>) {
        self.0.insert(key.to_string(), value.into());
    }

    pub fn with(mut self, key: &str, value: impl Into<TagValue>) -> TagTable {
        self.set(key, value);
        self
    }
}
