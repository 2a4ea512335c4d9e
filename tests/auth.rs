//! Access control as a client meets it: every route with every kind of
//! credential, tokens created and revoked across a cluster, TLS, and what
//! a node does at start without an admin token.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{Value, json};

mod support;

use support::{ADMIN_TOKEN, PIKA, spawn, spawn_with, wait_until_it_may_read};

fn plain_client() -> Client {
    // Builds through admin_headers' side effect only for the rustls provider.
    let _ = pika_campaign::admin_headers();
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn bearer(request: RequestBuilder, token: &str) -> RequestBuilder {
    request.header("authorization", format!("Bearer {token}"))
}

/// Creates a token with the admin token; returns its secret.
fn create_token(http: &Client, url: &str, body: Value) -> String {
    let response = bearer(http.post(format!("{url}/api/v1/tokens")), ADMIN_TOKEN)
        .json(&body)
        .send()
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201, "{:?}", response.text());
    let created: Value = response.json().expect("JSON");
    created["token"].as_str().expect("a token").to_string()
}

/// The content and revision of `app/x` as the admin sees them.
fn app_x(http: &Client, url: &str) -> (Option<String>, u64) {
    let response = bearer(http.get(format!("{url}/api/v1/file/app/x")), ADMIN_TOKEN)
        .send()
        .expect("answered");
    let revision = response
        .headers()
        .get("x-pika-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-pika-revision");
    let body: Value = response.json().unwrap_or(Value::Null);
    let data = body["data"].as_str().map(str::to_string);
    (data, revision)
}

fn put_app_x(http: &Client, url: &str, value: &str) {
    let response = bearer(http.post(format!("{url}/api/v1/file/app/x")), ADMIN_TOKEN)
        .json(&json!({"data": BASE64.encode(value)}))
        .send()
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201);
}

/// What a request carries.
#[derive(Clone, Copy, Debug)]
enum Credential {
    Missing,
    Malformed,
    Unknown,
    Expired,
    OutOfScope,
    InScope,
    Admin,
}

