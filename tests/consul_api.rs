//! The Consul KV API (`/v1/kv`), on real nodes:
//! - py-consul and the npm `consul` package, unmodified, drive a 3-node
//!   cluster (tests/consul_clients). Without them the test says
//!   "skipped", unless `PIKA_REQUIRE_CONSUL_CLIENTS=1` (CI sets it and
//!   installs both), where it fails.
//! - A write through either API on one node is read through the other on
//!   another node right after its answer.
//! - Bad input gets a 4xx with a JSON message; what is not offered, a 501
//!   that names it.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::{ADMIN_TOKEN, client};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul_clients");

fn required() -> bool {
    std::env::var("PIKA_REQUIRE_CONSUL_CLIENTS").is_ok_and(|v| v == "1")
}

/// `host:port` of each live node, as the Consul clients take them.
fn addresses(c: &Cluster) -> String {
    c.live()
        .into_iter()
        .map(|i| c.url(i).trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn create_token(url: &str, name: &str, scopes: &[&str]) -> String {
    let response = client()
        .post(format!("{url}/api/v1/tokens"))
        .json(&json!({"name": name, "scopes": scopes}))
        .send()
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201, "{:?}", response.text());
    let created: Value = response.json().expect("JSON");
    created["token"].as_str().expect("a token").to_string()
}

/// Runs one client script against the cluster; false when the client is
/// not installed here (and not required).
fn run_client(c: &Cluster, narrow: &str, program: &str, script: &str, prefix: &str) -> bool {
    let output = Command::new(program)
        .arg(Path::new(CLIENTS).join(script))
        .current_dir(CLIENTS)
        .env("PIKA_NODES", addresses(c))
        .env("PIKA_TOKEN", ADMIN_TOKEN)
        .env("PIKA_NARROW_TOKEN", narrow)
        .env("PIKA_PREFIX", prefix)
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            assert!(!required(), "cannot run {program}: {e}");
            eprintln!("skipped {script}: cannot run {program}: {e}");
            return false;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{script}:\n{stdout}{stderr}");
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{script}: {stdout}");
    true
}

fn installed(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .current_dir(CLIENTS)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !required(),
            "PIKA_REQUIRE_CONSUL_CLIENTS=1 but {program} cannot load its Consul client \
             (pip install -r tests/consul_clients/requirements.txt; npm ci --prefix tests/consul_clients)"
        );
        eprintln!("skipped: {program} cannot load its Consul client here");
    }
    ok
}

#[test]
fn consul_clients_drive_a_three_node_cluster() {
    let python = installed("python3", &["-c", "import consul"]);
    let node = installed("node", &["-e", "require('consul')"]);
    if !python && !node {
        return;
    }
    let c = Cluster::start(&[91, 92, 93]);
    c.leader(Duration::from_secs(20));
    for i in c.live() {
        support::wait_until_it_may_read(&c.url(i));
    }
    let narrow = create_token(&c.url(0), "narrow", &["other/**:read,write,delete"]);
    if python {
        run_client(&c, &narrow, "python3", "check.py", "py");
    }
    if node {
        run_client(&c, &narrow, "node", "check.js", "js");
    }
}

