//! The config loader: seed compatibility, precedence, and errors that name
//! the source, the key and the problem.

use std::path::PathBuf;
use std::time::Duration;

use pika::config::{Sources, load};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write test config");
    path
}

fn sources(file: Option<PathBuf>, env: &[(&str, &str)]) -> Sources {
    Sources {
        flag: file,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        search: Vec::new(),
    }
}

const SEED: &str = "storage:
  bw:
    path: /tmp/pika1111
cluster:
  enabled: true
  dns_addr: pika.local
  bind_addr: 127.0.1.1
  replicas: 3
  security_key: 123456
server:
  port: 8091
";

#[test]
fn the_seed_yaml_loads_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "pika.yaml", SEED);
    // A cluster needs an admin token now (access control, on by default);
    // the seed's file is refused without one, naming the key, and loads
    // unchanged with one from the environment.
    let refused = load(&sources(Some(file.clone()), &[])).expect_err("no admin token");
    assert!(
        refused.to_string().contains("auth.admin_token"),
        "{refused}"
    );
    let token = pika_campaign::TEST_ADMIN_TOKEN;
    let loaded = load(&sources(Some(file), &[("PIKA_AUTH_ADMIN_TOKEN", token)])).unwrap();
    let c = loaded.config;
    assert_eq!(c.storage.bw.path, PathBuf::from("/tmp/pika1111"));
    assert!(c.cluster.enabled);
    assert_eq!(c.cluster.dns_addr, "pika.local");
    assert_eq!(c.cluster.bind_addr, "127.0.1.1");
    assert_eq!(c.cluster.replicas, 3);
    assert_eq!(c.cluster.security_key.value, "123456");
    assert_eq!(c.server.port, 8091);
    // Untouched keys keep their documented defaults.
    assert_eq!(c.server.host, "0.0.0.0");
    assert_eq!(c.cluster.port, 5000);
    assert_eq!(c.cluster.heartbeat_interval.0, Duration::from_secs(5));
    assert_eq!(c.cluster.heartbeat_timeout.0, Duration::from_secs(30));
    assert_eq!(c.cluster.sync_interval.0, Duration::from_secs(300));
    assert_eq!(c.cluster.lock_key, "pika-leader");
    assert_eq!(c.storage.history, 20);
    // The bare-number key is accepted, with a hint about quoting.
    assert!(
        loaded.warnings.iter().any(|w| w.contains("security_key")),
        "{:?}",
        loaded.warnings
    );
    // And the key never appears in what gets logged.
    assert!(!c.masked().to_string().contains("123456"));
    assert!(
        !loaded.warnings.join(" ").contains("123456"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn no_file_means_embedded_defaults() {
    let loaded = load(&sources(None, &[])).unwrap();
    assert!(loaded.file.is_none());
    assert_eq!(loaded.config.server.port, 8080);
    assert_eq!(loaded.config.storage.bw.path, PathBuf::from("data/pika"));
    assert!(!loaded.config.cluster.enabled);
}

#[test]
fn env_overrides_the_file_and_keeps_strings_as_strings() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "pika.yaml", SEED);
    let env = [
        ("PIKA_SERVER_PORT", "9999"),
        ("PIKA_CLUSTER_DNS_ADDR", "127.0.1.1,127.0.1.2,127.0.1.3"),
        ("PIKA_CLUSTER_SECURITY_KEY", "0123"),
        ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "250ms"),
        ("PIKA_STORAGE_BW_PATH", "/tmp/elsewhere"),
        ("PIKA_SERVER_LIMITS_REQUEST_BODY_MB", "2"),
        ("PIKA_LOG_LEVEL", "debug"),
        ("PIKA_CLUSTER_ENABLED", "false"),
    ];
    let c = load(&sources(Some(file), &env)).unwrap().config;
    assert_eq!(c.server.port, 9999);
    assert_eq!(c.cluster.dns_addr, "127.0.1.1,127.0.1.2,127.0.1.3");
    assert_eq!(c.cluster.security_key.value, "0123");
    assert_eq!(c.cluster.heartbeat_interval.0, Duration::from_millis(250));
    assert_eq!(c.storage.bw.path, PathBuf::from("/tmp/elsewhere"));
    assert_eq!(c.server.limits.request_body_mb, 2);
    assert_eq!(c.log_level, "debug");
    assert!(!c.cluster.enabled);
}