#[test]
fn every_route_with_every_credential() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let http = plain_client();
    put_app_x(&http, url, "original");

    let expired = create_token(
        &http,
        url,
        json!({"name": "expired", "scopes": ["**:read,write,delete"], "expires_in": "1ms"}),
    );
    let outside = create_token(
        &http,
        url,
        json!({"name": "outside", "scopes": ["other/**:read,write,delete"]}),
    );
    let inside = create_token(
        &http,
        url,
        json!({"name": "svc", "scopes": ["app/**:read,write,delete"]}),
    );
    let unknown = format!("pika_{}", "0".repeat(64));
    std::thread::sleep(Duration::from_millis(20)); // past the 1 ms expiry

    // (method, route, body, what it needs): "open", "token", "admin", "path".
    let routes: Vec<(&str, &str, Option<Value>, &str)> = vec![
        ("GET", "/api/v1/file/app/x", None, "path"),
        ("GET", "/api/v1/data/app/x", None, "path"),
        ("GET", "/api/v1/versions/app/x", None, "path"),
        ("GET", "/api/v1/diff/app/x?from=1", None, "path"),
        ("GET", "/api/v1/search?q=orig", None, "token"),
        (
            "POST",
            "/api/v1/file/app/x",
            Some(json!({"data": BASE64.encode("changed")})),
            "path",
        ),
        ("DELETE", "/api/v1/file/app/x", None, "path"),
        ("GET", "/api/v1/folder/", None, "token"),
        ("GET", "/api/v1/folder/app", None, "token"),
        ("GET", "/api/v1/watch", None, "token"),
        ("GET", "/api/v1/cluster/status", None, "token"),
        ("GET", "/api/v1/whoami", None, "token"),
        ("GET", "/api/v1/no-such-route", None, "token"),
        ("GET", "/api/v1/tokens", None, "admin"),
        (
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "made-here", "scopes": ["app/**:read"]})),
            "admin",
        ),
        ("DELETE", "/api/v1/tokens/made-here", None, "admin"),
        ("GET", "/healthz", None, "open"),
        ("GET", "/readyz", None, "open"),
        ("GET", "/metrics", None, "open"),
        ("GET", "/", None, "open"),
        ("GET", "/ui/vendor/codemirror/codemirror.js", None, "open"),
    ];
    let credentials = [
        Credential::Missing,
        Credential::Malformed,
        Credential::Unknown,
        Credential::Expired,
        Credential::OutOfScope,
        Credential::InScope,
        Credential::Admin,
    ];
    let mut checked = 0;
    for (method, route, body, needs) in &routes {
        for credential in credentials {
            if app_x(&http, url).0.is_none() {
                put_app_x(&http, url, "original"); // after a DELETE that was allowed
            }
            let (before_data, before_revision) = app_x(&http, url);
            let mut request = match *method {
                "POST" => http.post(format!("{url}{route}")),
                "DELETE" => http.delete(format!("{url}{route}")),
                _ => http.get(format!("{url}{route}")),
            };
            if let Some(body) = body {
                request = request.json(body);
            }
            request = match credential {
                Credential::Missing => request,
                Credential::Malformed => request.header("authorization", "Basic YWRtaW46YWRtaW4="),
                Credential::Unknown => bearer(request, &unknown),
                Credential::Expired => bearer(request, &expired),
                Credential::OutOfScope => bearer(request, &outside),
                Credential::InScope => bearer(request, &inside),
                Credential::Admin => bearer(request, ADMIN_TOKEN),
            };
            let response = request.send().expect("answered");
            let status = response.status().as_u16();
            let is_json = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let text = if *route == "/api/v1/watch" && status == 200 {
                String::new() // an open stream: the status is the answer
            } else {
                response.text().unwrap_or_default()
            };
            let refused_with = match (credential, *needs) {
                (_, "open") => None,
                (
                    Credential::Missing
                    | Credential::Malformed
                    | Credential::Unknown
                    | Credential::Expired,
                    _,
                ) => Some(401),
                (Credential::OutOfScope, "path") => Some(403),
                (Credential::OutOfScope | Credential::InScope, "admin") => Some(403),
                _ => None,
            };
            let what = format!("{method} {route} with {credential:?}: {status} {text}");
            match refused_with {
                Some(expected) => {
                    assert_eq!(status, expected, "{what}");
                    assert!(is_json, "{what}: JSON body");
                    let body: Value = serde_json::from_str(&text).expect("a JSON body");
                    assert!(
                        body["message"].as_str().is_some_and(|m| !m.is_empty())
                            && body["request_id"].is_string(),
                        "{what}"
                    );
                    let (after_data, after_revision) = app_x(&http, url);
                    assert_eq!(
                        (after_data, after_revision),
                        (before_data.clone(), before_revision),
                        "{what}: a refusal changed nothing"
                    );
                }
                None => {
                    let expected_ok = match *route {
                        "/api/v1/no-such-route" => status == 404,
                        // Nothing in it may be read: answered as an empty
                        // folder, which says nothing about what is there.
                        "/api/v1/folder/app" if matches!(credential, Credential::OutOfScope) => {
                            status == 404
                        }
                        "/api/v1/tokens/made-here" => status == 204 || status == 404,
                        "/api/v1/tokens" if *method == "POST" => status == 201 || status == 409,
                        _ => (200..300).contains(&status),
                    };
                    assert!(expected_ok, "{what}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * credentials.len());

    // What the in-scope token wrote carries its name; the folder listing
    // of an out-of-scope token does not show `app`; nobody lists `pika/`.
    put_with(&http, url, &inside, "app/by-svc", "x");
    let versions: Value = bearer(
        http.get(format!("{url}/api/v1/versions/app/by-svc")),
        &inside,
    )
    .send()
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(versions["versions"][0]["author"], "svc");
    let root = |token: &str| -> Vec<String> {
        let listing: Value = bearer(http.get(format!("{url}/api/v1/folder/")), token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        listing["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(root(&inside), vec!["app".to_string()]);
    assert!(root(&outside).is_empty(), "{:?}", root(&outside));
    assert_eq!(
        root(ADMIN_TOKEN),
        vec!["app".to_string()],
        "pika/ is never listed"
    );
    let reserved = bearer(
        http.get(format!("{url}/api/v1/folder/pika/tokens")),
        ADMIN_TOKEN,
    )
    .send()
    .unwrap();
    assert_eq!(reserved.status().as_u16(), 403, "even for the admin");

    // A retried create (same X-Request-Id) is not answered with a second
    // secret the store never saw: the name is taken.
    let create = || {
        bearer(http.post(format!("{url}/api/v1/tokens")), ADMIN_TOKEN)
            .header("x-request-id", "create-once")
            .json(&json!({"name": "retried", "scopes": ["app/**:read"]}))
            .send()
            .unwrap()
    };
    let first: Value = create().json().unwrap();
    let retried = create();
    assert_eq!(retried.status().as_u16(), 409);
    let secret = first["token"].as_str().unwrap();
    let works = bearer(http.get(format!("{url}/api/v1/file/app/x")), secret)
        .send()
        .unwrap();
    assert_eq!(
        works.status().as_u16(),
        200,
        "the first answer's token works"
    );

    // Every failure was counted by reason.
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for reason in ["missing", "malformed", "unknown", "expired", "forbidden"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("pika_auth_failures_total{{reason=\"{reason}\"}}")))
            .unwrap_or_else(|| panic!("no {reason} failures counted"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1.0, "{line}");
    }
}

fn put_with(http: &Client, url: &str, token: &str, path: &str, value: &str) -> u16 {
    bearer(http.post(format!("{url}/api/v1/file/{path}")), token)
        .json(&json!({"data": BASE64.encode(value)}))
        .send()
        .map_or(0, |r| r.status().as_u16())
}

/// A token is in force on every node once its 201 arrives, and refused on
/// every node once its revocation's 204 arrives. The write it makes on a
/// follower is forwarded with its name as the author.
#[test]
fn tokens_created_and_revoked_anywhere_hold_everywhere_at_once() {
    use pika_campaign::cluster::{Cluster, Options};
    let options = Options {
        network: pika_campaign::Network::Loopback,
        test_hooks: false,
        env: Vec::new(),
        tmpfs_mb: None,
        learners: 0,
    };
    let pika = Path::new(PIKA);
    let cluster = Cluster::start_with(pika, 160, &[1.0, 1.0, 1.0], options).expect("3 nodes");
    cluster
        .leader(Duration::from_secs(15))
        .expect("a leader elected");
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    for url in &urls {
        // Without a read lease a node answers API tokens with 503.
        wait_until_it_may_read(url);
    }
    let http = plain_client();
    for round in 0..5 {
        let name = format!("deploy-{round}");
        let token = create_token(
            &http,
            &urls[0],
            json!({"name": name, "scopes": ["svc/**:read,write"]}),
        );
        let path = format!("svc/round-{round}");
        assert_eq!(
            put_with(&http, &urls[2], &token, &path, "v"),
            201,
            "round {round}: the new token works on node 3 right away"
        );
        let versions: Value = bearer(
            http.get(format!("{}/api/v1/versions/{path}", urls[1])),
            &token,
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
        assert_eq!(versions["versions"][0]["author"], name.as_str());

        let revoked = bearer(
            http.delete(format!("{}/api/v1/tokens/{name}", urls[1])),
            ADMIN_TOKEN,
        )
        .send()
        .unwrap();
        assert_eq!(revoked.status().as_u16(), 204);
        for (i, url) in urls.iter().enumerate() {
            let read = bearer(http.get(format!("{url}/api/v1/file/{path}")), &token)
                .send()
                .unwrap();
            assert_eq!(
                read.status().as_u16(),
                401,
                "round {round}: node {} still took the revoked token",
                i + 1
            );
        }
    }
}

/// Token records are read like any other path: a follower cut off from
/// the leader neither lists the tokens it last heard of nor answers "no
/// token named" for one created through the leader since. It refuses both
/// (503) until it may read again, then answers from a state that has it.
#[test]
fn a_follower_cut_off_from_the_leader_neither_lists_nor_revokes_tokens() {
    use support::cluster::{Cluster, wait_until};
    let c = Cluster::start(&[174, 175, 176]);
    let (leader, _) = c.leader(Duration::from_secs(20));
    let cut = (leader + 1) % 3;
    let cut_id = c.node_id(cut);
    let others: Vec<String> = (0..3).filter(|&i| i != cut).map(|i| c.node_id(i)).collect();
    c.fault(cut, json!({"block_in": others, "block_out": others}));
    // Out of the leader's set, so that writes commit without it; by then
    // its read permission has run out.
    wait_until(Duration::from_secs(15), || {
        c.replication_set(leader)
            .filter(|set| !set.contains(&cut_id))
            .map(|_| ())
    })
    .expect("the leader's set leaves the cut-off follower out");
    let http = plain_client();
    create_token(
        &http,
        &c.url(leader),
        json!({"name": "late", "scopes": ["svc/**:read"]}),
    );
    let list = || {
        let r = bearer(
            http.get(format!("{}/api/v1/tokens", c.url(cut))),
            ADMIN_TOKEN,
        )
        .send()
        .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let (status, body) = list();
    assert_eq!(status, 503, "a cut-off follower listed tokens: {body}");
    let revoke = || {
        bearer(
            http.delete(format!("{}/api/v1/tokens/late", c.url(cut))),
            ADMIN_TOKEN,
        )
        .send()
        .unwrap()
        .status()
        .as_u16()
    };
    assert_eq!(revoke(), 503, "a cut-off follower looked the token up");

    c.fault(cut, json!({}));
    wait_until(Duration::from_secs(15), || {
        let (status, body) = list();
        (status == 200 && body.contains("\"late\"")).then_some(())
    })
    .expect("healed, the follower lists the token created meanwhile");
    assert_eq!(revoke(), 204);
}

/// A client's `X-Request-Id` belongs to its token: a client of another
/// token sending the same id has its own write applied, where it was
/// refused as a reused id (or, once the first write's version had left
/// the history, answered with that write's outcome and never applied).
/// The ids the server makes for requests without one carry a keyed tag:
/// `/healthz` showed them, and the next one could be claimed first.
#[test]
fn request_ids_belong_to_the_token_that_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let http = plain_client();
    let a = create_token(
        &http,
        &node.url,
        json!({"name": "a", "scopes": ["a/**:read,write"]}),
    );
    let b = create_token(
        &http,
        &node.url,
        json!({"name": "b", "scopes": ["b/**:read,write"]}),
    );
    let write = |token: &str, path: &str| {
        let r = bearer(http.post(format!("{}/api/v1/file/{path}", node.url)), token)
            .header("x-request-id", "same")
            .json(&json!({"data": BASE64.encode("v")}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    assert_eq!(write(&a, "a/x").0, 201);
    let (status, body) = write(&b, "b/y");
    assert_eq!(status, 201, "{body}");
    let read = bearer(http.get(format!("{}/api/v1/data/b/y", node.url)), &b)
        .send()
        .unwrap();
    assert_eq!(read.status().as_u16(), 200, "b's write was applied");
    // The same client retrying is still answered once.
    let (status, again) = write(&b, "b/y");
    assert_eq!(
        (status, &again),
        (201, &body),
        "a retry gets the first answer"
    );

    let tag = || {
        let r = http.get(format!("{}/healthz", node.url)).send().unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let parts: Vec<String> = id.split('-').map(str::to_string).collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[2].len(), 16, "{id}");
        parts[2].clone()
    };
    assert_ne!(tag(), tag());
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = spawn_with(&data, None, &[("PIKA_SERVER_TLS_SELF_SIGNED", "true")]);
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let fingerprint_logged = node
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("serving HTTPS") && l.contains("sha256"));
    assert!(fingerprint_logged, "the fingerprint is logged");
    let cert = data.join("tls/cert.pem");
    let pem = std::fs::read(&cert).expect("the certificate is kept");

    // A client that trusts the certificate.
    let trusting = Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let saved = trusting
        .post(format!("{}/api/v1/file/tls/x", node.url))
        .json(&json!({"data": BASE64.encode("over tls")}))
        .send()
        .expect("HTTPS works");
    assert_eq!(saved.status().as_u16(), 201);

    // One that does not: refused by the client, nothing sent.
    let untrusting = plain_client();
    assert!(
        untrusting
            .get(format!("{}/healthz", node.url))
            .send()
            .is_err()
    );

    // Plain HTTP to the TLS port: a clean 400 that names the scheme.
    let plain_url = node.url.replace("https://", "http://");
    let plain = untrusting
        .get(format!("{plain_url}/healthz"))
        .send()
        .expect("answered");
    assert_eq!(plain.status().as_u16(), 400);
    let body: Value = plain.json().expect("JSON");
    assert!(
        body["message"].as_str().unwrap().contains("https"),
        "{body}"
    );

    // The CLI with --ca-file, and without it.
    let cli = |extra: &[&str]| {
        std::process::Command::new(PIKA)
            .env("PIKA_TOKEN", ADMIN_TOKEN)
            .args(["--node", &node.url])
            .args(extra)
            .args(["get", "tls/x"])
            .output()
            .unwrap()
    };
    let ok = cli(&["--ca-file", cert.to_str().unwrap()]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.stdout, b"over tls");
    let refused = cli(&[]);
    assert_eq!(refused.status.code(), Some(5));
    let insecure = cli(&["--insecure"]);
    assert_eq!(insecure.status.code(), Some(0));
}

#[test]
fn a_fresh_standalone_node_makes_a_private_admin_token_and_never_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No PIKA_AUTH_ADMIN_TOKEN: as `cargo run` on a fresh clone.
    let node = spawn_with(&data, None, &[("PIKA_AUTH_ADMIN_TOKEN", "")]);
    let file = data.join("admin.token");
    let token = std::fs::read_to_string(&file).expect("admin.token written");
    let token = token.trim();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let http = plain_client();
    assert_eq!(
        http.get(format!("{}/api/v1/folder/", node.url))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(put_with(&http, &node.url, token, "first", "x"), 201);
    let log = node.log.lock().unwrap().join("\n");
    assert!(!log.contains(token), "the token is not in the log");
    assert!(
        log.contains(file.to_str().unwrap()),
        "the log says where it is"
    );

    // The CLI finds it through the node's config, with no flag.
    let out = std::process::Command::new(PIKA)
        .env_remove("PIKA_TOKEN")
        .env("PIKA_STORAGE_BW_PATH", &data)
        .args(["--node", &node.url, "get", "first"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"x");
}

#[test]
fn unsafe_auth_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(PIKA);
        cmd.env_remove("CONFIG_FILE")
            .env("PIKA_STORAGE_BW_PATH", dir.path().join("data"))
            .current_dir(dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let cluster = run(&[
        ("PIKA_CLUSTER_ENABLED", "true"),
        ("PIKA_CLUSTER_DNS_ADDR", "127.0.0.1"),
    ]);
    assert_eq!(cluster.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&cluster.stderr).contains("auth.admin_token"));

    let open = run(&[
        ("PIKA_AUTH_ENABLED", "false"),
        ("PIKA_SERVER_HOST", "0.0.0.0"),
    ]);
    assert_eq!(open.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&open.stderr).contains("auth.allow_insecure"));

    let bad = run(&[("PIKA_AUTH_ADMIN_TOKEN", "hunter2")]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("auth.admin_token") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// Search answers only what the token may read, and never the reserved
/// namespace (token records, the leader's lock), even for an admin.
#[test]
fn search_is_filtered_to_the_tokens_read_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let http = plain_client();
    put_app_x(&http, url, "needle in app");
    let response = bearer(http.post(format!("{url}/api/v1/file/other/y")), ADMIN_TOKEN)
        .json(&json!({"data": BASE64.encode("needle in other")}))
        .send()
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201);
    let inside = create_token(
        &http,
        url,
        json!({"name": "needle-reader", "scopes": ["app/**:read"]}),
    );
    let search = |token: &str, q: &str| -> Vec<String> {
        let found: Value = bearer(http.get(format!("{url}/api/v1/search?q={q}")), token)
            .send()
            .expect("answered")
            .json()
            .expect("JSON");
        found["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| h["path"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(search(&inside, "needle"), vec!["app/x".to_string()]);
    assert_eq!(
        search(ADMIN_TOKEN, "needle"),
        vec!["app/x".to_string(), "other/y".to_string()]
    );
    assert!(
        search(ADMIN_TOKEN, "needle-reader").is_empty(),
        "token records are never searched"
    );
}
