//! The HTTP API's input: request bodies (`POST /switchover` ... and `/pause`), their `at` times,
//! the health checks' query strings, and the bearer token.
//!
//! Properties: never a panic; a refused body says why (the API answers 400 with it); an accepted
//! role change goes through the coordinator's decision and, when proposed, applies to the state
//! it was decided on (the path it takes through Raft on every member); an accepted time is in the
//! future and can be written back; a mutating request is authorised only by the exact token, and
//! the exact token always is.

use super::commands;
use super::mutate;
use super::Outcome;
use axum::http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use pgvigil::fuzzing::{parse_at, pause_body, request_body, Replicated};
use pgvigil::health;
use pgvigil::http_api::authorize;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use vigil_core::format_unix_ms;
use vigil_core::{Coordinator, Decision, Input, Request, Timings};
use vigil_raft::StateMachine;

#[derive(Clone, Debug)]
pub enum ApiInput {
    Body { action: String, body: Vec<u8>, now_ms: u64 },
    At { text: String, now_ms: u64 },
    Query(Vec<(String, String)>),
}

const ACTIONS: &[&str] = &["switchover", "failover", "failback", "reinit", "cancel_switchover", "pause", "resume"];
const FIELDS: &[&str] = &["candidate", "leader", "primary", "at", "scheduled_at", "member", "reason"];

/// Now: this year, any time since 1970, or any u64.
fn now_ms() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1_796_083_200_000), 0..=4_000_000_000_000u64, any::<u64>()]
}

/// RFC 3339-like times, valid and not, biased to the edges (year 9999, month 12, big offsets).
pub fn timestamp() -> impl Strategy<Value = String> {
    let year = prop_oneof![1970..2100u32, Just(9999), 0..=10_000u32];
    let month = prop_oneof![Just(12), 1..=12u32, 0..=13u32];
    let day = prop_oneof![Just(31), 1..=28u32, 0..=32u32];
    let hms = (prop_oneof![0..24u32, 0..=99u32], 0..=60u32, 0..=61u32);
    let frac = prop_oneof![Just(String::new()), (0..1_000_000_000u32).prop_map(|f| format!(".{f}"))];
    let zone = prop_oneof![
        prop::sample::select(vec!["Z", "z", "", "+00:00", "-00:00"]).prop_map(String::from),
        (prop::sample::select(vec!['+', '-']), 0..=99u32, 0..=99u32).prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        (prop::sample::select(vec!['+', '-']), 0..=9999u32).prop_map(|(s, hm)| format!("{s}{hm:04}")),
    ];
    (year, month, day, hms, frac, zone, prop::sample::select(vec!["T", "t", " "])).prop_map(
        |(y, mo, d, (h, mi, s), frac, zone, t)| format!("{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{frac}{zone}"),
    )
}

pub fn body_input() -> impl Strategy<Value = ApiInput> {
    let action = prop_oneof![4 => prop::sample::select(ACTIONS).prop_map(String::from), 1 => mutate::odd_text()];
    let field = prop_oneof![4 => prop::sample::select(FIELDS).prop_map(String::from), 1 => mutate::odd_text()];
    let value = prop_oneof![
        3 => mutate::name().prop_map(Value::from),
        3 => timestamp().prop_map(Value::from),
        2 => mutate::json_value(),
    ];
    let object = btree_map(field, value, 0..4).prop_map(|m| Value::Object(m.into_iter().collect()));
    let json = (object, mutate::edits()).prop_map(|(o, e)| mutate::apply(o.to_string().into_bytes(), &e));
    let body = prop_oneof![4 => json, 1 => vec(any::<u8>(), 0..64)];
    let size = (
        prop_oneof![any::<u64>().prop_map(|n| n.to_string()), mutate::odd_text()],
        prop::sample::select(vec!["", "B", "kB", "MB", "GB", "TB", " gb", "PB", "MiB"]),
    )
        .prop_map(|(n, u)| format!("{n}{u}"));
    let key = prop_oneof![
        prop::sample::select(vec!["lag", "replication_state", "tag_nofailover", "tag_zone"]).prop_map(String::from),
        mutate::odd_text(),
    ];
    let query_value = prop_oneof![size, Just("streaming".to_string()), mutate::odd_text()];
    prop_oneof![
        3 => (action, body, now_ms()).prop_map(|(action, body, now_ms)| ApiInput::Body { action, body, now_ms }),
        2 => (prop_oneof![4 => timestamp(), 1 => mutate::odd_text()], now_ms())
            .prop_map(|(text, now_ms)| ApiInput::At { text, now_ms }),
        1 => vec((key, query_value), 0..4).prop_map(ApiInput::Query),
    ]
}

