//! `pika export` and `pika import`: configs as a tree of files, for
//! keeping them in git or moving them between clusters.
//!
//! A config at path `a/b/c.yaml` is the file `DIR/a/b/c.yaml`, byte for
//! byte. `DIR/.pika-export.json` holds what a file cannot: each config's
//! format, description, flags and the version it was exported at. It is
//! written with sorted keys, so exporting the same configs twice gives the
//! same bytes; the versions are the exporting node's (an import into
//! another cluster starts them again at 1).
//!
//! An export reads each config on its own, not at one revision: a config
//! written meanwhile may be in it at its old or new version. An import
//! saves each file that differs from the node with compare-and-set
//! against the version it compared with, so a change made in between is
//! never overwritten (exit code 4).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::inspect::encode;
use super::{Api, Failure, Outcome, format_of};

/// The metadata file at the top of an export.
pub const MANIFEST: &str = ".pika-export.json";

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// This file's own format version.
    pika_export: u32,
    configs: BTreeMap<String, ConfigMeta>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ConfigMeta {
    format: String,
    #[serde(default)]
    description: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    flags: u64,
    /// The version exported (informative: an import does not use it).
    #[serde(default)]
    version: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn io_failure(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::new(1, format!("{what} {}: {e}", path.display()))
}

/// A folder prefix's normal form ("" or "a/b"), and whether `path` is in it.
fn under(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_matches('/');
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Every live config path under `folder` the token may read, depth first.
fn walk_node(api: &Api, folder: &str, out: &mut Vec<String>) -> Result<(), Failure> {
    let listing = match api.get_json(&format!("/api/v1/folder/{}", encode(folder))) {
        Ok(listing) => listing,
        Err(f) if f.code == 3 => return Ok(()), // empty, or gone meanwhile
        Err(f) => return Err(f),
    };
    for child in listing["children"].as_array().into_iter().flatten() {
        let path = child["path"].as_str().unwrap_or_default().to_string();
        if child["type"] == "folder" {
            walk_node(api, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The file a config path is written to, refusing anything that would
/// leave `dir` (config paths never hold `..`, but the check is cheap).
fn file_of(dir: &Path, path: &str) -> Result<PathBuf, Failure> {
    let relative = Path::new(path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
        || path == MANIFEST
    {
        return Err(Failure::new(
            1,
            format!("config path {path:?} cannot be written as a file under the export directory"),
        ));
    }
    Ok(dir.join(relative))
}

/// `pika export DIR [--prefix P]`.
pub fn export(api: &Api, dir: &Path, prefix: &str) -> Outcome {
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(Failure::new(
            2,
            format!(
                "{} is not empty: export into a new or empty directory",
                dir.display()
            ),
        ));
    }
    let mut paths = Vec::new();
    walk_node(api, prefix.trim_matches('/'), &mut paths)?;
    paths.retain(|p| under(prefix, p));
    std::fs::create_dir_all(dir).map_err(|e| io_failure("cannot create", dir, e))?;
    let mut manifest = Manifest {
        pika_export: 1,
        configs: BTreeMap::new(),
    };
    for path in &paths {
        let file = match api.get_json(&format!("/api/v1/file/{}", encode(path))) {
            Ok(file) => file,
            Err(f) if f.code == 3 => {
                eprintln!("skipped {path}: deleted while exporting");
                continue;
            }
            Err(f) => return Err(f),
        };
        let data = BASE64
            .decode(file["data"].as_str().unwrap_or_default())
            .map_err(|e| Failure::new(1, format!("the node sent bad base64 for {path}: {e}")))?;
        let target = file_of(dir, path)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                io_failure(
                    &format!(
                        "cannot create the folder for {path} (a config of that name exists?):"
                    ),
                    parent,
                    e,
                )
            })?;
        }
        std::fs::write(&target, &data).map_err(|e| io_failure("cannot write", &target, e))?;
        let meta = &file["meta"];
        manifest.configs.insert(
            path.clone(),
            ConfigMeta {
                format: meta["format"].as_str().unwrap_or("text").to_string(),
                description: meta["description"].as_str().unwrap_or_default().to_string(),
                flags: meta["flags"].as_u64().unwrap_or(0),
                version: file["version"].as_u64().unwrap_or(0),
            },
        );
    }
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Failure::new(1, format!("encoding {MANIFEST}: {e}")))?;
    let manifest_file = dir.join(MANIFEST);
    std::fs::write(&manifest_file, format!("{text}\n"))
        .map_err(|e| io_failure("cannot write", &manifest_file, e))?;
    println!(
        "exported {} configs to {}",
        manifest.configs.len(),
        dir.display()
    );
    Ok(())
}

/// Every file under `dir` as (config path, file), in path order.
fn walk_dir(dir: &Path, at: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), Failure> {
    let mut entries: Vec<_> = std::fs::read_dir(at)
        .map_err(|e| io_failure("cannot read", at, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_failure("cannot read", at, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| io_failure("cannot read", &file, e))?;
        if kind.is_dir() {
            walk_dir(dir, &file, out)?;
            continue;
        }
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        let Some(path) = relative.to_str() else {
            return Err(Failure::new(
                2,
                format!("{} is not a UTF-8 name", file.display()),
            ));
        };
        let path = path.replace(std::path::MAIN_SEPARATOR, "/");
        if path != MANIFEST {
            out.push((path, file));
        }
    }
    Ok(())
}

/// `pika import DIR [--prefix P] [--dry-run]`.
pub fn import(api: &Api, dir: &Path, prefix: &str, dry_run: bool) -> Outcome {
    if !dir.is_dir() {
        return Err(Failure::new(
            2,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let manifest_file = dir.join(MANIFEST);
    let manifest: Manifest = match std::fs::read(&manifest_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                2,
                format!("{}: not an export manifest: {e}", manifest_file.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(io_failure("cannot read", &manifest_file, e)),
    };
    let mut files = Vec::new();
    walk_dir(dir, dir, &mut files)?;
    files.retain(|(path, _)| under(prefix, path));
    let (mut created, mut updated, mut unchanged) = (0, 0, 0);
    for (path, file) in files {
        let data = std::fs::read(&file).map_err(|e| io_failure("cannot read", &file, e))?;
        let meta = manifest.configs.get(&path).cloned().unwrap_or(ConfigMeta {
            format: format_of(&path).unwrap_or_else(|| "text".into()),
            description: String::new(),
            flags: 0,
            version: 0,
        });
        let current = match api.get_json(&format!("/api/v1/file/{}", encode(&path))) {
            Ok(current) => Some(current),
            Err(f) if f.code == 3 => None,
            Err(f) => return Err(f),
        };
        let version = current.as_ref().and_then(|c| c["version"].as_u64());
        if let Some(current) = &current {
            let same_data = BASE64
                .decode(current["data"].as_str().unwrap_or_default())
                .is_ok_and(|d| d == data);
            let m = &current["meta"];
            if same_data
                && m["format"].as_str() == Some(meta.format.as_str())
                && m["description"].as_str().unwrap_or_default() == meta.description
                && m["flags"].as_u64().unwrap_or(0) == meta.flags
            {
                unchanged += 1;
                continue;
            }
        }
        if dry_run {
            match version {
                Some(v) => println!("would update {path} (now v{v})"),
                None => println!("would create {path}"),
            }
        } else {
            let body = json!({
                "data": BASE64.encode(&data),
                "meta": {"format": meta.format, "description": meta.description, "flags": meta.flags},
                "expected_version": version.unwrap_or(0),
            });
            let applied = api
                .send(
                    "POST",
                    &format!("/api/v1/file/{}", encode(&path)),
                    Some(&body),
                )
                .map_err(|f| Failure::new(f.code, format!("{path}: {}", f.message)))?;
            let now = applied["version"].as_u64().unwrap_or(0);
            match version {
                Some(v) => println!("updated {path} v{v} -> v{now}"),
                None => println!("created {path} v{now}"),
            }
        }
        match version {
            Some(_) => updated += 1,
            None => created += 1,
        }
    }
    println!(
        "{created} created, {updated} updated, {unchanged} unchanged{}",
        if dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    );
    Ok(())
}
