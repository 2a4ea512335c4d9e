//! Where a leader finds the request ids of a new epoch's retries.
//!
//! The committer answers a retried id from three places: this epoch's
//! memory, the ids a new epoch reads from its log once
//! (`ReplicaCore::requests_in_flight`), and the store's record, which holds
//! applied entries only. Every id in the log must be in one of the last
//! two whatever the applied state lags behind the commit index (applies
//! gather for up to 20 ms); otherwise a retry of an entry committed but not
//! applied yet is applied a second time.

mod common;

use pika_replication::log::MemLog;
use pika_replication::replica::core::{CoreConfig, ReplicaCore};
use pika_replication::{ConfigPath, Format, Meta, Op, Store};

fn config() -> CoreConfig {
    CoreConfig::quick(1)
}

fn put(path: &str, id: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    Op::put(
        ConfigPath::new(path).expect("valid test path"),
        meta,
        id.as_bytes().to_vec(),
        None,
    )
    .expect("valid text")
    .with_request_id(Some(id.to_string()))
}

/// Applies what is committed, as the apply thread would.
fn apply_all(core: &mut ReplicaCore<MemLog>, store: &Store) {
    while let Some(job) = core.begin_apply() {
        let result = job.write(store);
        core.finish_apply(job.last, result);
    }
}

#[test]
fn every_logged_request_id_is_in_the_store_record_or_in_flight_whatever_the_apply_lags() {
    let (store, mut core) = common::core::open("n0", config());
    let (epoch, now) = common::core::lead_alone(&mut core);

    let mut ids: Vec<String> = Vec::new();
    for round in 0..6 {
        let id = format!("retry-me-{round}");
        let (results, _) = core
            .propose(epoch, &[put(&format!("cfg/{}", round % 2), &id)], 0, now)
            .expect("the leader takes the write");
        assert!(results[0].is_ok(), "round {round}: {:?}", results[0]);
        ids.push(id);
        common::core::flush_all(&mut core, now);
        let _ = core.drain();
        // The state applies every other round only: committed entries wait
        // for it meanwhile, as they do while applies gather.
        if round % 2 == 1 {
            apply_all(&mut core, &store);
        }
        assert!(
            core.commit_index() > store.revision() || round % 2 == 1,
            "round {round}: the commit index {} is above the state {}",
            core.commit_index(),
            store.revision()
        );
        let in_flight: Vec<String> = core
            .requests_in_flight()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let recorded = store.applied_requests(&refs).expect("read the record");
        for (id, recorded) in ids.iter().zip(recorded) {
            assert!(
                recorded.is_some() || in_flight.contains(id),
                "round {round}: {id} is neither in the store's record nor in flight \
                 (commit {}, applied {}): a retry of it would be applied again",
                core.commit_index(),
                store.revision()
            );
        }
    }
}