fn consul_put(url: &str, key: &str, body: Vec<u8>, query: &str) -> (u16, Value) {
    let r = client()
        .put(format!("{url}/v1/kv/{key}{query}"))
        .body(body)
        .send()
        .expect("answered");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn consul_get(url: &str, key: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{url}/v1/kv/{key}"))
        .send()
        .expect("answered");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn each_api_reads_what_the_other_wrote_on_another_node() {
    let c = Cluster::start(&[94, 95, 96]);
    c.leader(Duration::from_secs(20));
    for i in c.live() {
        support::wait_until_it_may_read(&c.url(i));
    }
    let (one, three) = (c.url(0), c.url(2));
    let mut created = None;
    let mut modified = 0;
    for round in 0..5u64 {
        // Consul on node 1, native on node 3.
        let value = format!("consul round {round}");
        let (status, answer) = consul_put(
            &one,
            "cross/from-consul.txt",
            value.clone().into_bytes(),
            &format!("?flags={round}"),
        );
        assert_eq!((status, answer), (200, json!(true)));
        let file: Value = client()
            .get(format!("{three}/api/v1/file/cross/from-consul.txt"))
            .send()
            .and_then(|r| r.json())
            .expect("a JSON file");
        assert_eq!(file["data"], json!(BASE64.encode(&value)), "round {round}");
        assert_eq!(file["meta"]["format"], "text");
        assert_eq!(file["meta"]["flags"], round);

        // Native on node 1, Consul on node 3.
        let value = format!("{{\"round\": {round}}}");
        let (status, _) = support::put(&one, "cross/from-native.json", &value, None);
        assert_eq!(status, 201);
        let (status, pairs) = consul_get(&three, "cross/from-native.json");
        assert_eq!(status, 200, "{pairs}");
        assert_eq!(
            pairs[0]["Value"],
            json!(BASE64.encode(&value)),
            "round {round}"
        );
        assert_eq!(pairs[0]["Key"], "cross/from-native.json");
        // The first version's revision stays the key's CreateIndex; each
        // write moves its ModifyIndex.
        let create = pairs[0]["CreateIndex"].as_u64().expect("CreateIndex");
        let modify = pairs[0]["ModifyIndex"].as_u64().expect("ModifyIndex");
        assert_eq!(*created.get_or_insert(create), create, "round {round}");
        assert!(
            modify > modified,
            "round {round}: {modify} after {modified}"
        );
        modified = modify;
    }
}

fn status_and_message(r: reqwest::blocking::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or_default().to_string();
    (status, message)
}

#[test]
fn bad_input_is_refused_and_what_is_not_offered_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::spawn(&dir.path().join("data"), None);
    let url = &node.url;
    let http = client();

    // Values are bytes: every byte value round-trips, raw and as JSON.
    let blob: Vec<u8> = (0..=255u8).rev().cycle().take(4096).collect();
    assert_eq!(
        consul_put(url, "bin/blob", blob.clone(), ""),
        (200, json!(true))
    );
    let raw = http
        .get(format!("{url}/v1/kv/bin/blob?raw"))
        .send()
        .expect("answered");
    assert_eq!(
        raw.headers()["content-type"],
        "application/octet-stream",
        "not UTF-8 and no extension: binary"
    );
    assert_eq!(raw.bytes().expect("a body").to_vec(), blob);
    let (_, pairs) = consul_get(url, "bin/blob");
    assert_eq!(pairs[0]["Value"], json!(BASE64.encode(&blob)));
    let file: Value = http
        .get(format!("{url}/api/v1/file/bin/blob"))
        .send()
        .and_then(|r| r.json())
        .expect("JSON");
    assert_eq!(file["meta"]["format"], "binary");

    // A key that is not a pika path: 400, with the reason, nothing written.
    let before = consul_get(url, "bin/blob").1;
    for key in ["bad//key", "trailing/", "control%01char"] {
        let r = http
            .put(format!("{url}/v1/kv/{key}"))
            .body("x")
            .send()
            .expect("answered");
        let (status, message) = status_and_message(r);
        assert_eq!(status, 400, "{key}: {message}");
        assert!(
            message.contains("not a valid pika path"),
            "{key}: {message}"
        );
    }
    // A key whose extension names a format gets it, and is checked.
    let r = http
        .put(format!("{url}/v1/kv/app/settings.json"))
        .body("{\"port\": }")
        .send()
        .expect("answered");
    let (status, message) = status_and_message(r);
    assert_eq!(status, 400);
    assert!(message.contains("line 1"), "{message}");
    assert_eq!(consul_get(url, "app/settings.json").0, 404);
    assert_eq!(consul_get(url, "bin/blob").1, before);

    // Bad query parameters.
    for query in ["?index=3&wait=soon", "?cas=-1", "?flags=x"] {
        let r = http
            .put(format!("{url}/v1/kv/app/q{query}"))
            .body("x")
            .send()
            .expect("answered");
        assert_eq!(status_and_message(r).0, 400, "{query}");
    }
    // A token in the URL is refused, even a valid one.
    let r = reqwest::blocking::Client::new()
        .get(format!("{url}/v1/kv/bin/blob?token={ADMIN_TOKEN}"))
        .send()
        .expect("answered");
    let (status, message) = status_and_message(r);
    assert_eq!(status, 400);
    assert!(message.contains("X-Consul-Token"), "{message}");
    // X-Consul-Token is a pika token; no token at all is a 401.
    let bare = reqwest::blocking::Client::new();
    let r = bare
        .get(format!("{url}/v1/kv/bin/blob"))
        .header("x-consul-token", ADMIN_TOKEN)
        .send()
        .expect("answered");
    assert_eq!(r.status().as_u16(), 200);
    let r = bare
        .get(format!("{url}/v1/kv/bin/blob"))
        .send()
        .expect("answered");
    assert_eq!(r.status().as_u16(), 401);
    // pika's reserved namespace is not served here either.
    let (status, _) = consul_get(url, "pika/tokens");
    assert_eq!(status, 403);
    let (_, keys) = {
        let r = http
            .get(format!("{url}/v1/kv/?keys"))
            .send()
            .expect("answered");
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    assert!(
        keys.as_array().is_some_and(|k| k
            .iter()
            .all(|k| !k.as_str().unwrap_or("pika").starts_with("pika"))),
        "{keys}"
    );

    // Not offered: 501 naming the feature.
    let cases = [
        ("PUT", "/v1/kv/app/lock?acquire=abc", "sessions and locks"),
        ("PUT", "/v1/kv/app/lock?release=abc", "sessions and locks"),
        ("PUT", "/v1/txn", "transactions"),
        ("PUT", "/v1/session/create", "sessions"),
        ("GET", "/v1/catalog/services", "catalog"),
        ("GET", "/v1/health/service/web", "health"),
        ("GET", "/v1/agent/self", "agent"),
    ];
    for (method, path, feature) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = http
            .request(method, format!("{url}{path}"))
            .send()
            .expect("answered");
        let (status, message) = status_and_message(r);
        assert_eq!(status, 501, "{path}: {message}");
        assert!(message.contains(feature), "{path}: {message}");
    }
    assert_eq!(
        consul_get(url, "app/lock").0,
        404,
        "an ?acquire write wrote nothing"
    );
}

/// Writes through the Consul API retried with their `X-Request-Id` get
/// their first answer:
/// - a `?cas=` put or delete that took effect answers `true` again, though
///   the index it names is no longer the key's (the index was checked
///   here against the key's live version, and the retry answered `false`
///   without reaching the leader's request ids);
/// - a recursive delete retried once a new key appeared under the prefix
///   deletes that key too (each key's own write used an id numbered by
///   its place in the listing: the retry gave the new key a deleted key's
///   id, a 400).
#[test]
fn consul_writes_retried_with_their_request_id_get_their_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let send = |method: reqwest::Method, key: &str, query: &str, id: &str, body: &str| {
        let r = client()
            .request(method, format!("{url}/v1/kv/{key}{query}"))
            .header("x-request-id", id)
            .body(body.to_string())
            .send()
            .expect("answered");
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let index = |key: &str| -> u64 {
        let (status, body) = consul_get(url, key);
        assert_eq!(status, 200, "{body}");
        body[0]["ModifyIndex"].as_u64().expect("an index")
    };

    assert_eq!(consul_put(url, "retry/cas", b"one".to_vec(), "").0, 200);
    let first = index("retry/cas");
    let query = format!("?cas={first}");
    for attempt in 0..2 {
        let (status, body) = send(reqwest::Method::PUT, "retry/cas", &query, "put-1", "two");
        assert_eq!(
            (status, &body),
            (200, &json!(true)),
            "put, attempt {attempt}"
        );
    }
    // Another request with the stale index is refused as before.
    let (status, body) = send(reqwest::Method::PUT, "retry/cas", &query, "put-2", "three");
    assert_eq!((status, &body), (200, &json!(false)), "a stale index");
    let query = format!("?cas={}", index("retry/cas"));
    for attempt in 0..2 {
        let (status, body) = send(reqwest::Method::DELETE, "retry/cas", &query, "del-1", "");
        assert_eq!(
            (status, &body),
            (200, &json!(true)),
            "delete, attempt {attempt}"
        );
    }
    assert_eq!(consul_get(url, "retry/cas").0, 404);

    for key in ["tree/a", "tree/b"] {
        assert_eq!(consul_put(url, key, b"x".to_vec(), "").0, 200);
    }
    let (status, body) = send(reqwest::Method::DELETE, "tree", "?recurse", "rec-1", "");
    assert_eq!((status, &body), (200, &json!(true)));
    assert_eq!(consul_put(url, "tree/c", b"x".to_vec(), "").0, 200);
    let (status, body) = send(reqwest::Method::DELETE, "tree", "?recurse", "rec-1", "");
    assert_eq!((status, &body), (200, &json!(true)), "the retry");
    for key in ["tree/a", "tree/b", "tree/c"] {
        assert_eq!(consul_get(url, key).0, 404, "{key}");
    }
}

/// A blocking query under an API token checks the token again after each
/// wake: revoked while it waited, the query answers 401 rather than the
/// value written after the revocation.
#[test]
fn a_blocking_query_whose_token_is_revoked_answers_401() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::spawn(&dir.path().join("data"), None);
    let url = node.url.clone();
    let token = create_token(&url, "blocker", &["blk/**:read"]);
    assert_eq!(consul_put(&url, "blk/k", b"one".to_vec(), "").0, 200);
    let (status, body) = consul_get(&url, "blk/k");
    assert_eq!(status, 200, "{body}");
    let index = body[0]["ModifyIndex"].as_u64().expect("an index");
    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || {
            let r = reqwest::blocking::Client::new()
                .get(format!("{url}/v1/kv/blk/k?index={index}&wait=30s"))
                .header("x-consul-token", token)
                .timeout(Duration::from_secs(40))
                .send()
                .expect("answered");
            (r.status().as_u16(), r.text().unwrap_or_default())
        })
    };
    // Let the query reach its wait before the token goes.
    std::thread::sleep(Duration::from_secs(1));
    let revoked = client()
        .delete(format!("{url}/api/v1/tokens/blocker"))
        .send()
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 204);
    assert_eq!(consul_put(&url, "blk/k", b"two".to_vec(), "").0, 200);
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(
        !body.contains("dHdv"),
        "the value written after the revocation: {body}"
    );
}

