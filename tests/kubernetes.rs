//! example/kubernetes/ kept honest: every manifest parses, the ConfigMap's
//! `pika.yaml` goes through pika's own loader without a problem or a
//! warning, every key and `PIKA_*` variable is one pika reads, and the
//! Services, the StatefulSet and the config agree on names and ports.

use std::collections::BTreeSet;

use pika::config::{Config, Sources, load};
use serde::Deserialize;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/example/kubernetes");

/// The value the test gives `fieldRef: status.podIP`.
const POD_IP: &str = "10.0.0.7";

struct Doc {
    file: String,
    value: Value,
}

/// Every non-empty document of every `*.yaml` file, as JSON.
fn manifests() -> Vec<Doc> {
    let mut files: Vec<_> = std::fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("{DIR}: {e}"))
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.yaml files in {DIR}");
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let before = docs.len();
        for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let yaml = serde_norway::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: document {}: {e}", i + 1));
            if yaml.is_null() {
                continue;
            }
            let value = serde_json::to_value(&yaml)
                .unwrap_or_else(|e| panic!("{file}: document {}: {e}", i + 1));
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
        assert!(docs.len() > before, "{file}: no YAML document");
    }
    docs
}

fn str_at<'a>(doc: &'a Doc, pointer: &str) -> &'a str {
    doc.value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{}: {pointer} is missing or not a string", doc.file))
}

/// The one object of `kind` named `name`.
fn object<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| {
            d.value["kind"].as_str() == Some(kind)
                && d.value.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} `{name}`");
    found[0]
}

/// Every leaf key path (`cluster.dns_addr`, ...) of a JSON object.
fn leaf_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(_) => leaf_paths(v, &path, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

/// The keys pika reads: the leaves of its full config, serialized back.
fn config_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    leaf_paths(&Config::default().masked(), "", &mut keys);
    assert!(keys.contains("cluster.security_key"), "{keys:?}");
    keys
}

/// `PIKA_` + the key path, dots as underscores, upper-cased.
fn env_name(key: &str) -> String {
    format!("PIKA_{}", key.replace('.', "_").to_ascii_uppercase())
}

struct Cluster<'a> {
    docs: &'a [Doc],
    namespace: &'a Doc,
    secret: &'a Doc,
    configmap: &'a Doc,
    headless: &'a Doc,
    client: &'a Doc,
    statefulset: &'a Doc,
    /// The StatefulSet's one container.
    container: &'a Value,
}

impl<'a> Cluster<'a> {
    fn new(docs: &'a [Doc]) -> Self {
        let statefulset = object(docs, "StatefulSet", "pika");
        let containers = statefulset
            .value
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .expect("statefulset: spec.template.spec.containers");
        assert_eq!(containers.len(), 1, "statefulset: one container expected");
        Cluster {
            docs,
            namespace: object(docs, "Namespace", "pika"),
            secret: object(docs, "Secret", "pika-security-key"),
            configmap: object(docs, "ConfigMap", "pika-config"),
            headless: object(docs, "Service", "pika-headless"),
            client: object(docs, "Service", "pika"),
            statefulset,
            container: &containers[0],
        }
    }

