//! Mutations of valid encodings (bytes, text, JSON) and the odd values fuzzers try first.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

/// One change to a byte string; positions are taken modulo its length.
#[derive(Clone, Debug)]
pub enum Edit {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// `len` bytes from `at` repeated `times` times (deep nesting, long runs).
    Repeat {
        at: usize,
        len: usize,
        times: usize,
    },
}

/// Bytes that change a parser's path: protobuf varint continuation and wire types, JSON and TOML
/// punctuation, digits, quotes, an invalid UTF-8 byte.
const INTERESTING: &[u8] = b"\x00\x01\x7f\x80\xff\x08\x0a\x12\x1a\x22\x0b\x0c\"'{}[]=,.:-+0123456789eE\\\n #";

fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(prop::sample::select(INTERESTING), 1..8), vec(any::<u8>(), 1..8)]
}

pub fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (at, prop_oneof![prop::sample::select(INTERESTING), any::<u8>()]).prop_map(|(at, byte)| Edit::Set { at, byte }),
        (at, interesting_bytes()).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (at, 1usize..16).prop_map(|(at, len)| Edit::Remove { at, len }),
        at.prop_map(|at| Edit::Truncate { at }),
        (at, 1usize..8, 2usize..64).prop_map(|(at, len, times)| Edit::Repeat { at, len, times }),
    ]
}

/// Zero to three edits: zero keeps some inputs valid, so the accepting path is fuzzed too.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    vec(edit(), 0..4)
}

pub fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        let pos = |at: usize| if len == 0 { 0 } else { at % len };
        match e {
            Edit::Flip { at, bit } if len > 0 => bytes[pos(*at)] ^= 1 << bit,
            Edit::Set { at, byte } if len > 0 => bytes[pos(*at)] = *byte,
            Edit::Insert { at, bytes: b } => {
                let p = if len == 0 { 0 } else { at % (len + 1) };
                bytes.splice(p..p, b.iter().copied());
            }
            Edit::Remove { at, len: n } if len > 0 => {
                let p = pos(*at);
                bytes.drain(p..(p + n).min(len));
            }
            Edit::Truncate { at } => bytes.truncate(if len == 0 { 0 } else { at % len }),
            Edit::Repeat { at, len: n, times } if len > 0 => {
                let p = pos(*at);
                let run = bytes[p..(p + n).min(len)].to_vec();
                let repeated: Vec<u8> = run.iter().copied().cycle().take(run.len() * times).collect();
                bytes.splice(p..p, repeated);
            }
            _ => {}
        }
    }
    bytes
}

/// Text edits: the byte edits, with any broken UTF-8 replaced (a config file is read as text).
pub fn apply_text(text: &str, edits: &[Edit]) -> String {
    String::from_utf8_lossy(&apply(text.as_bytes().to_vec(), edits)).into_owned()
}

/// Names a cluster uses, and names it does not know.
pub fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "w", "x"]).prop_map(String::from),
        1 => odd_text(),
    ]
}

/// Strings that break assumptions: empty, blank, control characters, unicode, long, numbers and
/// durations out of range, anything.
pub fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => prop::sample::select(vec![
            "", " ", "\t\n", "\0", "é", "𝔘𝔫𝔦", "\u{202e}", "-1", "0", "NaN", "1e400",
            "18446744073709551616", "9223372036854775808", "250ms", "0s", "1ns", "2s",
            "500000000000years", "18446744073709551615s", "99999999999999999999ms", "127.0.0.1:7001",
            "[::1]:0", "/", "relative/path", "true", "on",
        ])
        .prop_map(String::from),
        1 => (prop::sample::select(vec!["x", "é", "{", "\""]), 1000usize..20_000).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Numbers at the edges of the types they end up in (u16 ports, u32 counts, i32 priorities, u64).
pub fn odd_integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            -1,
            65_535,
            65_536,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
        ]),
        any::<i64>(),
    ]
}

