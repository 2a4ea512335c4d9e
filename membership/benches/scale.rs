//! Membership at sizes no single machine hosts as processes, simulated:
//! `cargo bench -p pika-membership --bench scale` (a few minutes). For each
//! size: how long formation, a join, a crash and a restart take to reach
//! every stable member, and the bytes and datagrams each member sends per
//! second while idle, with 1 % loss and 1 % of the members churning.
//! Heartbeat 1 s, timeout 5 s; simulated seconds.

#[path = "../tests/scale/mod.rs"]
mod scale;

use scale::{Report, Scenario};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![25, 100, 250, 500, 1000]
    } else {
        sizes
    };
    println!("{}", Report::header());
    for members in sizes {
        println!("{}", scale::run(Scenario::new(members, 1)).row());
    }
}