    fn pika_yaml(&self) -> &'a str {
        str_at(self.configmap, "/data/pika.yaml")
    }

    /// The container's env as `(name, value)`, with `valueFrom` resolved the
    /// way the kubelet would: a secretKeyRef from the Secret, the pod IP as
    /// [`POD_IP`].
    fn env(&self) -> Vec<(String, String)> {
        let Some(env) = self.container.get("env") else {
            return Vec::new();
        };
        let env = env.as_array().expect("statefulset: env is a list");
        env.iter()
            .map(|var| {
                let name = var["name"].as_str().expect("env entry without a name");
                let value = if let Some(value) = var.get("value") {
                    value
                        .as_str()
                        .unwrap_or_else(|| panic!("env {name}: value must be a string"))
                        .to_string()
                } else if let Some(secret) = var.pointer("/valueFrom/secretKeyRef") {
                    assert_eq!(
                        secret["name"].as_str(),
                        Some(str_at(self.secret, "/metadata/name")),
                        "env {name}: secretKeyRef names another Secret"
                    );
                    let key = secret["key"].as_str().expect("secretKeyRef.key");
                    str_at(self.secret, &format!("/stringData/{key}")).to_string()
                } else if let Some(field) = var.pointer("/valueFrom/fieldRef/fieldPath") {
                    assert_eq!(field.as_str(), Some("status.podIP"), "env {name}");
                    POD_IP.to_string()
                } else {
                    panic!("env {name}: no value and no known valueFrom");
                };
                (name.to_string(), value)
            })
            .collect()
    }

    /// The pod's volumes.
    fn volumes(&self) -> &'a [Value] {
        self.statefulset
            .value
            .pointer("/spec/template/spec/volumes")
            .and_then(Value::as_array)
            .expect("statefulset: volumes")
    }

    /// The mountPath of the container's volumeMount named `volume`.
    fn mount(&self, volume: &str) -> &'a str {
        let mounts = self.container["volumeMounts"]
            .as_array()
            .expect("statefulset: volumeMounts");
        let found: Vec<_> = mounts
            .iter()
            .filter(|m| m["name"].as_str() == Some(volume))
            .collect();
        assert_eq!(found.len(), 1, "statefulset: one mount of `{volume}`");
        found[0]["mountPath"].as_str().expect("mountPath")
    }

    /// pika.yaml loaded by pika's loader, as `main` does, with the
    /// container's env.
    /// The Secret's placeholders are what an operator replaces; the admin
    /// token's is one pika refuses, so nobody runs with it.
    fn load(&self) -> pika::config::Loaded {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pika.yaml");
        std::fs::write(&file, self.pika_yaml()).unwrap();
        let mut sources = Sources {
            flag: Some(file),
            // CONFIG_FILE names the in-pod path; the flag wins over it here.
            env: self.env(),
            search: Vec::new(),
        };
        let refused = load(&sources).expect_err("the placeholder admin token is refused");
        assert!(
            refused.to_string().contains("auth.admin_token"),
            "{refused}"
        );
        for (name, value) in &mut sources.env {
            if name == "PIKA_AUTH_ADMIN_TOKEN" {
                *value = pika::auth::token::generate().expect("randomness");
            }
        }
        load(&sources).unwrap_or_else(|e| panic!("pika rejects configmap.yaml's pika.yaml:\n{e}"))
    }
}