#[test]
fn config_file_env_is_used_and_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(&dir, "a.yaml", "server:\n  port: 1111\n");
    let b = write(&dir, "b.yaml", "server:\n  port: 2222\n");
    let by_env = load(&sources(None, &[("CONFIG_FILE", a.to_str().unwrap())])).unwrap();
    assert_eq!(by_env.config.server.port, 1111);
    let by_flag = load(&sources(
        Some(b.clone()),
        &[("CONFIG_FILE", a.to_str().unwrap())],
    ))
    .unwrap();
    assert_eq!(by_flag.config.server.port, 2222);
    assert_eq!(by_flag.file, Some(b));
}

#[test]
fn the_search_list_finds_the_first_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let yml = write(&dir, "pika.yml", "server:\n  port: 3333\n");
    let s = Sources {
        flag: None,
        env: Vec::new(),
        search: vec![dir.path().join("pika.yaml"), yml.clone()],
    };
    let loaded = load(&s).unwrap();
    assert_eq!(loaded.file, Some(yml));
    assert_eq!(loaded.config.server.port, 3333);
}

fn error_of(yaml: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "bad.yaml", yaml);
    let e = load(&sources(Some(file), env)).expect_err("config should be refused");
    let text = e.to_string();
    assert!(!text.is_empty());
    text
}

#[test]
fn syntax_errors_name_the_file_and_the_line() {
    let e = error_of("server:\n  port: 8080\n   host: x\n", &[]);
    assert!(e.contains("bad.yaml"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn type_errors_name_the_key() {
    let e = error_of("server:\n  port: eighty\n", &[]);
    assert!(e.contains("bad.yaml") && e.contains("server.port"), "{e}");
}

#[test]
fn out_of_range_ports_are_refused() {
    let e = error_of("server:\n  port: 70000\n", &[]);
    assert!(
        e.contains("server.port") && e.contains("out of range"),
        "{e}"
    );
    let e = error_of("cluster:\n  port: -1\n", &[]);
    assert!(
        e.contains("cluster.port") && e.contains("out of range"),
        "{e}"
    );
}

#[test]
fn unknown_durations_are_refused() {
    let e = error_of("cluster:\n  heartbeat_interval: 5x\n", &[]);
    assert!(
        e.contains("cluster.heartbeat_interval") && e.contains("not a duration"),
        "{e}"
    );
    let e = error_of("cluster:\n  sync_interval: 300\n", &[]);
    assert!(
        e.contains("cluster.sync_interval") && e.contains("no unit"),
        "{e}"
    );
}

#[test]
fn zero_replicas_with_the_cluster_enabled_is_refused() {
    let e = error_of("cluster:\n  enabled: true\n  replicas: 0\n", &[]);
    assert!(
        e.contains("bad.yaml") && e.contains("cluster.replicas"),
        "{e}"
    );
    // With the cluster disabled the key is inert, so it is accepted.
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "ok.yaml", "cluster:\n  replicas: 0\n");
    assert!(load(&sources(Some(file), &[])).is_ok());
}

#[test]
fn bad_env_values_name_the_variable() {
    let e = error_of("{}\n", &[("PIKA_SERVER_PORT", "http")]);
    assert!(
        e.contains("PIKA_SERVER_PORT") && e.contains("server.port"),
        "{e}"
    );
}

#[test]
fn a_missing_named_file_is_an_error() {
    let e = load(&sources(Some("/nonexistent/pika.yaml".into()), &[])).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/pika.yaml"), "{e}");
}

#[test]
fn unknown_keys_warn_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "pika.yaml",
        "server:\n  port: 8081\n  colour: blue\nextra:\n  a: 1\n",
    );
    let loaded = load(&sources(Some(file), &[("PIKA_NOPE", "1")])).unwrap();
    let w = loaded.warnings.join("\n");
    assert!(
        w.contains("server.colour") && w.contains("`extra`") && w.contains("PIKA_NOPE"),
        "{w}"
    );
    assert_eq!(loaded.config.server.port, 8081);
}