pub fn check_body(input: &ApiInput) -> Outcome {
    let refused = |e: String| {
        assert!(!e.trim().is_empty(), "a refusal without a reason");
        Outcome::Rejected
    };
    match input {
        ApiInput::Body { action, body, .. } if action == "pause" || action == "resume" => {
            pause_body(body).map_or_else(refused, |_| Outcome::Accepted)
        }
        ApiInput::Body { action, body, now_ms } => match request_body(action, body, *now_ms) {
            Err(e) => refused(e),
            Ok(req) => {
                if let Request::Switchover { not_before_unix_ms: t, .. } | Request::Failback { not_before_unix_ms: t } =
                    req
                {
                    assert!(t == 0 || t > *now_ms, "{req:?} accepted at {now_ms}: not in the future");
                }
                decide(&req, *now_ms);
                Outcome::Accepted
            }
        },
        ApiInput::At { text, now_ms } => match parse_at(text, *now_ms) {
            Err(e) => refused(e),
            Ok(ms) => {
                assert!(ms > *now_ms, "{text:?} accepted as {ms}, not after {now_ms}");
                // The history, the answer and `pgvigil list` write it back.
                let written = format_unix_ms(ms);
                assert_eq!(parse_at(&written, 0), Ok(ms / 1000 * 1000), "{text:?} written back as {written:?}");
                Outcome::Accepted
            }
        },
        ApiInput::Query(pairs) => health::parse_filters(pairs).map_or_else(refused, |_| Outcome::Accepted),
    }
}

/// The coordinator's decision on an accepted request, against a cluster with a primary and two
/// standbys; a proposed command must apply on every member, as committed (encoded bytes).
fn decide(req: &Request, now_ms: u64) {
    let mut coordinator = Coordinator::new(["a", "b", "c", "w"].map(String::from), Timings::default());
    let elected = Instant::now();
    for state in commands::states() {
        coordinator.step(elected, &state, Input::Leadership(Some(1)));
        // Past the settling time of a new coordinator, which would have the request wait.
        let input = Input::Request { request: req.clone(), wall_ms: now_ms };
        let out = coordinator.step(elected + Duration::from_secs(5), &state, input);
        if let Some(Ok(Decision::Propose(cmd))) = out.decision {
            let mut member = Replicated { state: state.clone() };
            member.apply(1, &cmd.encode().expect("a command encodes"));
            assert_eq!(state.clone().apply(&cmd), Ok(()), "proposed {cmd:?} for {req:?}, and it does not apply");
            assert_ne!(member.state, state, "proposed {cmd:?} for {req:?} changed nothing");
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthInput {
    /// `api.token`; None: no token configured.
    pub token: Option<String>,
    /// The `Authorization` header's bytes; None: no header.
    pub header: Option<Vec<u8>>,
}

pub fn auth_input() -> impl Strategy<Value = AuthInput> {
    let token = prop_oneof![
        4 => "[!-~]{1,24}",
        1 => "[!-~]{1,8}[ ][!-~]{1,8}",
        1 => mutate::odd_text().prop_filter("config refuses a blank token", |t| !t.trim().is_empty()),
    ];
    let with_header = token.prop_flat_map(|t| {
        let exact = format!("Bearer {t}");
        let header = prop_oneof![
            2 => Just(Some(exact.clone().into_bytes())),
            4 => mutate::edits().prop_map(move |e| Some(mutate::apply(exact.clone().into_bytes(), &e))),
            1 => prop::sample::select(vec!["Bearer ", "Bearer", "bearer ", "Basic ", "Bearer  ", " Bearer "])
                .prop_map({
                    let t = t.clone();
                    move |p| Some(format!("{p}{t}").into_bytes())
                }),
            1 => prop::option::of(vec(any::<u8>(), 0..32)),
        ];
        (Just(Some(t)), header)
    });
    let without = prop::option::of(vec(any::<u8>(), 0..32)).prop_map(|h| (None, h));
    prop_oneof![8 => with_header, 1 => without].prop_map(|(token, header)| AuthInput { token, header })
}

pub fn check_auth(input: &AuthInput) -> Outcome {
    let mut headers = HeaderMap::new();
    if let Some(h) = &input.header {
        match HeaderValue::from_bytes(h) {
            Ok(v) => {
                headers.insert(AUTHORIZATION, v);
            }
            // Not a header value: the HTTP server refuses the request before any handler.
            Err(_) => return Outcome::Rejected,
        }
    }
    let token = input.token.as_deref();
    match authorize(token, &headers) {
        Ok(()) => {
            let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            let given = given.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            assert!(token.is_some() && given == token, "authorised by {given:?}, the token is {token:?}");
            Outcome::Accepted
        }
        Err(why) => {
            assert!(!why.trim().is_empty());
            if let (Some(t), Some(h)) = (token, &input.header) {
                let presentable = t == t.trim() && t.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
                assert!(
                    !presentable || *h != format!("Bearer {t}").into_bytes(),
                    "the exact token {t:?} refused: {why}"
                );
            }
            Outcome::Rejected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn api_bodies_never_panic_and_refusals_say_why(input in body_input()) {
            check_body(&input);
        }

        #[test]
        fn only_the_exact_token_authorises(input in auth_input()) {
            check_auth(&input);
        }
    }
}