#[test]
fn every_document_is_a_kubernetes_object() {
    let docs = manifests();
    for doc in &docs {
        for pointer in ["/apiVersion", "/kind", "/metadata/name"] {
            assert!(
                !str_at(doc, pointer).is_empty(),
                "{}: empty {pointer}",
                doc.file
            );
        }
    }
    let cluster = Cluster::new(&docs);
    let namespace = str_at(cluster.namespace, "/metadata/name");
    for doc in cluster.docs {
        if doc.value["kind"] != "Namespace" {
            assert_eq!(
                doc.value
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str),
                Some(namespace),
                "{}: {} `{}` is not in namespace {namespace}",
                doc.file,
                doc.value["kind"],
                doc.value["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_configmap_loads_cleanly_with_only_keys_pika_reads() {
    let docs = manifests();
    let cluster = Cluster::new(&docs);
    // Every key of pika.yaml is a key of the config pika reads (the
    // leaves of `Config::masked()`).
    let yaml: serde_norway::Value = serde_norway::from_str(cluster.pika_yaml()).unwrap();
    let yaml = serde_json::to_value(yaml).expect("pika.yaml keys are strings");
    assert!(yaml.is_object(), "pika.yaml is not a mapping");
    let mut written = BTreeSet::new();
    leaf_paths(&yaml, "", &mut written);
    let known = config_keys();
    let unknown: Vec<_> = written.difference(&known).collect();
    assert!(unknown.is_empty(), "keys pika does not read: {unknown:?}");

    // The same through pika's loader, env included: unknown keys and unknown
    // PIKA_* variables are only warnings there, so no warning is allowed.
    let loaded = cluster.load();
    assert!(
        loaded.warnings.is_empty(),
        "pika warns about the manifests:\n{}",
        loaded.warnings.join("\n")
    );

    // The key comes from the Secret, never from the ConfigMap.
    assert!(
        !written.contains("cluster.security_key"),
        "the security key must not be in the ConfigMap"
    );
    let c = &loaded.config;
    assert!(c.cluster.enabled);
    assert_eq!(
        c.cluster.security_key.value,
        str_at(cluster.secret, "/stringData/security_key")
    );
    assert_eq!(c.cluster.bind_addr, POD_IP, "PIKA_CLUSTER_BIND_ADDR unused");
    assert_eq!(
        c.storage.bw.path,
        std::path::Path::new(cluster.mount("data")),
        "storage.bw.path is not the volume's mountPath"
    );
}

#[test]
fn env_vars_name_real_config_keys() {
    let docs = manifests();
    let cluster = Cluster::new(&docs);
    let known: BTreeSet<String> = config_keys().iter().map(|k| env_name(k)).collect();
    let env = cluster.env();
    assert!(!env.is_empty(), "statefulset: no env");
    for (name, value) in &env {
        if name == "CONFIG_FILE" {
            // The ConfigMap's pika.yaml, where the ConfigMap is mounted.
            let config_volume = cluster
                .volumes()
                .iter()
                .find(|v| {
                    v.pointer("/configMap/name").and_then(Value::as_str)
                        == Some(str_at(cluster.configmap, "/metadata/name"))
                })
                .expect("statefulset: no volume from the ConfigMap");
            let volume = config_volume["name"].as_str().unwrap();
            assert_eq!(*value, format!("{}/pika.yaml", cluster.mount(volume)));
        } else {
            // pika reads only CONFIG_FILE and PIKA_*; anything else is a typo.
            assert!(
                known.contains(name),
                "env {name} is not a pika setting (known: {known:?})"
            );
        }
    }
    for needed in [
        "PIKA_CLUSTER_SECURITY_KEY",
        "PIKA_AUTH_ADMIN_TOKEN",
        "PIKA_LOG_LEVEL",
        "CONFIG_FILE",
    ] {
        assert!(env.iter().any(|(n, _)| n == needed), "env {needed} not set");
    }
}

/// The `port` of the Service port with `protocol`.
fn service_port(service: &Doc, protocol: &str) -> Option<u64> {
    service
        .value
        .pointer("/spec/ports")?
        .as_array()?
        .iter()
        .find_map(|p| {
            // TCP is the default protocol.
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            (proto == protocol).then(|| p["port"].as_u64()).flatten()
        })
}

#[test]
fn services_statefulset_and_config_agree() {
    let docs = manifests();
    let cluster = Cluster::new(&docs);
    let config = cluster.load().config;
    let headless = str_at(cluster.headless, "/metadata/name");
    let namespace = str_at(cluster.namespace, "/metadata/name");

    assert_eq!(str_at(cluster.statefulset, "/spec/serviceName"), headless);
    assert_eq!(str_at(cluster.headless, "/spec/clusterIP"), "None");
    assert_eq!(
        cluster
            .headless
            .value
            .pointer("/spec/publishNotReadyAddresses"),
        Some(&Value::Bool(true)),
        "peers must find each other before they are ready"
    );
    assert_eq!(
        config.cluster.dns_addr,
        format!("{headless}.{namespace}.svc.cluster.local")
    );
    assert_eq!(
        cluster.statefulset.value.pointer("/spec/replicas"),
        Some(&Value::from(config.cluster.replicas)),
        "StatefulSet replicas and cluster.replicas differ"
    );
    assert_eq!(
        str_at(cluster.statefulset, "/spec/podManagementPolicy"),
        "Parallel"
    );

    let http = u64::from(config.server.port);
    let peer = u64::from(config.cluster.port);
    assert_eq!(service_port(cluster.headless, "UDP"), Some(peer));
    assert_eq!(service_port(cluster.headless, "TCP"), Some(http));
    assert_eq!(service_port(cluster.client, "TCP"), Some(http));
    assert_eq!(str_at(cluster.client, "/spec/type"), "ClusterIP");

    let ports = cluster.container["ports"].as_array().expect("ports");
    let container_port = |protocol: &str| {
        ports.iter().find_map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            (proto == protocol)
                .then(|| p["containerPort"].as_u64())
                .flatten()
        })
    };
    assert_eq!(container_port("TCP"), Some(http));
    assert_eq!(container_port("UDP"), Some(peer));

    // Both Services select the StatefulSet's pods.
    let labels = &cluster.statefulset.value["spec"]["template"]["metadata"]["labels"];
    for service in [cluster.headless, cluster.client] {
        let selector = service.value["spec"]["selector"]
            .as_object()
            .unwrap_or_else(|| {
                panic!("Service {}: no selector", service.value["metadata"]["name"])
            });
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(
                &labels[k], v,
                "Service selector {k} does not match the pods"
            );
        }
    }
}

