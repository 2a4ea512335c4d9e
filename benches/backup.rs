//! Writes while a backup streams: `cargo bench --bench backup` (about 2
//! minutes). A 3-node loopback cluster holds 20 000 paths of 1 KiB (about
//! 40 MiB with history); 8 closed-loop clients write through the leader
//! in rounds of 5 s, alternating: no backup, backups taken back to back
//! from a follower, and from the leader. The table gives each variant's
//! median over 3 rounds of the write p50 and p99, and the p99 relative to
//! no backup; and how long one backup takes and its size.

mod load;

use std::time::{Duration, Instant};

use load::{Api, Load, PATHS, Workload, drive, fill, median, start_cluster, wait_for_leader};

const FILL: usize = 20_000;
const ROUNDS: usize = 3;

/// Takes backups from `url` back to back until `until`; their sizes and
/// durations.
async fn backups(http: reqwest::Client, url: String, until: Instant) -> Vec<(u64, Duration)> {
    let mut done = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let Ok(response) = http.get(format!("{url}/api/v1/backup")).send().await else {
            break;
        };
        assert_eq!(response.status(), 200, "a backup is refused");
        let bytes = response.bytes().await.map(|b| b.len() as u64).unwrap_or(0);
        done.push((bytes, started.elapsed()));
    }
    done
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let nodes = start_cluster(dir.path(), &[64, 65, 66])?;
        let http = reqwest::Client::builder()
            .default_headers(pika_campaign::admin_headers())
            .build()?;
        let leader = wait_for_leader(&http, &nodes).await?;
        let follower = (leader + 1) % nodes.len();
        let failed = fill(Api::Pika, &nodes[leader].url, "fill", (0..FILL).collect(), 16).await;
        anyhow::ensure!(failed == 0, "{failed} writes failed while filling");
        let urls = [nodes[leader].url.clone()];

        let variants = [
            ("no backup", None),
            ("backups from a follower", Some(nodes[follower].url.clone())),
            ("backups from the leader", Some(nodes[leader].url.clone())),
        ];
        let mut p50s = vec![Vec::new(); variants.len()];
        let mut p99s = vec![Vec::new(); variants.len()];
        let mut taken = vec![Vec::new(); variants.len()];
        for _ in 0..ROUNDS {
            for (v, (_, from)) in variants.iter().enumerate() {
                let load = Load {
                    api: Api::Pika,
                    urls: &urls,
                    workload: Workload::Write,
                    concurrency: 8,
                    warmup: Duration::from_millis(500),
                    run: Duration::from_secs(5),
                    token: None,
                };
                let until = Instant::now() + Duration::from_millis(5500);
                let backing_up = from
                    .clone()
                    .map(|url| tokio::spawn(backups(http.clone(), url, until)));
                let out = drive(&load).await;
                if let Some(task) = backing_up {
                    taken[v].extend(task.await?);
                }
                p50s[v].push(out.ms(0.5));
                p99s[v].push(out.ms(0.99));
            }
        }
        println!(
            "writes at c=8 via the leader (1 KiB values over {PATHS} paths) while backups of {FILL} paths stream; medians of {ROUNDS} alternated rounds of 5 s"
        );
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}",
            "variant", "p50 ms", "p99 ms", "p99 ×", "backups", "backup s", "MiB"
        );
        let base = median(p99s[0].clone());
        for (v, (name, _)) in variants.iter().enumerate() {
            let p99 = median(p99s[v].clone());
            let (count, secs, mib) = if taken[v].is_empty() {
                ("-".to_string(), "-".to_string(), "-".to_string())
            } else {
                (
                    taken[v].len().to_string(),
                    format!("{:.2}", median(taken[v].iter().map(|t| t.1.as_secs_f64()))),
                    format!("{:.1}", median(taken[v].iter().map(|t| t.0 as f64 / (1 << 20) as f64))),
                )
            };
            println!(
                "{:<26} {:>9.3} {:>9.3} {:>9.2} {:>9} {:>12} {:>10}",
                name,
                median(p50s[v].clone()),
                p99,
                p99 / base,
                count,
                secs,
                mib
            );
        }
        Ok(())
    })
}
