//! The web UI in real headless Chromium (Debian's chromium and
//! chromium-driver, installed by `.ci/run`), driven over WebDriver against a
//! 3-node loopback cluster: a config saved on node 1's page appears on node
//! 3's open page without a reload, an edit on node 2 reaches every page, a
//! stale save shows the conflict view, and the cluster panel is saved as a
//! screenshot under `target/tmp/browser/`. Each page logs in through the
//! URL fragment (`#token=...`, as the start-up log prints it), the history
//! names the token that saved each version, and a read-only token's page
//! has Save disabled.
//!
//! Without chromedriver the test says "skipped", unless
//! `PIKA_REQUIRE_BROWSER=1` (CI sets it), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key WebDriver names element references by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session, ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port for chromedriver");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(20), || {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
        });
        assert!(ready.is_some(), "chromedriver did not become ready");
        let profile = tempfile::tempdir().unwrap();
        // The flags this machine needs: no sandbox as root, and none of
        // Chromium's background traffic (the network beyond loopback is shut).
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .expect("a WebDriver session");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let reply: Value = request
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        if reply["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    /// Opens `url` in a new tab; returns the tab's handle.
    fn open_tab(&self, url: &str) -> String {
        let handle = self.call("POST", "/window/new", json!({"type": "tab"}))["handle"]
            .as_str()
            .expect("a tab handle")
            .to_string();
        self.switch(&handle);
        self.call("POST", "/url", json!({ "url": url }));
        handle
    }

    fn switch(&self, handle: &str) {
        self.call("POST", "/window", json!({ "handle": handle }));
    }

    fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// A real click, as a user's.
    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Types into a field the way a script can: set the value and fire the
    /// events the page listens to.
    fn fill(&self, css: &str, value: &str) {
        self.js(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1];
             e.dispatchEvent(new Event('input', {bubbles: true}));
             e.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        );
    }

    fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? (e.value ?? e.textContent) : null;",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits until `script` returns true in the current tab; how long it took.
    fn until(&self, what: &str, limit: Duration, script: &str, args: Value) -> Duration {
        let start = Instant::now();
        wait_for(limit, || {
            (self.js(script, args.clone()) == true).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: not within {limit:?}"));
        start.elapsed()
    }

    /// Waits for the status bar to confirm a save of `version`.
    fn saved(&self, version: &str, what: &str) {
        self.until(
            what,
            Duration::from_secs(10),
            "return document.querySelector('#status').textContent.includes('saved ' + arguments[0]);",
            json!([version]),
        );
    }

    /// Waits for `path` in the current page's tree, opens it, and waits
    /// for the editor to show `version` with `text`; returns how long the
    /// file took to appear.
    fn open_when_listed(&self, page: &str, path: &str, version: &str, text: &str) -> Duration {
        let appeared = self.until(
            &format!("the file on {page}"),
            Duration::from_secs(5),
            HAS_FILE,
            json!([path]),
        );
        self.click(&format!("#tree .file[data-path=\"{path}\"]"));
        self.until(
            &format!("{page} opened it"),
            Duration::from_secs(5),
            SHOWS,
            json!([version, text]),
        );
        appeared
    }

    fn screenshot(&self, css: &str, file: &Path) {
        let id = self.element(css);
        let png = self.call("GET", &format!("/element/{id}/screenshot"), json!({}));
        let bytes = BASE64
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        std::fs::write(file, bytes).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HAS_FILE: &str =
    "return !!document.querySelector('#tree .file[data-path=\"' + arguments[0] + '\"]');";
const SHOWS: &str = "return document.querySelector('#version').textContent.trim() === arguments[0]
    && document.querySelector('#editor').value === arguments[1];";

#[test]
fn a_config_saved_on_one_page_shows_and_edits_on_the_others() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        let required = std::env::var("PIKA_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PIKA_REQUIRE_BROWSER=1 but {CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: no {CHROMEDRIVER} / {CHROMIUM} (apt-get install chromium chromium-driver)"
        );
        return;
    }
    use pika_campaign::cluster::{Cluster, Options};
    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    let options = Options {
        network: pika_campaign::Network::Loopback,
        test_hooks: false,
        env: Vec::new(),
        tmpfs_mb: None,
    };
    let cluster = Cluster::start_with(pika, 150, &[1.0, 1.0, 1.0], options).expect("3 nodes");
    cluster
        .leader(Duration::from_secs(15))
        .expect("a leader elected");
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();

    let browser = Browser::start();
    let admin_token = pika_campaign::TEST_ADMIN_TOKEN;
    let tabs: Vec<String> = urls
        .iter()
        .map(|u| browser.open_tab(&format!("{u}/#token={admin_token}")))
        .collect();
    for tab in &tabs {
        browser.switch(tab);
        assert_eq!(
            browser.js("return location.hash;", json!([])),
            "",
            "the page takes the token out of the address bar"
        );
        browser.until(
            "the page is live",
            Duration::from_secs(10),
            "return document.querySelector('#live').textContent.trim() === 'live';",
            json!([]),
        );
    }

    // Node 1's page: a new JSON config.
    let path = "demo/app.json";
    let (v1, v2) = ("{\n  \"port\": 8080\n}", "{\n  \"port\": 9090\n}");
    browser.switch(&tabs[0]);
    browser.click("#new");
    browser.fill("#path", path);
    assert_eq!(browser.text("#format"), "json", "format from the extension");
    browser.fill("#editor", v1);
    browser.click("#save");
    browser.saved("v1", "saved on node 1");
    browser.until(
        "the author in node 1's history",
        Duration::from_secs(5),
        "const li = document.querySelector('#history li[data-version=\"1\"] .author');
         return !!li && li.textContent === 'by admin';",
        json!([]),
    );

    // Node 3's page, never reloaded: the file appears; open it.
    browser.switch(&tabs[2]);
    let appeared = browser.open_when_listed("node 3's page", path, "v1", v1);
    eprintln!("node 3's page showed the new file {appeared:?} after node 1's save was confirmed");

    // Node 2's page: open, edit, save.
    browser.switch(&tabs[1]);
    browser.open_when_listed("node 2's page", path, "v1", v1);
    browser.fill("#editor", v2);
    browser.click("#save");
    browser.saved("v2", "saved on node 2");

    // Every page shows v2 without a reload.
    for (i, tab) in tabs.iter().enumerate() {
        browser.switch(tab);
        let took = browser.until(
            &format!("v2 on node {}'s page", i + 1),
            Duration::from_secs(5),
            SHOWS,
            json!(["v2", v2]),
        );
        eprintln!("node {}'s page showed v2 {took:?} after the save", i + 1);
    }

    // A stale save: node 3 edits v2 while node 1 saves v3.
    browser.switch(&tabs[2]);
    browser.fill("#editor", "{\"port\": 3}");
    browser.switch(&tabs[0]);
    browser.fill("#editor", "{\"port\": 1}");
    browser.click("#save");
    browser.saved("v3", "saved v3 on node 1");
    browser.switch(&tabs[2]);
    browser.click("#save");
    browser.until(
        "the conflict view on node 3",
        Duration::from_secs(10),
        "const c = document.querySelector('#conflict');
         return !!c && !c.hidden && getComputedStyle(c).display !== 'none'
           && document.querySelector('#conflict-theirs').textContent.includes('\"port\": 1');",
        json!([]),
    );

    // The cluster panel: three nodes, one leader; saved for people to see.
    browser.switch(&tabs[0]);
    browser.until(
        "three nodes and one leader in the cluster panel",
        Duration::from_secs(10),
        "return document.querySelectorAll('#cluster .node').length === 3
            && document.querySelectorAll('#cluster .node.leader').length === 1;",
        json!([]),
    );

    // A read-only token: its page opens the config and has Save disabled,
    // even after the text is edited; typing a path it may not write
    // keeps it so.
    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .build()
        .expect("http client");
    let created: Value = http
        .post(format!("{}/api/v1/tokens", urls[0]))
        .json(&json!({"name": "viewer", "scopes": ["demo/**:read"]}))
        .send()
        .expect("token created")
        .json()
        .expect("JSON");
    let viewer = created["token"].as_str().expect("a token").to_string();
    let tab = browser.open_tab(&format!("{}/#token={viewer}", urls[1]));
    browser.switch(&tab);
    browser.open_when_listed("the viewer's page", path, "v3", "{\"port\": 1}");
    browser.fill("#editor", "{\"port\": 2}");
    let disabled = "return document.querySelector('#save').disabled
        && document.querySelector('#delete').disabled;";
    browser.until(
        "Save and Delete disabled for a read-only token",
        Duration::from_secs(5),
        disabled,
        json!([]),
    );
    assert_eq!(browser.text("#who-name"), "viewer");

    let out: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("cluster-panel.png");
    browser.screenshot("#cluster", &file);
    let png = std::fs::read(&file).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("cluster panel screenshot: {}", file.display());
}
