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
