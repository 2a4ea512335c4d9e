//! Membership at scale, simulated (see `scale/mod.rs`): a reduced size
//! here, 1 000 members in `cargo bench -p pika-membership --bench scale`.
//! Every seed must form, see a join, a crash and a restart reach every
//! stable member within bounds set by the timings, and never report a live
//! stable member down, with 1 % loss and members churning.

mod scale;

use std::time::Duration;

use scale::{Report, Scenario};

#[test]
fn a_hundred_members_converge_on_joins_crashes_and_restarts_under_loss_and_churn() {
    eprintln!("{}", Report::header());
    for seed in [1, 2, 3] {
        let scenario = Scenario::new(100, seed);
        let (interval, timeout) = (scenario.heartbeat_interval, scenario.heartbeat_timeout);
        let report = scale::run(scenario);
        eprintln!("{}", report.row());
        let within = |what: &str, took: Option<Duration>, bound: Duration| {
            let took =
                took.unwrap_or_else(|| panic!("seed {seed}: {what} never reached every member"));
            assert!(
                took <= bound,
                "seed {seed}: {what} took {took:?}, bound {bound:?}"
            );
        };
        within("formation", report.formed, interval * 10);
        within("a join", report.join, interval * 5);
        // Down once unheard of for the timeout, plus the rounds that carry
        // the news.
        within("a crash", report.crash, timeout + interval * 3);
        within("a restart", report.restart, interval * 5);
        assert_eq!(
            report.false_downs, 0,
            "seed {seed}: live members reported down"
        );
        assert!(report.churn_cycles > 0, "seed {seed}: no churn happened");
        assert!(report.bytes_per_member_sec > 0.0);
    }
}
