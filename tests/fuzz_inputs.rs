//! Property tests on everything that parses outside input: the replica wire
//! decoder, the config loader, and the HTTP API's path and body validation.
//! The property is the same everywhere: no panic, and every invalid input
//! gets a clear error (a message naming the source, or a 4xx with a JSON
//! body), never a 5xx.

use std::time::Duration;

use pika::config::{Sources, load};
use pika_membership::frame::{self, FrameDecoder};
use pika_replication::election::Position;
use pika_replication::wire::PeerMessage;
use pika_replication::{Change, ChangeKind, ConfigPath, Format, Meta};
use proptest::prelude::*;

fn change(revision: u64, path: String, data: Vec<u8>) -> Change {
    Change {
        revision,
        epoch: 1,
        path,
        version: 1,
        created_at_ms: 0,
        created_revision: revision,
        kind: ChangeKind::Put {
            meta: Meta {
                format: Format::Text,
                description: String::new(),
                flags: 0,
            },
            data,
        },
        request_id: None,
        author: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes fed to the replica decoder, in any chunking: no panic, and
    /// at most one error (a stream is dropped at its first bad frame).
    #[test]
    fn the_wire_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cut in 1usize..512) {
        let mut decoder = FrameDecoder::new(1 << 20);
        for chunk in bytes.chunks(cut) {
            decoder.push(chunk);
            while let Ok(Some(_)) = decoder.decode::<PeerMessage>() {}
        }
    }

    /// Real diffs survive the framing whatever the chunking; truncating
    /// the last frame leaves it pending, never half-decoded.
    #[test]
    fn diffs_round_trip_and_truncation_waits(
        revisions in proptest::collection::vec(1u64..1_000_000, 1..8),
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        cut in 1usize..300,
    ) {
        let message = PeerMessage::Diff {
            epoch: 3,
            prev: Position { epoch: 2, revision: 9 },
            changes: revisions
                .iter()
                .map(|r| std::sync::Arc::new(change(*r, format!("p/{r}"), data.clone())))
                .collect(),
            commit: 8,
            more: false,
        };
        let bytes = frame::encode(&message, 1 << 20).expect("encode");
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&bytes[..bytes.len() - 1]);
        prop_assert!(matches!(decoder.decode::<PeerMessage>(), Ok(None)));
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut got = None;
        for chunk in bytes.chunks(cut) {
            decoder.push(chunk);
            if let Some(m) = decoder.decode::<PeerMessage>().expect("valid frame") {
                got = Some(m);
            }
        }
        prop_assert_eq!(got, Some(message));
    }

    /// Any path string: accepted ones satisfy every documented rule,
    /// refused ones get a message.
    #[test]
    fn config_paths_are_valid_or_refused(raw in "\\PC{0,40}|[a-z./]{0,20}|.{0,8}") {
        match ConfigPath::new(raw.clone()) {
            Ok(path) => {
                let p = path.as_str();
                prop_assert!(!p.is_empty() && p.len() <= 1024);
                prop_assert!(p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                prop_assert!(!p.chars().any(char::is_control));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Any content in any format: validation answers, never panics.
    #[test]
    fn content_validation_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for format in [Format::Json, Format::Yaml, Format::Toml, Format::Text] {
            if let Err(e) = format.validate(&bytes) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any YAML-ish file and any PIKA_* value: the loader loads or names
    /// the file or variable in its error.
    #[test]
    fn the_config_loader_loads_or_names_the_source(
        text in "([a-z_]{1,12}: ?[a-zA-Z0-9 .:\\-\\[\\]{}\"']{0,16}\n {0,4}){0,6}",
        env_value in "[a-zA-Z0-9 .:\\-]{0,12}",
        env_key in prop::sample::select(vec![
            "PIKA_SERVER_PORT", "PIKA_CLUSTER_HEARTBEAT_INTERVAL", "PIKA_CLUSTER_REPLICAS",
            "PIKA_CLUSTER_ENABLED", "PIKA_STORAGE_HISTORY", "PIKA_CLUSTER_DNS_ADDR",
        ]),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("fuzz.yaml");
        std::fs::write(&file, &text).expect("write");
        let sources = Sources {
            flag: Some(file),
            env: vec![(env_key.to_string(), env_value)],
            search: Vec::new(),
        };
        if let Err(e) = load(&sources) {
            let e = e.to_string();
            prop_assert!(e.contains("fuzz.yaml") || e.contains(env_key), "{}", e);
        }
    }
}

/// Arbitrary paths and bodies against a live node: every refusal is a 4xx
/// with a JSON `message`; nothing is a 5xx.
#[test]
fn the_http_api_answers_garbage_with_4xx_json() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = pika::config::Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.storage.bw.path = dir.path().join("data");
    config.auth.admin_token = pika_campaign::TEST_ADMIN_TOKEN.into();
    let node = runtime
        .block_on(pika::node::Node::start(config))
        .expect("node");
    let url = node.url();
    let client = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    let strategy = (
        "[a-zA-Z0-9%./_\\-]{0,24}",
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\{\"data\": ?\"[A-Za-z0-9+/=]{0,12}\"(, ?\"meta\": ?\\{\"format\": ?\"[a-z]{0,5}\"\\})?\\}".prop_map(String::into_bytes),
        ],
    );
    let result = runner.run(&strategy, |(path, body)| {
        let response = client
            .post(format!("{url}/api/v1/file/{path}"))
            .body(body)
            .send()
            .expect("the node answers");
        let status = response.status();
        prop_assert!(!status.is_server_error(), "{} for {:?}", status, path);
        if status.is_client_error() {
            let json: serde_json::Value = response.json().expect("a JSON error body");
            prop_assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // The Authorization header, as anything a client could send: never a
    // panic, never a 5xx, always a 401 with a JSON body, nothing written.
    // Bytes a header may carry (no CR, LF or NUL), around the shapes a
    // real header has.
    let no_token = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let header = prop_oneof![
        proptest::collection::vec(
            any::<u8>().prop_filter("header bytes", |b| !matches!(b, b'\r' | b'\n' | 0)),
            0..96
        ),
        "(Bearer|bearer|BEARER|Basic|Token)? ?(pika_)?[0-9a-fA-F]{0,70} ?"
            .prop_map(String::into_bytes),
        "Bearer pika_[0-9a-f]{64}".prop_map(String::into_bytes),
    ];
    let revision = || {
        client
            .get(format!("{url}/readyz"))
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .and_then(|v| v["revision"].as_u64())
            .expect("readyz answers with the revision")
    };
    let before = revision();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    let result = runner.run(&header, |value| {
        let Ok(value) = reqwest::header::HeaderValue::from_bytes(&value) else {
            return Ok(()); // not sendable as a header at all
        };
        let response = no_token
            .post(format!("{url}/api/v1/file/fuzz/auth"))
            .header("authorization", value.clone())
            .json(&serde_json::json!({"data": ""}))
            .send()
            .expect("the node answers");
        prop_assert_eq!(response.status().as_u16(), 401, "for {:?}", value);
        let json: serde_json::Value = response.json().expect("a JSON error body");
        prop_assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        Ok(())
    });
    assert_eq!(revision(), before, "a refused request wrote nothing");
    runtime.block_on(node.shutdown()).expect("shutdown");
    if let Err(e) = result {
        panic!("{e}");
    }
}