#[test]
fn empty_and_comment_only_files_are_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "# nothing here\n"] {
        let file = write(&dir, "empty.yaml", text);
        assert_eq!(
            load(&sources(Some(file), &[])).unwrap().config.server.port,
            8080
        );
    }
}

#[test]
fn the_page_cache_bound_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "pika.yaml", "storage:\n  cache_mb: 16\n");
    assert_eq!(
        load(&sources(Some(file), &[]))
            .unwrap()
            .config
            .storage
            .cache_mb,
        16
    );
    let e = error_of("{}\n", &[("PIKA_STORAGE_CACHE_MB", "0")]);
    assert!(e.contains("storage.cache_mb"), "{e}");
}

#[test]
fn the_pipeline_depth_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "pika.yaml", "cluster:\n  pipeline_depth: 4\n");
    let config = load(&sources(Some(file), &[])).unwrap().config;
    assert_eq!(config.cluster.pipeline_depth, 4);
    assert_eq!(
        load(&sources(None, &[]))
            .unwrap()
            .config
            .cluster
            .pipeline_depth,
        2,
        "two batches in flight unless asked"
    );
    let cluster = "cluster:\n  enabled: true\n  dns_addr: 127.0.1.1,127.0.1.2\n";
    for bad in ["0", "65"] {
        let e = error_of(cluster, &[("PIKA_CLUSTER_PIPELINE_DEPTH", bad)]);
        assert!(e.contains("cluster.pipeline_depth"), "{e}");
    }
}

/// A cluster's frames must hold the largest write accepted: with
/// `max_frame_mb: 16` and 32 MiB bodies, a 20 MiB write was acknowledged
/// to nobody and its entry never left the leader.
#[test]
fn a_frame_smaller_than_a_request_body_is_refused_in_a_cluster() {
    let cluster = "cluster:\n  enabled: true\n  dns_addr: 127.0.1.1,127.0.1.2\n";
    let e = error_of(cluster, &[("PIKA_CLUSTER_MAX_FRAME_MB", "16")]);
    assert!(
        e.contains("cluster.max_frame_mb") && e.contains("server.limits.request_body_mb (32)"),
        "{e}"
    );
    let e = error_of(cluster, &[("PIKA_SERVER_LIMITS_REQUEST_BODY_MB", "64")]);
    assert!(e.contains("cluster.max_frame_mb"), "{e}");
    // Within the frame, and on a single node (no frames), either is fine.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "pika.yaml",
        "server:\n  limits:\n    request_body_mb: 63\n",
    );
    assert!(load(&sources(Some(file), &[])).is_ok());
    let file = write(
        &dir,
        "pika2.yaml",
        "cluster:\n  max_frame_mb: 8\nserver:\n  limits:\n    request_body_mb: 8\n",
    );
    assert!(load(&sources(Some(file), &[])).is_ok());
}

/// The loopback demo's files are what the README and `make demo` promise:
/// node N binds 127.0.1.N, serves HTTP on 809N, finds the others through
/// pika.local, keeps its data under /tmp, and shares one key.
#[test]
fn the_demo_configs_are_the_documented_loopback_cluster() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut keys = Vec::new();
    for n in 1..=3 {
        let file = root.join(format!("example/cluster/{n}.yaml"));
        let loaded = load(&sources(Some(file.clone()), &[])).expect("the demo config loads");
        assert!(
            loaded.warnings.is_empty(),
            "{file:?}: {:?}",
            loaded.warnings
        );
        let c = loaded.config;
        assert_eq!(c.server.host, format!("127.0.1.{n}"));
        assert_eq!(c.server.port, 8090 + n);
        assert!(c.cluster.enabled);
        assert_eq!(c.cluster.bind_addr, format!("127.0.1.{n}"));
        assert_eq!(c.cluster.dns_addr, "pika.local");
        assert_eq!(c.cluster.replicas, 3);
        assert_eq!(c.storage.bw.path, PathBuf::from(format!("/tmp/pika{n}")));
        assert!(c.cluster.security_key.value.len() >= 16);
        keys.push(c.cluster.security_key.value);
    }
    assert!(keys.iter().all(|k| *k == keys[0]), "one key for all three");
}

