//! The command-line client in the `pika` binary: `pika get|put|rm|ls|
//! history|status|watch|token`, against one node's HTTP API, and the
//! offline `pika recover` on a stopped node's data directory.
//!
//! The token sent is, first found: `--token`, `$PIKA_TOKEN`, the file
//! named by `--token-file`, or the local node's `admin.token` (in the
//! `storage.bw.path` of the config the node would load) when readable.
//!
//! Output is for people by default and one JSON document (for `watch`, one
//! per line) with `--json`. Exit codes are part of the interface, so that
//! scripts can branch on them:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | anything else: a server error, a file that cannot be read |
//! | 2 | bad usage, or the node refused the input (400, 413) |
//! | 3 | not found (404) |
//! | 4 | version conflict (409) |
//! | 5 | the node is unreachable or cannot serve now (503) |
//! | 6 | `watch`: the node no longer keeps the history asked for |
//! | 7 | not authorized: no token, an unknown or expired one (401), or out of its scopes (403) |
//! | 8 | `backup`, `restore`: the file is not a whole, undamaged backup |

use std::io::{Read, Write};
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use pika_replication::ConfigPath;
use serde_json::{Value, json};

mod api;
mod backup;
mod inspect;
mod recover;
mod transfer;

use api::Api;

#[derive(Args, Debug)]
pub struct Client {
    /// The node to talk to.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub node: String,
    /// Print JSON instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// API token to send. Default: $PIKA_TOKEN, then --token-file, then
    /// the local node's admin.token when readable.
    #[arg(long, global = true, env = "PIKA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token (its first line).
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA (or self-signed) certificate, PEM, for https://
    /// nodes: e.g. a node's `tls/cert.pem` with `server.tls.self_signed`.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from an https:// node (no verification).
    #[arg(long, global = true)]
    pub insecure: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a config's content (the latest version, or --version N).
    Get {
        path: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Save FILE (or `-` for stdin) under PATH; the format comes from FILE's
    /// extension, else PATH's, unless --format says.
    Put {
        path: String,
        file: PathBuf,
        /// json, yaml, toml or text.
        #[arg(long)]
        format: Option<String>,
        /// Save only if PATH is at this version now (0: must not exist).
        #[arg(long)]
        expected_version: Option<u64>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a config (its history stays).
    Rm { path: String },
    /// List a folder (the root by default).
    Ls { path: Option<String> },
    /// List a config's versions.
    History { path: String },
    /// The node's view of the cluster.
    Status,
    /// Manage API tokens (needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print changes as they happen, until interrupted.
    Watch {
        /// Only paths starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Start from this revision instead of now.
        #[arg(long)]
        from_revision: Option<u64>,
    },
    /// What changed from version FROM to version TO (default: the latest),
    /// as a unified diff.
    Diff {
        path: String,
        from: u64,
        to: Option<u64>,
    },
    /// Configs whose path or content contains TEXT (any case): one line
    /// per hit, `path:line: snippet`.
    Search {
        text: String,
        /// Only under this folder or prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many hits (default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write every live config (under --prefix) as a file under DIR at its
    /// path, plus DIR/.pika-export.json with each one's format,
    /// description and version. DIR must be empty or absent.
    Export {
        dir: PathBuf,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Save each file under DIR (under --prefix) whose content, format or
    /// description differs from the node's, with compare-and-set, and say
    /// what changed. Nothing is deleted.
    Import {
        dir: PathBuf,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Save the node's committed state at one revision to FILE (needs an
    /// admin token); the file is checked before it is kept.
    Backup { file: PathBuf },
    /// Offline: build the data directory DIR (absent or empty) from a
    /// backup, after checking its checksum and Merkle root. The node
    /// started on it is the only voter of a new voter set, under a new id.
    Restore {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Offline, on a stopped node: after losing a quorum of voters for
    /// good, make this node's data the start of a new voter set of one.
    Recover {
        /// Required: the node becomes the only voter (etcd's
        /// --force-new-cluster).
        #[arg(long)]
        force_new_voter_set: bool,
        /// The stopped node's data directory (`storage.bw.path`).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it (it is shown this once).
    Create {
        name: String,
        /// `path glob:operations`, e.g. `app/**:read,write` (repeatable).
        #[arg(long = "scope", value_name = "GLOB:OPS")]
        scopes: Vec<String>,
        /// Manages tokens, sees everything.
        #[arg(long)]
        admin: bool,
        /// Refused after this long, e.g. `720h`.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List tokens (names, scopes, expiry; never secrets).
    Ls,
    /// Revoke a token by name.
    Rm { name: String },
    /// Print a fresh random token without asking any node (for
    /// `auth.admin_token`).
    Generate,
}

/// Why a command failed, carrying its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The code for an HTTP error status (see the module docs).
    fn from_status(status: u16, body: &[u8]) -> Self {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        let code = match status {
            400 | 413 => 2,
            404 => 3,
            409 => 4,
            503 => 5,
            401 | 403 => 7,
            _ => 1,
        };
        let hint = match status {
            401 => " (send a token: --token, $PIKA_TOKEN, --token-file)",
            _ => "",
        };
        Self::new(code, format!("{message} (HTTP {status}){hint}"))
    }
}

type Outcome = Result<(), Failure>;

/// The URL of config path `path` under `route`: checked as the node checks
/// a path, and percent-encoded. A path the URL parser would rewrite
/// (`team/../prod.yaml` resolved to `prod.yaml`, `a#b` cut to `a`) would
/// otherwise read, save or delete another file; it is refused here (exit 2).
pub(super) fn path_url(route: &str, path: &str) -> Result<String, Failure> {
    ConfigPath::new(path)
        .map_err(|e| Failure::new(2, format!("{path:?} is not a config path: {e}")))?;
    Ok(format!("{route}{}", inspect::encode(path)))
}

/// The URL of folder `folder` (empty for the root; a trailing `/` allowed).
fn folder_url(folder: &str) -> Result<String, Failure> {
    let inner = folder.strip_suffix('/').unwrap_or(folder);
    if inner.is_empty() {
        return Ok(format!("/api/v1/folder/{folder}"));
    }
    let url = path_url("/api/v1/folder/", inner)
        .map_err(|e| Failure::new(2, format!("{folder:?} is not a folder: {}", e.message)))?;
    Ok(if inner.len() < folder.len() {
        format!("{url}/")
    } else {
        url
    })
}

/// Runs one client command. `config_file` is the `--config` given, used
/// only to find the local node's `admin.token`.
pub fn run(client: &Client, config_file: Option<PathBuf>, command: Command) -> Outcome {
    if let Command::Token(TokenCommand::Generate) = command {
        let token = crate::auth::token::generate()
            .map_err(|e| Failure::new(1, format!("no randomness: {e}")))?;
        return write_out(format!("{token}\n").as_bytes());
    }
    // Offline: no node to talk to, so no token either.
    if let Command::Recover {
        force_new_voter_set,
        data_dir,
    } = &command
    {
        return recover::run(config_file, *force_new_voter_set, data_dir);
    }
    if let Command::Restore { file, data_dir } = &command {
        return backup::restore(config_file, file, data_dir);
    }
    let token = token(client, config_file)?;
    let api = Api::new(client, token)?;
    match command {
        Command::Get { path, version } => {
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let file = api.get_json(&format!("{}{query}", path_url("/api/v1/file/", &path)?))?;
            if client.json {
                return print_json(&file);
            }
            let data = file.get("data").and_then(Value::as_str).unwrap_or_default();
            let bytes = BASE64
                .decode(data)
                .map_err(|e| Failure::new(1, format!("the node sent bad base64: {e}")))?;
            write_out(&bytes)
        }
        Command::Put {
            path,
            file,
            format,
            expected_version,
            description,
        } => {
            let data = read_input(&file)?;
            let format = format.or_else(|| format_of(&file.to_string_lossy()));
            let mut meta = serde_json::Map::new();
            if let Some(f) = format {
                meta.insert("format".into(), f.into());
            }
            if let Some(d) = description {
                meta.insert("description".into(), d.into());
            }
            let mut body = json!({ "data": BASE64.encode(&data), "meta": meta });
            if let Some(v) = expected_version {
                body["expected_version"] = v.into();
            }
            let applied = api.send("POST", &path_url("/api/v1/file/", &path)?, Some(&body))?;
            if client.json {
                return print_json(&applied);
            }
            println!(
                "saved {path} v{} (revision {})",
                applied["version"], applied["revision"]
            );
            Ok(())
        }
        Command::Rm { path } => {
            api.send("DELETE", &path_url("/api/v1/file/", &path)?, None)?;
            if client.json {
                return print_json(&json!({ "deleted": path }));
            }
            println!("deleted {path}");
            Ok(())
        }
        Command::Ls { path } => {
            let folder = api.get_json(&folder_url(path.as_deref().unwrap_or_default())?)?;
            if client.json {
                return print_json(&folder);
            }
            for child in folder["children"].as_array().into_iter().flatten() {
                let name = child["path"].as_str().unwrap_or_default();
                if child["type"] == "folder" {
                    println!("{name}/");
                } else {
                    println!(
                        "{name}  v{}  {}  {} bytes",
                        child["version"],
                        child["format"].as_str().unwrap_or("?"),
                        child["size"]
                    );
                }
            }
            Ok(())
        }
        Command::History { path } => {
            let history = api.get_json(&path_url("/api/v1/versions/", &path)?)?;
            if client.json {
                return print_json(&history);
            }
            println!(
                "{:>8} {:>9} {:>6}  {:<8} {:>8}  AUTHOR",
                "VERSION", "REVISION", "EPOCH", "STATUS", "BYTES"
            );
            for v in history["versions"].as_array().into_iter().flatten() {
                println!(
                    "{:>8} {:>9} {:>6}  {:<8} {:>8}  {}",
                    text(&v["version"]),
                    text(&v["revision"]),
                    text(&v["epoch"]),
                    text(&v["status"]),
                    text(&v["size"]),
                    text(&v["author"])
                );
            }
            Ok(())
        }
        Command::Status => {
            let status = api.get_json("/api/v1/cluster/status")?;
            if client.json {
                return print_json(&status);
            }
            print_status(&status);
            Ok(())
        }
        Command::Token(command) => token_command(&api, client.json, command),
        Command::Watch {
            prefix,
            from_revision,
        } => api.watch(&prefix, from_revision, client.json),
        Command::Diff { path, from, to } => inspect::diff(&api, &path, from, to),
        Command::Search {
            text,
            prefix,
            limit,
        } => inspect::search(&api, client.json, &text, prefix.as_deref(), limit),
        Command::Export { dir, prefix } => transfer::export(&api, &dir, &prefix),
        Command::Import {
            dir,
            prefix,
            dry_run,
        } => transfer::import(&api, &dir, &prefix, dry_run),
        Command::Backup { file } => backup::backup(&api, &file),
        Command::Recover { .. } | Command::Restore { .. } => Ok(()),
    }
}

/// The token to send (see the module docs), if any.
fn token(client: &Client, config_file: Option<PathBuf>) -> Result<Option<String>, Failure> {
    if let Some(token) = &client.token {
        return Ok(Some(token.trim().to_string()));
    }
    if let Some(file) = &client.token_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Failure::new(2, format!("--token-file {}: {e}", file.display())))?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        if token.is_empty() {
            return Err(Failure::new(
                2,
                format!("--token-file {} is empty", file.display()),
            ));
        }
        return Ok(Some(token));
    }
    // The local node's generated token, when this user may read it.
    let sources = crate::config::Sources::from_process(config_file);
    Ok(crate::config::load(&sources)
        .ok()
        .and_then(|loaded| crate::auth::admin_file::read(&loaded.config.storage.bw.path)))
}

fn token_command(api: &Api, as_json: bool, command: TokenCommand) -> Outcome {
    match command {
        TokenCommand::Create {
            name,
            scopes,
            admin,
            expires_in,
        } => {
            let body = json!({
                "name": name, "scopes": scopes, "admin": admin, "expires_in": expires_in,
            });
            let created = api.send("POST", "/api/v1/tokens", Some(&body))?;
            if as_json {
                return print_json(&created);
            }
            // The token alone on stdout, so `$(pika token create ...)` works.
            eprintln!("created token {name}; it is shown only now:");
            write_out(format!("{}\n", text(&created["token"])).as_bytes())
        }
        TokenCommand::Ls => {
            let list = api.get_json("/api/v1/tokens")?;
            if as_json {
                return print_json(&list);
            }
            println!("{:<24} {:<6} {:<14} SCOPES", "NAME", "ADMIN", "EXPIRES");
            for t in list["tokens"].as_array().into_iter().flatten() {
                let scopes: Vec<String> = t["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                let expires = match (&t["expires_at_ms"], t["expired"] == true) {
                    (_, true) => "expired".to_string(),
                    (Value::Null, _) => "never".to_string(),
                    (at, _) => text(at),
                };
                println!(
                    "{:<24} {:<6} {:<14} {}",
                    text(&t["name"]),
                    text(&t["admin"]),
                    expires,
                    scopes.join(" ")
                );
            }
            Ok(())
        }
        TokenCommand::Rm { name } => {
            api.send("DELETE", &format!("/api/v1/tokens/{name}"), None)?;
            if as_json {
                return print_json(&json!({ "revoked": name }));
            }
            println!("revoked {name}");
            Ok(())
        }
        TokenCommand::Generate => unreachable!("answered before any node is asked"),
    }
}

/// The format an extension names, as the server infers it.
fn format_of(name: &str) -> Option<String> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(
        match ext.as_str() {
            "json" => "json",
            "yaml" | "yml" => "yaml",
            "toml" => "toml",
            "txt" | "text" => "text",
            _ => return None,
        }
        .to_string(),
    )
}

fn read_input(file: &PathBuf) -> Result<Vec<u8>, Failure> {
    let mut data = Vec::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut data).map(drop)
    } else {
        std::fs::read(file).map(|d| data = d)
    };
    read.map_err(|e| Failure::new(1, format!("cannot read {}: {e}", file.display())))?;
    Ok(data)
}

fn write_out(bytes: &[u8]) -> Outcome {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(1, format!("cannot write to stdout: {e}")))
}

fn print_json(value: &Value) -> Outcome {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    write_out(format!("{text}\n").as_bytes())
}

/// A JSON value as a table cell: strings unquoted, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_status(s: &Value) {
    println!("node     {} ({})", text(&s["node_id"]), text(&s["role"]));
    println!(
        "leader   {} {}",
        text(&s["leader"]),
        text(&s["leader_http_address"])
    );
    println!("epoch    {}", text(&s["epoch"]));
    println!("revision {}", text(&s["revision"]));
    if s.get("has_quorum").is_some() {
        println!(
            "quorum   {} ({} voters online, {} needed; {} members online)",
            text(&s["has_quorum"]),
            text(&s["online_voters"]),
            text(&s["quorum_nodes_required"]),
            text(&s["online_nodes"])
        );
    }
    println!();
    println!(
        "{:<18} {:<22} {:<8} {:<10} {:>6} {:>9} {:>5}",
        "ID", "HTTP", "STATE", "ROLE", "EPOCH", "APPLIED", "LAG"
    );
    for n in s["nodes"].as_array().into_iter().flatten() {
        let me = if n["self"] == true { "*" } else { "" };
        println!(
            "{:<18} {:<22} {:<8} {:<10} {:>6} {:>9} {:>5}",
            format!("{}{me}", text(&n["id"])),
            text(&n["http_address"]),
            text(&n["state"]),
            text(&n["role"]),
            text(&n["epoch"]),
            text(&n["applied_revision"]),
            text(&n["lag"])
        );
    }
}
