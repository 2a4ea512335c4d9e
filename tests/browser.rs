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
//! A second test checks the editor and the inspection tools on one page:
//! CodeMirror highlights JSON and YAML and matches brackets while the
//! textarea `#editor` stays in step with it (scripts set and read its
//! value), a validation error marks its line, the history's Compare shows
//! versions 1 and 3 side by side, and a search hit opens its file at the
//! line. The two tests take turns (each starts a cluster and a browser).
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

    /// Real key presses into the element (WebDriver key codes: `\u{E007}`
    /// is Enter, `\u{E00C}` Escape).
    fn type_keys(&self, css: &str, keys: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": keys }),
        );
    }

    /// Key presses into whatever has the focus, as a user's: `keys` are
    /// chords, each pressed in order and released in reverse
    /// (`["1", "\u{E009}s"]`: 1, then Ctrl+S).
    fn press(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for chord in keys {
            let chord: Vec<String> = chord.chars().map(String::from).collect();
            actions.extend(chord.iter().map(|k| json!({"type": "keyDown", "value": k})));
            actions.extend(
                chord
                    .iter()
                    .rev()
                    .map(|k| json!({"type": "keyUp", "value": k})),
            );
        }
        self.call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
        self.call("DELETE", "/actions", json!({}));
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

    /// Waits for the status bar to confirm a save of `version`; if it
    /// does not, says what the status bar showed instead.
    fn saved(&self, version: &str, what: &str) {
        let limit = Duration::from_secs(10);
        let mut status = Value::Null;
        let confirmed = wait_for(limit, || {
            status = self.js(
                "return document.querySelector('#status').textContent;",
                json!([]),
            );
            status
                .as_str()
                .is_some_and(|s| s.contains(&format!("saved {version}")))
                .then_some(())
        });
        assert!(
            confirmed.is_some(),
            "{what}: not within {limit:?}; the status bar said {status}"
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

/// Whether the browser is missing (the test then says "skipped"), unless
/// `PIKA_REQUIRE_BROWSER=1`, where that fails.
fn no_browser() -> bool {
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return false;
    }
    let required = std::env::var("PIKA_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "PIKA_REQUIRE_BROWSER=1 but {CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    );
    eprintln!("skipped: no {CHROMEDRIVER} / {CHROMIUM} (apt-get install chromium chromium-driver)");
    true
}

/// The tests take turns: each runs a cluster and a browser, too much at
/// once for a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Three loopback nodes on `127.0.1.{base}..`, a leader elected; their URLs.
fn start_cluster(base: u8) -> (pika_campaign::cluster::Cluster, Vec<String>) {
    use pika_campaign::cluster::{Cluster, Options};
    let pika = Path::new(env!("CARGO_BIN_EXE_pika"));
    let options = Options {
        network: pika_campaign::Network::Loopback,
        test_hooks: false,
        env: Vec::new(),
        tmpfs_mb: None,
        learners: 0,
    };
    let cluster = Cluster::start_with(pika, base, &[1.0, 1.0, 1.0], options).expect("3 nodes");
    cluster
        .leader(Duration::from_secs(15))
        .expect("a leader elected");
    let urls = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    (cluster, urls)
}

/// Opens the page of the node at `url` with the admin token in the
/// fragment and waits until it is live; returns the tab.
fn open_page(browser: &Browser, url: &str) -> String {
    let admin_token = pika_campaign::TEST_ADMIN_TOKEN;
    let tab = browser.open_tab(&format!("{url}/#token={admin_token}"));
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
    tab
}

#[test]
fn a_config_saved_on_one_page_shows_and_edits_on_the_others() {
    if no_browser() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_cluster, urls) = start_cluster(150);

    let browser = Browser::start();
    let tabs: Vec<String> = urls.iter().map(|u| open_page(&browser, u)).collect();

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

/// Saves `text` at `path` through node `url`'s API as a new version.
fn save(http: &reqwest::blocking::Client, url: &str, path: &str, text: &str) {
    let response = http
        .post(format!("{url}/api/v1/file/{path}"))
        .json(&json!({ "data": BASE64.encode(text) }))
        .send()
        .expect("saved");
    assert!(response.status().is_success(), "save {path}: {response:?}");
}

#[test]
fn the_editor_highlights_the_history_compares_and_search_opens_hits() {
    if no_browser() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_cluster, urls) = start_cluster(160);
    let http = reqwest::blocking::Client::builder()
        .default_headers(pika_campaign::admin_headers())
        .build()
        .expect("http client");
    let json_text = "{\n  \"name\": \"pika\",\n  \"port\": 8080,\n  \"tags\": [1, 2]\n}";
    let yaml_text = "server:\n  name: pika\n  port: 8080\n";
    save(&http, &urls[0], "ui/settings.json", json_text);
    save(&http, &urls[0], "ui/settings.yaml", yaml_text);
    // Three versions: v1 has a line v3 has not, and the other way round.
    let (d1, d2, d3) = (
        "a: 1\nonly_in_v1: gone\nkeep: same\nz: end\n",
        "a: 1\nkeep: same\nz: end\n",
        "a: 1\nkeep: same\nonly_in_v3: new\nz: end\n",
    );
    for text in [d1, d2, d3] {
        save(&http, &urls[0], "ui/diffed.yaml", text);
    }
    let searched = "title = \"x\"\n[owner]\nname = \"zanzibarquux\"\n";
    save(&http, &urls[0], "ui/other/found.toml", searched);

    let browser = Browser::start();
    open_page(&browser, &urls[1]);
    let cm = "document.querySelector('.CodeMirror').CodeMirror";

    // JSON: highlighted tokens inside the editor, bracket matching.
    browser.open_when_listed("the page", "ui/settings.json", "v1", json_text);
    browser.until(
        "JSON highlighted",
        Duration::from_secs(5),
        &format!(
            "return {cm}.getOption('mode').json === true
               && !!document.querySelector('.CodeMirror .cm-string.cm-property')
               && !!document.querySelector('.CodeMirror .cm-number');"
        ),
        json!([]),
    );
    browser.js(
        &format!("{cm}.focus(); {cm}.setCursor({{line: 3, ch: 10}});"),
        json!([]),
    );
    browser.until(
        "the brackets around the tags matched",
        Duration::from_secs(5),
        "const m = [...document.querySelectorAll('.CodeMirror .CodeMirror-matchingbracket')];
         return m.length === 2 && m[0].textContent === '[' && m[1].textContent === ']';",
        json!([]),
    );

    // Typing into CodeMirror reaches the textarea; Ctrl+S there saves it.
    browser.js(
        &format!("{cm}.focus(); {cm}.setCursor({{line: 2, ch: 14}});"),
        json!([]),
    );
    browser.press(&["1", "\u{E009}s"]);
    let typed = json_text.replace("8080", "80801");
    browser.saved("v2", "saved with Ctrl+S in the editor");
    assert_eq!(browser.text("#editor"), typed);
    assert_eq!(browser.text("#version"), "v2");

    // The textarea and CodeMirror stay in step both ways, and edits show
    // as unsaved (the amber frame).
    browser.fill("#editor", "{\"set\": \"by a script\"}");
    assert_eq!(
        browser.js(&format!("return {cm}.getValue();"), json!([])),
        "{\"set\": \"by a script\"}"
    );
    browser.js(
        &format!("{cm}.replaceRange('\\n', {{line: 0, ch: 1}});"),
        json!([]),
    );
    assert_eq!(browser.text("#editor"), "{\n\"set\": \"by a script\"}");
    assert_eq!(
        browser.js(
            "return document.querySelector('#editor-wrap').classList.contains('dirty');",
            json!([])
        ),
        true,
        "unsaved edits frame the editor"
    );

    // A validation error marks its line and puts the cursor there.
    browser.fill("#editor", "{\n  \"a\": 1,\n  \"b\": \n}");
    browser.click("#save");
    browser.until(
        "the error line marked",
        Duration::from_secs(10),
        &format!(
            "const marked = document.querySelectorAll('.CodeMirror .line-error');
             return !document.querySelector('#error').hidden && marked.length === 1
               && {cm}.getCursor().line === 3;"
        ),
        json!([]),
    );

    // YAML: highlighted too.
    browser.click("#tree .file[data-path=\"ui/settings.yaml\"]");
    browser.until(
        "the YAML file opened",
        Duration::from_secs(5),
        SHOWS,
        json!(["v1", yaml_text]),
    );
    browser.until(
        "YAML highlighted",
        Duration::from_secs(5),
        &format!(
            "return {cm}.getOption('mode') === 'yaml'
               && !!document.querySelector('.CodeMirror .cm-atom')
               && !!document.querySelector('.CodeMirror .cm-number')
               && document.querySelectorAll('.CodeMirror .line-error').length === 0
               && !document.querySelector('#editor-wrap').classList.contains('dirty');"
        ),
        json!([]),
    );

    // Compare v1 and v3 side by side.
    browser.click("#tree .file[data-path=\"ui/diffed.yaml\"]");
    browser.until(
        "v3 opened",
        Duration::from_secs(5),
        SHOWS,
        json!(["v3", d3]),
    );
    browser.until(
        "the compare form, previous against current",
        Duration::from_secs(5),
        "return !document.querySelector('#compare').hidden
           && document.querySelector('#diff-from').value === '2'
           && document.querySelector('#diff-to').value === '3'
           && document.querySelectorAll('#diff-from option').length === 3;",
        json!([]),
    );
    browser.fill("#diff-from", "1");
    browser.click("#diff-show");
    browser.until(
        "v1 and v3 side by side",
        Duration::from_secs(5),
        "const d = document.querySelector('#diff');
         if (!d || d.hidden || getComputedStyle(d).display === 'none') return false;
         const cells = (css) => [...d.querySelectorAll(css)].map((c) => c.textContent);
         const rows = [...d.querySelectorAll('tbody tr')].map((r) =>
           [...r.querySelectorAll('td.code')].map((c) => c.className + '=' + c.textContent).join(' | '));
         return document.querySelector('#diff-title').textContent === 'ui/diffed.yaml: v1 → v3'
           && cells('td.code.del').join() === 'only_in_v1: gone'
           && cells('td.code.add').join() === 'only_in_v3: new'
           && rows.includes('code same=a: 1 | code same=a: 1')
           && rows.includes('code same=keep: same | code same=keep: same')
           && rows.includes('code same=z: end | code same=z: end');",
        json!([]),
    );
    let out: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("diff.png");
    browser.screenshot("body", &file);
    eprintln!("page with the diff: {}", file.display());
    browser.click("#diff-close");
    assert_eq!(
        browser.js("return document.querySelector('#diff').hidden;", json!([])),
        true
    );

    // Search: a word only one file has; its hit opens the file at the line.
    browser.type_keys("#search", "ZanzibarQuux\u{E007}");
    browser.until(
        "one hit, with its line",
        Duration::from_secs(5),
        "const hits = document.querySelectorAll('#search-results .hit');
         return hits.length === 1 && hits[0].dataset.path === 'ui/other/found.toml'
           && hits[0].dataset.line === '3' && hits[0].textContent.includes(':3')
           && hits[0].textContent.includes('name = \"zanzibarquux\"');",
        json!([]),
    );
    browser.click("#search-results .hit[data-path=\"ui/other/found.toml\"]");
    browser.until(
        "the hit's file open at its line",
        Duration::from_secs(5),
        &format!(
            "return document.querySelector('#path').value === 'ui/other/found.toml'
               && document.querySelector('#editor').value === arguments[0]
               && {cm}.getOption('mode') === 'toml' && {cm}.getCursor().line === 2;"
        ),
        json!([searched]),
    );
    let file = out.join("search.png");
    browser.screenshot("body", &file);
    eprintln!("page with a search hit open: {}", file.display());
    // No match says so; Escape clears the results.
    browser.fill("#search", "");
    browser.type_keys("#search", "no-such-words-anywhere\u{E007}");
    browser.until(
        "no match",
        Duration::from_secs(5),
        "return document.querySelector('#search-results').textContent === 'no match';",
        json!([]),
    );
    browser.type_keys("#search", "\u{E00C}");
    browser.until(
        "the results cleared",
        Duration::from_secs(5),
        "const r = document.querySelector('#search-results');
         return r.hidden && r.children.length === 0;",
        json!([]),
    );
}