/// Settings a cluster cannot run with are refused at start (exit code 2,
/// the key named), where they used to be accepted and then misbehave:
/// a lease shorter than two heartbeat intervals (every leader stepped down
/// before renewing), a zero or absurd `forward_timeout` (every write timed
/// out at once; 10¹⁹ s overflowed the clock on the first write), a zero
/// `sync_interval` or `refresh_interval`, cluster port 0 (peers dialled
/// port 0), a lock key or prefix that makes no valid path (the node exited
/// 1 once its ports were bound), and a log level that is not one
/// (`warning` turned every log of pika's off).
#[test]
fn settings_a_cluster_cannot_run_with_are_refused() {
    let cluster = "cluster:\n  enabled: true\n  dns_addr: 127.0.1.1,127.0.1.2\n";
    for (env, key) in [
        (
            [
                ("PIKA_CLUSTER_HEARTBEAT_INTERVAL", "5s"),
                ("PIKA_CLUSTER_HEARTBEAT_TIMEOUT", "5500ms"),
            ],
            "cluster.heartbeat_timeout",
        ),
        (
            [
                ("PIKA_CLUSTER_FORWARD_TIMEOUT", "0s"),
                ("PIKA_LOG_LEVEL", "info"),
            ],
            "cluster.forward_timeout",
        ),
        (
            [
                ("PIKA_CLUSTER_FORWARD_TIMEOUT", "3000000000000000h"),
                ("PIKA_LOG_LEVEL", "info"),
            ],
            "cluster.forward_timeout",
        ),
        (
            [
                ("PIKA_CLUSTER_SYNC_INTERVAL", "0s"),
                ("PIKA_LOG_LEVEL", "info"),
            ],
            "cluster.sync_interval",
        ),
        (
            [("PIKA_CLUSTER_PORT", "0"), ("PIKA_LOG_LEVEL", "info")],
            "cluster.port",
        ),
        (
            [
                ("PIKA_CLUSTER_REFRESH_INTERVAL", "0s"),
                ("PIKA_LOG_LEVEL", "info"),
            ],
            "cluster.refresh_interval",
        ),
        (
            [
                ("PIKA_CLUSTER_REFRESH_INTERVAL", "25h"),
                ("PIKA_LOG_LEVEL", "info"),
            ],
            "cluster.refresh_interval",
        ),
        // These made the node exit 1 after it had bound its ports.
        (
            [("PIKA_CLUSTER_LOCK_KEY", ""), ("PIKA_LOG_LEVEL", "info")],
            "cluster.lock_key",
        ),
        (
            [
                ("PIKA_CLUSTER_LOCK_KEY", "../x"),
                ("PIKA_LOG_LEVEL", "info"),
            ],
            "cluster.lock_key",
        ),
        (
            [("PIKA_CLUSTER_PREFIX", "a//b"), ("PIKA_LOG_LEVEL", "info")],
            "cluster.prefix",
        ),
        (
            [("PIKA_LOG_LEVEL", "warning"), ("PIKA_CLUSTER_PORT", "7946")],
            "log_level",
        ),
    ] {
        let e = error_of(cluster, &env);
        assert!(e.contains(key), "{env:?}: {e}");
    }
    for fine in ["info", "pika=debug,warn", "WARN", "off"] {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "pika.yaml", &format!("log_level: \"{fine}\"\n"));
        assert!(load(&sources(Some(file), &[])).is_ok(), "{fine}");
    }
}

/// The original pika's files write the port as a string and leave the
/// host empty for every interface: both load as they meant.
#[test]
fn the_original_pikas_string_port_and_empty_host_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "pika.yaml",
        "server:\n  host: \"\"\n  port: \"8080\"\n",
    );
    let config = load(&sources(Some(file), &[])).unwrap().config;
    assert_eq!(config.server.port, 8080);
    assert_eq!(config.listen_host(), "0.0.0.0");
    let file = write(&dir, "bad.yaml", "server:\n  port: \"80x\"\n");
    let e = load(&sources(Some(file), &[])).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("server.port")),
        "{e:?}"
    );
}
