//! The HTTP API through a real socket: every route, every documented error,
//! and that bad input leaves the stored data unchanged.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pika::config::Config;
use pika::node::Node;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct TestNode {
    node: Node,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start_with(edit: impl FnOnce(&mut Config)) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.storage.bw.path = dir.path().join("data");
    config.auth.admin_token = pika_campaign::TEST_ADMIN_TOKEN.into();
    edit(&mut config);
    let node = Node::start(config).await.expect("node starts");
    TestNode {
        node,
        http: reqwest::Client::builder()
            .default_headers(pika_campaign::admin_headers())
            .build()
            .expect("http client"),
        _dir: dir,
    }
}

async fn start() -> TestNode {
    start_with(|_| {}).await
}

impl TestNode {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.url())
    }

    async fn save(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(&format!("/api/v1/file/{path}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn body(data: &str, format: &str, expected: Option<u64>) -> Value {
    let mut b =
        json!({ "meta": { "format": format, "description": "test" }, "data": BASE64.encode(data) });
    if let Some(v) = expected {
        b["expected_version"] = json!(v);
    }
    b
}

/// An error answer: the status, and a JSON body with a message and request id.
fn assert_error(status: StatusCode, expected: StatusCode, body: &Value) -> String {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    body["message"].as_str().expect("message").to_string()
}

const YAML: &str = "server:\n  port: 8091   # keep this comment\nlist: [a, b]\n";

#[tokio::test]
async fn save_then_read_back_byte_for_byte_with_etag() {
    let t = start().await;
    let (s, b) = t.save("team/app/prod.yaml", body(YAML, "yaml", None)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(
        (b["version"].as_u64(), b["revision"].as_u64()),
        (Some(1), Some(1))
    );

    let r = t
        .http
        .get(t.url("/api/v1/data/team/app/prod.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.headers()["content-type"], "application/yaml");
    assert_eq!(r.headers()["x-pika-revision"], "1");
    assert_eq!(r.bytes().await.unwrap(), YAML.as_bytes());

    let r = t
        .http
        .get(t.url("/api/v1/data/team/app/prod.yaml"))
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], "\"v1\"");

    let (s, f) = t.get_json("/api/v1/file/team/app/prod.yaml").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        BASE64.decode(f["data"].as_str().unwrap()).unwrap(),
        YAML.as_bytes()
    );
    assert_eq!(
        f["meta"],
        json!({ "format": "yaml", "description": "test", "flags": 0 })
    );
    assert_eq!(f["version"], 1);
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn compare_and_set_conflicts_are_409_and_change_nothing() {
    let t = start().await;
    assert_eq!(
        t.save("k.json", body("{\"a\":1}", "json", Some(0))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        t.save("k.json", body("{\"a\":2}", "json", Some(1))).await.0,
        StatusCode::CREATED
    );
    let (s, b) = t.save("k.json", body("{\"a\":3}", "json", Some(1))).await;
    let m = assert_error(s, StatusCode::CONFLICT, &b);
    assert!(
        m.contains("expected 1") && m.contains("current is 2"),
        "{m}"
    );
    let (_, f) = t.get_json("/api/v1/file/k.json").await;
    assert_eq!(
        BASE64.decode(f["data"].as_str().unwrap()).unwrap(),
        b"{\"a\":2}"
    );
    assert_eq!(f["version"], 2);
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_content_is_400_naming_line_and_column() {
    let t = start().await;
    t.save("c.yaml", body("a: 1\n", "yaml", None)).await;
    let cases = [
        ("yaml", "a: 1\nb: [1,\n", "line 3"),
        ("json", "{\n  \"a\": 1,\n}", "line 3"),
        ("toml", "a = 1\nb = = 2\n", "line 2"),
    ];
    for (format, data, line) in cases {
        let (s, b) = t.save("c.yaml", body(data, format, None)).await;
        let m = assert_error(s, StatusCode::BAD_REQUEST, &b);
        assert!(
            m.contains(&format!("invalid {format}")) && m.contains(line),
            "{m}"
        );
    }
    let r = t
        .http
        .get(t.url("/api/v1/data/c.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.bytes().await.unwrap(), "a: 1\n".as_bytes());
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_are_400_with_a_json_message() {
    let t = start().await;
    let url = t.url("/api/v1/file/x");
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (t.http.post(&url).body("not json"), "invalid request body"),
        (
            t.http.post(&url).body("{\"data\": 5}"),
            "invalid request body: field `data`",
        ),
        (
            t.http
                .post(&url)
                .body("{\"data\": \"\", \"expected_version\": \"1\"}"),
            "field `expected_version`",
        ),
        (
            t.http
                .post(&url)
                .body("{\"data\": \"\", \"meta\": {\"description\": 7}}"),
            "field `meta.description`",
        ),
        (t.http.post(&url).body("{\"data\": \"!!!\"}"), "base64"),
        (
            t.http
                .post(&url)
                .body("{\"data\": \"\", \"meta\": {\"format\": \"xml\"}}"),
            "xml",
        ),
        (
            t.http.post(&url).body("{\"data\": \"\", \"surprise\": 1}"),
            "surprise",
        ),
        (
            t.http
                .post(t.url("/api/v1/file/a//b"))
                .body("{\"data\": \"\"}"),
            "empty segment",
        ),
        // Encoded slashes: a client would normalise a literal "a/../b" away.
        (t.http.get(t.url("/api/v1/file/a%2F..%2Fb")), "invalid path"),
        (t.http.get(t.url("/api/v1/file/a%0Ab")), "control character"),
        (
            t.http
                .get(t.url(&format!("/api/v1/file/{}", "a".repeat(1025)))),
            "1024",
        ),
        (
            t.http.get(t.url("/api/v1/file/x?version=latest")),
            "version",
        ),
    ];
    for (request, needle) in cases {
        let r = request.send().await.unwrap();
        let status = r.status();
        let b: Value = r.json().await.unwrap();
        let m = assert_error(status, StatusCode::BAD_REQUEST, &b);
        assert!(m.contains(needle), "{needle}: {m}");
    }
    // Nothing was stored by any of them.
    let (s, b) = t.get_json("/api/v1/folder/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["children"], json!([]));
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let t = start_with(|c| c.server.limits.request_body_mb = 1).await;
    let big = "x".repeat(1 << 20);
    let (s, b) = t.save("big.txt", body(&big, "text", None)).await;
    assert_error(s, StatusCode::PAYLOAD_TOO_LARGE, &b);
    let (s, b) = t.get_json("/api/v1/file/big.txt").await;
    assert_error(s, StatusCode::NOT_FOUND, &b);
    // Just under the limit is fine (base64 grows by 4/3).
    let (s, _) = t
        .save("small.txt", body(&"x".repeat(600_000), "text", None))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let t = start().await;
    let (s, b) = t.get_json("/api/v1/nothing").await;
    assert_error(s, StatusCode::NOT_FOUND, &b);
    let r = t.http.put(t.url("/api/v1/file/x")).send().await.unwrap();
    let status = r.status();
    let b: Value = r.json().await.unwrap();
    assert_error(status, StatusCode::METHOD_NOT_ALLOWED, &b);
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_page_and_its_vendored_editor_are_served_without_a_token() {
    let t = start().await;
    let anonymous = reqwest::Client::new();
    let r = anonymous.get(t.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    let page = r.text().await.unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/ui/vendor/codemirror");
    for (file, content_type) in [
        ("codemirror.js", "text/javascript"),
        ("codemirror.css", "text/css"),
        ("javascript.js", "text/javascript"),
        ("yaml.js", "text/javascript"),
        ("toml.js", "text/javascript"),
        ("matchbrackets.js", "text/javascript"),
        ("LICENSE", "text/plain"),
    ] {
        if file != "LICENSE" {
            assert!(
                page.contains(&format!("ui/vendor/codemirror/{file}")),
                "{file} on the page"
            );
        }
        let r = anonymous
            .get(t.url(&format!("/ui/vendor/codemirror/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{file}");
        let header = |name: &str| r.headers()[name].to_str().unwrap().to_string();
        assert!(header("content-type").starts_with(content_type), "{file}");
        assert!(
            header("cache-control").contains("max-age=31536000"),
            "{file}"
        );
        let served = r.bytes().await.unwrap();
        let vendored = std::fs::read(format!("{dir}/{file}")).unwrap();
        assert!(served[..] == vendored[..], "{file}: the vendored bytes");
    }
    for missing in ["nope.js", "README.md", "..%2F..%2Fui.rs"] {
        let r = anonymous
            .get(t.url(&format!("/ui/vendor/codemirror/{missing}")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_error(status, StatusCode::NOT_FOUND, &r.json().await.unwrap());
    }
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn deletes_versions_and_history() {
    let t = start_with(|c| c.storage.history = 3).await;
    for i in 1..=4 {
        t.save("svc/a.txt", body(&format!("v{i}"), "text", None))
            .await;
    }
    // CAS delete with a stale version is refused.
    let r = t
        .http
        .delete(t.url("/api/v1/file/svc/a.txt?expected_version=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = t
        .http
        .delete(t.url("/api/v1/file/svc/a.txt?expected_version=4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["x-pika-version"], "5");

    let (s, b) = t.get_json("/api/v1/file/svc/a.txt").await;
    assert!(assert_error(s, StatusCode::NOT_FOUND, &b).contains("deleted"));
    let (s, _) = t.get_json("/api/v1/data/svc/a.txt").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = t
        .http
        .delete(t.url("/api/v1/file/svc/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Older versions stay readable while retained; history keeps 3.
    let r = t
        .http
        .get(t.url("/api/v1/data/svc/a.txt?version=4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), "v4".as_bytes());
    let (s, b) = t.get_json("/api/v1/versions/svc/a.txt").await;
    assert_eq!(s, StatusCode::OK);
    let listed: Vec<(u64, String)> = b["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (5, "deleted".into()),
            (4, "previous".into()),
            (3, "previous".into())
        ]
    );
    let (s, _) = t.get_json("/api/v1/file/svc/a.txt?version=2").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Recreating continues the numbering; 0 means "must not exist".
    let (s, b) = t.save("svc/a.txt", body("again", "text", Some(0))).await;
    assert_eq!((s, b["version"].as_u64()), (StatusCode::CREATED, Some(6)));
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn folders_list_children() {
    let t = start().await;
    for p in [
        "team/app/prod.yaml",
        "team/app/dev.yaml",
        "team/notes.txt",
        "root.json",
    ] {
        let data = if p.ends_with(".json") { "{}" } else { "a: 1" };
        // No meta: the format comes from the extension.
        let (s, b) = t.save(p, json!({ "data": BASE64.encode(data) })).await;
        assert_eq!(s, StatusCode::CREATED, "{p}: {b}");
    }
    let (_, b) = t.get_json("/api/v1/folder/team").await;
    let children: Vec<(String, String)> = b["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        children,
        [
            ("app".into(), "folder".into()),
            ("notes.txt".into(), "file".into())
        ]
    );
    let (_, b) = t.get_json("/api/v1/folder").await;
    assert_eq!(b["children"].as_array().unwrap().len(), 2);
    let (_, f) = t.get_json("/api/v1/file/team/app/dev.yaml").await;
    assert_eq!(f["meta"]["format"], "yaml");
    let (s, b) = t.get_json("/api/v1/folder/none").await;
    assert_error(s, StatusCode::NOT_FOUND, &b);
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_health_and_metrics() {
    let t = start().await;
    t.save("m.txt", body("x", "text", None)).await;
    let (s, b) = t.get_json("/api/v1/cluster/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["enabled"], false);
    assert_eq!(b["role"], "standalone");
    assert_eq!(b["revision"], 1);
    assert_eq!(b["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(b["nodes"][0]["self"], true);
    assert_eq!(b["nodes"][0]["http_address"], t.node.addr().to_string());
    assert_eq!(t.get_json("/healthz").await.0, StatusCode::OK);
    assert_eq!(t.get_json("/readyz").await.0, StatusCode::OK);
    // Methods outside the standard ones share one label: each was a new
    // series kept for good.
    for odd in ["BREW", "WHEN"] {
        let method = reqwest::Method::from_bytes(odd.as_bytes()).unwrap();
        t.http
            .request(method, t.url("/healthz"))
            .send()
            .await
            .unwrap();
    }

    let text = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "pika_http_requests_total{route=\"/api/v1/file/{*path}\",method=\"POST\",status=\"201\"}",
        "pika_http_request_duration_seconds_bucket",
        "pika_commit_seconds_bucket",
        "pika_commit_batch_ops_bucket",
        "pika_revision",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(!text.contains("BREW") && !text.contains("WHEN"), "{text}");
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_writers_all_get_distinct_revisions() {
    let t = start().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let http = t.http.clone();
        let url = t.url(&format!("/api/v1/file/load/{}", i % 8));
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&body(&i.to_string(), "text", None))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["revision"]
                .as_u64()
                .unwrap()
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=64).collect::<Vec<_>>());
    t.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn data_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = {
        let mut c = Config::default();
        c.server.host = "127.0.0.1".into();
        c.server.port = 0;
        c.storage.bw.path = dir.path().to_path_buf();
        c.auth.admin_token = pika_campaign::TEST_ADMIN_TOKEN.into();
        c
    };
    let node = Node::start(config.clone()).await.unwrap();
    let http = reqwest::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .build()
        .expect("http client");
    let r = http
        .post(format!("{}/api/v1/file/keep.txt", node.url()))
        .json(&body("kept", "text", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    node.shutdown().await.unwrap();
    let node = Node::start(config).await.unwrap();
    let r = http
        .get(format!("{}/api/v1/data/keep.txt", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), "kept".as_bytes());
    node.shutdown().await.unwrap();
}