/// Where Consul's answer is not the obvious one, pika's is Consul's: a
/// `?cas=` delete of a key that is not there is `true` (there is nothing
/// to keep), and `wait=0s` is the default wait, not none. A recursive
/// delete refused for one key names it only to a token that may read it.
#[test]
fn consul_edges_answer_as_consul_does() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::spawn(&dir.path().join("data"), None);
    let url = node.url.clone();
    let http = client();

    let delete = |query: &str| -> Value {
        http.delete(format!("{url}/v1/kv/{query}"))
            .send()
            .and_then(|r| r.json())
            .expect("a JSON answer")
    };
    assert_eq!(delete("edge/none?cas=5"), json!(true), "nothing to delete");
    assert_eq!(consul_put(&url, "edge/k", b"v".to_vec(), "").0, 200);
    assert_eq!(
        delete("edge/k?cas=999999"),
        json!(false),
        "a live key, another index"
    );
    assert_eq!(consul_get(&url, "edge/k").0, 200, "still there");

    // `wait=0s` blocks (for the default wait): still open after 1.5 s.
    let (_, body) = consul_get(&url, "edge/k");
    let index = body[0]["ModifyIndex"].as_u64().expect("an index");
    let waited = http
        .get(format!("{url}/v1/kv/edge/k?index={index}&wait=0s"))
        .timeout(Duration::from_millis(1500))
        .send();
    assert!(
        waited.as_ref().is_err_and(|e| e.is_timeout()),
        "wait=0s answered at once: {:?}",
        waited.map(|r| r.status())
    );

    // A token that may delete (and read) only `edge/pub/**`.
    assert_eq!(consul_put(&url, "edge/pub/a", b"a".to_vec(), "").0, 200);
    assert_eq!(
        consul_put(&url, "edge/secret-name", b"s".to_vec(), "").0,
        200
    );
    let token = create_token(&url, "pubonly", &["edge/pub/**:read,delete"]);
    let r = reqwest::blocking::Client::new()
        .delete(format!("{url}/v1/kv/edge?recurse"))
        .header("x-consul-token", &token)
        .send()
        .expect("answered");
    let (status, message) = status_and_message(r);
    assert_eq!(status, 403, "{message}");
    assert!(
        !message.contains("secret-name") && !message.contains("edge/k"),
        "the refusal names a key the token may not read: {message}"
    );

    // A token that expires at once is refused, naming the field.
    let r = http
        .post(format!("{url}/api/v1/tokens"))
        .json(&json!({"name": "instant", "scopes": ["edge/**:read"], "expires_in": "0s"}))
        .send()
        .expect("answered");
    let (status, message) = status_and_message(r);
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("expires_in"), "{message}");
}