/// Any JSON value, odd leaves first, nested two deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        odd_integer().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![u64::MAX, 1 << 53, (1 << 53) + 1]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        name().prop_map(Value::from),
        odd_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(odd_text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to a JSON document; node numbers (preorder) are taken modulo the node count.
#[derive(Clone, Debug)]
pub enum JsonEdit {
    Replace {
        node: usize,
        value: Value,
    },
    /// Remove a key of an object or an element of an array.
    Remove {
        node: usize,
        which: usize,
    },
    /// Append a copy of an element of an array (a duplicate member).
    Duplicate {
        node: usize,
        which: usize,
    },
    /// Add a key to an object (an unknown field, or a known one twice over).
    Add {
        node: usize,
        key: String,
        value: Value,
    },
}

pub fn json_edit(keys: &'static [&'static str]) -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![prop::sample::select(keys).prop_map(String::from), odd_text()];
    prop_oneof![
        3 => (any::<usize>(), json_value()).prop_map(|(node, value)| JsonEdit::Replace { node, value }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, which)| JsonEdit::Remove { node, which }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, which)| JsonEdit::Duplicate { node, which }),
        1 => (any::<usize>(), key, json_value()).prop_map(|(node, key, value)| JsonEdit::Add { node, key, value }),
    ]
}

pub fn apply_json(v: &mut Value, edits: &[JsonEdit]) {
    for e in edits {
        let count = nodes(v);
        let (JsonEdit::Replace { node, .. }
        | JsonEdit::Remove { node, .. }
        | JsonEdit::Duplicate { node, .. }
        | JsonEdit::Add { node, .. }) = e;
        let Some(target) = nth(v, node % count) else { continue };
        match (e, target) {
            (JsonEdit::Replace { value, .. }, t) => *t = value.clone(),
            (JsonEdit::Remove { which, .. }, Value::Object(o)) if !o.is_empty() => {
                let key = o.keys().nth(which % o.len()).cloned().unwrap_or_default();
                o.remove(&key);
            }
            (JsonEdit::Remove { which, .. }, Value::Array(a)) if !a.is_empty() => {
                a.remove(which % a.len());
            }
            (JsonEdit::Duplicate { which, .. }, Value::Array(a)) if !a.is_empty() => {
                let copy = a[which % a.len()].clone();
                a.push(copy);
            }
            (JsonEdit::Add { key, value, .. }, Value::Object(o)) => {
                o.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
}

fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(o) => o.values().map(nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node of `v` in preorder.
fn nth(v: &mut Value, n: usize) -> Option<&mut Value> {
    fn go<'a>(v: &'a mut Value, left: &mut usize) -> Option<&'a mut Value> {
        if *left == 0 {
            return Some(v);
        }
        *left -= 1;
        match v {
            Value::Array(a) => a.iter_mut().find_map(|c| go(c, left)),
            Value::Object(o) => o.values_mut().find_map(|c| go(c, left)),
            _ => None,
        }
    }
    go(v, &mut { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_edits_stay_in_bounds() {
        let e = |edits: &[Edit]| String::from_utf8_lossy(&apply(b"abcdef".to_vec(), edits)).into_owned();
        assert_eq!(e(&[Edit::Flip { at: 7, bit: 0 }]), "accdef");
        assert_eq!(e(&[Edit::Insert { at: 9, bytes: b"XY".to_vec() }]), "abXYcdef");
        assert_eq!(e(&[Edit::Remove { at: 5, len: 10 }]), "abcde");
        assert_eq!(e(&[Edit::Repeat { at: 4, len: 9, times: 2 }]), "abcdefefef");
        assert_eq!(e(&[Edit::Truncate { at: 3 }, Edit::Truncate { at: 3 }, Edit::Set { at: 1, byte: b'!' }]), "");
        assert_eq!(apply(Vec::new(), &[Edit::Flip { at: 3, bit: 1 }, Edit::Remove { at: 0, len: 2 }]), b"");
    }

    #[test]
    fn json_edits_reach_every_node() {
        let mut v = json!({"members": [{"name": "a"}], "x": 1});
        assert_eq!(nodes(&v), 5);
        apply_json(&mut v, &[JsonEdit::Duplicate { node: 1, which: 0 }]);
        assert_eq!(v, json!({"members": [{"name": "a"}, {"name": "a"}], "x": 1}));
        assert_eq!(nodes(&v), 7);
        apply_json(&mut v, &[JsonEdit::Replace { node: 6, value: json!(null) }]);
        assert_eq!(v, json!({"members": [{"name": "a"}, {"name": "a"}], "x": null}));
        apply_json(&mut v, &[JsonEdit::Remove { node: 0, which: 1 }]);
        assert_eq!(v, json!({"members": [{"name": "a"}, {"name": "a"}]}));
    }
}
