//! `pika recover --force-new-voter-set --data-dir DIR`: offline recovery
//! from losing a quorum for good (docs/operations.md, "Recovering from a lost
//! quorum"; [`pika_replication::recover`]).

use std::path::{Path, PathBuf};

use pika_replication::recover::{self, RecoverError};

use super::{Failure, Outcome};
use crate::config::{self, Sources};

pub fn run(config_file: Option<PathBuf>, force_new_voter_set: bool, data_dir: &Path) -> Outcome {
    if !force_new_voter_set {
        return Err(Failure::new(
            2,
            "recover: say what to do: --force-new-voter-set (the only recovery there is)",
        ));
    }
    let (voters_path, history) = offline_settings(config_file)?;
    let done =
        recover::force_new_voter_set(data_dir, &voters_path, history).map_err(|e| match e {
            RecoverError::NotADataDirectory(_) => Failure::new(2, e.to_string()),
            e => Failure::new(1, e.to_string()),
        })?;
    let previous = done.previous.map_or_else(
        || "none".to_string(),
        |v| v.into_iter().collect::<Vec<_>>().join(", "),
    );
    println!(
        "node {} is now the only voter (epoch {}, revision {}); the voter set was: {previous}",
        done.node_id, done.at.epoch, done.at.revision
    );
    if done.committed_suffix > 0 {
        println!(
            "{} entries this node had received but not seen committed are now committed",
            done.committed_suffix
        );
    }
    println!(
        "start the node; give the other nodes empty data directories so they join as learners"
    );
    Ok(())
}

/// What the offline commands need of the config the node runs with (if
/// any): the voter-set record's path (`cluster.prefix`) and the store's
/// history (`storage.history`).
pub(super) fn offline_settings(config_file: Option<PathBuf>) -> Result<(String, u64), Failure> {
    let loaded = config::load(&Sources::from_process(config_file))
        .map_err(|e| Failure::new(2, format!("invalid configuration:\n{e}")))?;
    let config = loaded.config;
    Ok((config.cluster.voters_path(), config.storage.history))
}
