//! The CLI in the `pika` binary, run as a user runs it, against a live node:
//! output, `--json`, format inference and the exit codes scripts rely on.

use std::process::{Command, Output};

use serde_json::Value;

mod support;

use support::{PIKA, spawn};

fn pika(node: &str, args: &[&str]) -> Output {
    Command::new(PIKA)
        .env("PIKA_TOKEN", support::ADMIN_TOKEN)
        .arg("--node")
        .arg(node)
        .args(args)
        .output()
        .expect("the pika binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_command_against_a_live_node_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let files = tempfile::tempdir().unwrap();
    let yaml = files.path().join("db.yaml");
    std::fs::write(&yaml, "host: db\nport: 5432\n").unwrap();
    let broken = files.path().join("broken.json");
    std::fs::write(&broken, "{\n  \"port\": \n}").unwrap();

    // put infers yaml from the file's extension (the path has none).
    let out = pika(url, &["put", "app/db", yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("saved app/db v1"), "{}", stdout(&out));
    let out = pika(url, &["--json", "get", "app/db"]);
    let file: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(file["meta"]["format"], "yaml");
    assert_eq!(file["version"], 1);

    // get prints the content byte for byte.
    let out = pika(url, &["get", "app/db"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"host: db\nport: 5432\n");

    // Bad content: 2, with the server's line and column.
    let out = pika(url, &["put", "app/broken", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));

    // Compare-and-set: a stale version is 4 and changes nothing.
    let db = yaml.to_str().unwrap();
    let cas = |version: &str| pika(url, &["put", "app/db", db, "--expected-version", version]);
    let out = cas("7");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("version mismatch"),
        "{}",
        stderr(&out)
    );
    let out = cas("1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = pika(url, &["ls"]);
    assert_eq!(stdout(&out), "app/\n");
    let out = pika(url, &["ls", "app"]);
    assert!(
        stdout(&out).starts_with("app/db  v2  yaml"),
        "{}",
        stdout(&out)
    );
    let out = pika(url, &["--json", "history", "app/db"]);
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2));
    let out = pika(url, &["history", "app/db"]);
    assert!(stdout(&out).lines().count() == 3, "{}", stdout(&out));

    // The watch from revision 1 replays every change (then waits: killed).
    let mut watch = Command::new(PIKA)
        .env("PIKA_TOKEN", support::ADMIN_TOKEN)
        .args([
            "--node",
            url,
            "--json",
            "watch",
            "app/",
            "--from-revision",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = {
        use std::io::BufRead;
        let out = watch.stdout.take().unwrap();
        std::io::BufReader::new(out)
            .lines()
            .take(2)
            .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
            .collect::<Vec<_>>()
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(lines[0]["revision"], 1);
    assert_eq!(lines[1]["version"], 2);

    let out = pika(url, &["rm", "app/db"]);
    assert_eq!(out.status.code(), Some(0));
    let out = pika(url, &["get", "app/db"]);
    assert_eq!(out.status.code(), Some(3), "deleted: not found");
    let out = pika(url, &["rm", "app/db"]);
    assert_eq!(out.status.code(), Some(3));

    let out = pika(url, &["--json", "status"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["role"], "standalone");
    let out = pika(url, &["status"]);
    assert!(stdout(&out).contains("standalone"));

    // Nobody there: 5. Not a URL: 2. A missing file: 1.
    let out = pika("http://127.0.0.1:9", &["status"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = pika("localhost:8080", &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let out = pika(url, &["put", "x", "/nonexistent/file.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/file.yaml"));
}

/// Writes `content` to `dir/name` and returns the file's path as a string.
fn file(dir: &std::path::Path, name: &str, content: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        root: &std::path::Path,
        at: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for entry in std::fs::read_dir(at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn diff_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let files = tempfile::tempdir().unwrap();
    for (n, body) in [
        "name: web\nport: 80\nreplicas: 2\n",
        "name: web\nport: 8080\nreplicas: 2\n",
        "name: web\nport: 8080\nreplicas: 3\nowner: Team-Blue\n",
    ]
    .iter()
    .enumerate()
    {
        let f = file(files.path(), &format!("v{n}.yaml"), body.as_bytes());
        let out = pika(url, &["put", "svc/web.yaml", &f]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let other = file(files.path(), "db.json", b"{\"owner\": \"team-red\"}");
    assert_eq!(
        pika(url, &["put", "svc/db.json", &other]).status.code(),
        Some(0)
    );

    let out = pika(url, &["diff", "svc/web.yaml", "1", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "--- svc/web.yaml@v1\n+++ svc/web.yaml@v3\n@@ -1,3 +1,4 @@\n name: web\n-port: 80\n-replicas: 2\n+port: 8080\n+replicas: 3\n+owner: Team-Blue\n"
    );
    // `to` defaults to the latest; a version that does not exist is 3.
    let out = pika(url, &["diff", "svc/web.yaml", "2"]);
    assert!(
        stdout(&out).contains("-replicas: 2\n+replicas: 3\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        pika(url, &["diff", "svc/web.yaml", "9"]).status.code(),
        Some(3)
    );
    assert_eq!(
        pika(url, &["diff", "svc/none.yaml", "1"]).status.code(),
        Some(3)
    );

    // Search: any case, content and paths, with line numbers.
    let out = pika(url, &["search", "team-"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "svc/db.json:1: {\"owner\": \"team-red\"}\nsvc/web.yaml:4: owner: Team-Blue\n"
    );
    let out = pika(url, &["--json", "search", "WEB.yaml"]);
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["hits"][0]["path"], "svc/web.yaml");
    assert_eq!(found["hits"][0]["line"], Value::Null, "a match in the path");
    let out = pika(url, &["search", "team", "--limit", "1"]);
    assert!(stdout(&out).contains("(more hits"), "{}", stdout(&out));
    assert_eq!(
        pika(url, &["search", "nowhere-at-all"]).status.code(),
        Some(3)
    );
    assert_eq!(
        pika(url, &["search", " "]).status.code(),
        Some(2),
        "blank query"
    );
}

#[test]
fn export_then_import_into_an_empty_node_then_export_again_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let source = spawn(&dir.path().join("a"), None);
    let files = tempfile::tempdir().unwrap();
    let items: [(&str, &[u8]); 5] = [
        ("team/app/prod.json", b"{\"port\": 8080}\n"),
        ("team/app/prod.yaml", b"port: 8080\nhosts:\n  - a\n  - b\n"),
        ("team/db/settings.toml", b"[db]\nport = 5432\n"),
        ("notes/readme.txt", b"plain text, no newline"),
        ("notes/deep/er/still.txt", b"nested\n"),
    ];
    for (n, (path, body)) in items.iter().enumerate() {
        let f = file(files.path(), &format!("in{n}"), body);
        let mut args = vec!["put", path, &f];
        if path.ends_with(".txt") {
            args.extend(["--format", "text"]);
        }
        let out = pika(&source.url, &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let gone = file(files.path(), "gone", b"{}");
    assert_eq!(
        pika(&source.url, &["put", "team/old.json", &gone])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        pika(&source.url, &["rm", "team/old.json"]).status.code(),
        Some(0)
    );

    let first = files.path().join("first");
    let out = pika(&source.url, &["export", first.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let exported = tree(&first);
    assert!(
        !exported.contains_key("team/old.json"),
        "a deleted path is not exported"
    );
    assert_eq!(exported["team/app/prod.yaml"], items[1].1);
    assert_eq!(
        exported.len(),
        items.len() + 1,
        "the files and the manifest"
    );
    // Into a directory that is not empty: refused.
    assert_eq!(
        pika(&source.url, &["export", first.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );

    let target = spawn(&dir.path().join("b"), None);
    let out = pika(
        &target.url,
        &["import", first.to_str().unwrap(), "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("would create team/app/prod.json"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        pika(&target.url, &["ls"]).stdout,
        b"",
        "a dry run changes nothing"
    );
    let out = pika(&target.url, &["import", first.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("5 created, 0 updated, 0 unchanged"),
        "{}",
        stdout(&out)
    );
    let out = pika(&target.url, &["import", first.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("0 created, 0 updated, 5 unchanged"),
        "{}",
        stdout(&out)
    );

    let second = files.path().join("second");
    let out = pika(&target.url, &["export", second.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tree(&second), exported, "byte-identical trees");

    // A changed file is updated with compare-and-set; --prefix limits both.
    std::fs::write(first.join("team/db/settings.toml"), b"[db]\nport = 6543\n").unwrap();
    std::fs::write(
        first.join("notes/readme.txt"),
        b"changed, but outside the prefix",
    )
    .unwrap();
    let out = pika(
        &target.url,
        &["import", first.to_str().unwrap(), "--prefix", "team"],
    );
    assert!(
        stdout(&out).contains("updated team/db/settings.toml v1 -> v2")
            && stdout(&out).contains("0 created, 1 updated, 2 unchanged"),
        "{}",
        stdout(&out)
    );
    let out = pika(&target.url, &["get", "notes/readme.txt"]);
    assert_eq!(out.stdout, items[3].1);
    let partial = files.path().join("partial");
    let out = pika(
        &target.url,
        &["export", partial.to_str().unwrap(), "--prefix", "team/db"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        tree(&partial).keys().cloned().collect::<Vec<_>>(),
        vec![
            ".pika-export.json".to_string(),
            "team/db/settings.toml".to_string()
        ]
    );
}

/// A path the URL parser would rewrite (`#` starts a fragment, `?` a query,
/// `..` resolves away, `%2F` decodes to `/`) reaches its own file, or is
/// refused with 2 before anything is sent. The CLI used to put these paths
/// into the URL as they were: `rm team/../prod.yaml` deleted `prod.yaml`.
#[test]
fn paths_the_url_parser_would_rewrite_reach_their_own_file_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), None);
    let url = node.url.as_str();
    let files = tempfile::tempdir().unwrap();
    let a = file(files.path(), "a.txt", b"a\n");
    let b = file(files.path(), "b.txt", b"b\n");

    for odd in ["app/a#1.yaml", "app/x?y", "app/a%2Fb", "app/50%"] {
        let out = pika(url, &["put", odd, &a]);
        assert_eq!(out.status.code(), Some(0), "put {odd}: {}", stderr(&out));
        let out = pika(url, &["get", odd]);
        assert_eq!(out.status.code(), Some(0), "get {odd}: {}", stderr(&out));
        assert_eq!(out.stdout, b"a\n", "get {odd}");
        let out = pika(url, &["--json", "history", odd]);
        let history: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            history["versions"].as_array().map(Vec::len),
            Some(1),
            "{odd}"
        );
    }
    let out = pika(url, &["--json", "ls", "app/"]);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = listing["children"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["path"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["app/50%", "app/a#1.yaml", "app/a%2Fb", "app/x?y"],
        "each went to its own path, nothing else was written"
    );

    let out = pika(url, &["put", "prod.yaml", &b]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for refused in [
        vec!["rm", "team/../prod.yaml"],
        vec!["put", "team/../prod.yaml", a.as_str()],
        vec!["get", "./prod.yaml"],
        vec!["history", "team//prod.yaml"],
        vec!["diff", "team/../prod.yaml", "1"],
        vec!["ls", "team/.."],
    ] {
        let out = pika(url, &refused);
        assert_eq!(out.status.code(), Some(2), "{refused:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not a"),
            "{refused:?}: {}",
            stderr(&out)
        );
    }
    let out = pika(url, &["get", "prod.yaml"]);
    assert_eq!(out.status.code(), Some(0), "prod.yaml is still there");
    assert_eq!(out.stdout, b"b\n");
}