#[test]
fn probes_hit_readyz_and_healthz_on_the_http_port() {
    let docs = manifests();
    let cluster = Cluster::new(&docs);
    let config = cluster.load().config;
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &cluster.container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let scheme = if config.server.tls.enabled() {
            "HTTPS"
        } else {
            "HTTP"
        };
        assert_eq!(
            get["scheme"].as_str().unwrap_or("HTTP"),
            scheme,
            "{probe}: the scheme server.tls serves"
        );
        assert_eq!(
            get["port"].as_u64(),
            Some(u64::from(config.server.port)),
            "{probe}: not the configured server.port"
        );
    }
}

/// server.tls reads its certificate and key from where the StatefulSet
/// mounts a Secret of type kubernetes.io/tls (which holds `tls.crt` and
/// `tls.key`).
#[test]
fn tls_comes_from_a_mounted_secret() {
    let docs = manifests();
    let cluster = Cluster::new(&docs);
    let tls = cluster.load().config.server.tls;
    assert!(tls.enabled(), "the manifests serve HTTPS");
    let secret_volume = cluster
        .volumes()
        .iter()
        .find(|v| v.pointer("/secret/secretName").is_some())
        .expect("a volume from a Secret");
    let mount = cluster.mount(secret_volume["name"].as_str().expect("volume name"));
    assert_eq!(tls.cert_file, std::path::Path::new(mount).join("tls.crt"));
    assert_eq!(tls.key_file, std::path::Path::new(mount).join("tls.key"));
}

/// The Dockerfile the StatefulSet's image is built from: its volume is
/// where the StatefulSet mounts the data and where pika keeps it, it runs
/// as an unprivileged user, exposes the ports the config uses and checks
/// /healthz.
#[test]
fn the_dockerfile_matches_the_statefulset() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("a Dockerfile at the top of the repository");
    let docs = manifests();
    let cluster = Cluster::new(&docs);
    let config = cluster.load().config;
    let mounts = cluster.container["volumeMounts"]
        .as_array()
        .expect("mounts");
    let data = mounts
        .iter()
        .find(|m| m["name"] == "data")
        .and_then(|m| m["mountPath"].as_str())
        .expect("a data mount");
    assert!(
        dockerfile.contains(&format!("VOLUME [\"{data}\"]")),
        "the image's volume is the StatefulSet's data mount {data}"
    );
    assert_eq!(
        config.storage.bw.path.to_str(),
        Some(data),
        "pika keeps its data on the volume"
    );
    assert!(dockerfile.contains(&format!("ENV PIKA_STORAGE_BW_PATH={data}")));
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert_ne!(user.trim(), "root", "runs unprivileged");
    assert!(dockerfile.contains(&format!(
        "EXPOSE {}/tcp {}/udp",
        config.server.port, config.cluster.port
    )));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
    assert!(dockerfile.contains("ENTRYPOINT [\"pika\"]"));
}
