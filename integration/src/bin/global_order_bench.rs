//! One queue over several ACD nodes (issue 15): order inversions per 10,000 callers under
//! randomized arrival and fabric delay, and agent free → offer latency with the queue on one
//! node against spread over two. A pure simulation in virtual time (`acd::global_sim`: real
//! queue engines, a simulated fabric and gateway arbiter), so its figures depend on the seed
//! and the parameters only, not on the machine or the build profile.
//!
//! `cargo run -p integration --bin global_order_bench [callers] [seeds]` (default 10000, 5).

use std::time::Duration;

use acd::global_sim::{run, SimParams};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let callers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let lan = (Duration::from_millis(1), Duration::from_millis(60));
    let wan = (Duration::from_millis(40), Duration::from_millis(150));
    println!("global_order_bench: {callers} callers per run, seeds 1..={seeds}");
    println!(
        "{:<44} {:>8} {:>10} {:>9} {:>10} {:>10}",
        "scenario", "agents", "inversions", "per 10k", "refused", "connected"
    );
    let scenarios: Vec<(&str, SimParams)> = vec![
        (
            "2 nodes, LAN fabric 1-60 ms, load 0.8",
            SimParams {
                fabric_delay: lan,
                mean_gap: Duration::from_millis(1500),
                ..SimParams::default()
            },
        ),
        (
            "2 nodes, LAN fabric, load 0.4",
            SimParams {
                fabric_delay: lan,
                mean_gap: Duration::from_millis(3000),
                ..SimParams::default()
            },
        ),
        (
            "2 nodes, WAN fabric 40-150 ms, load 0.8",
            SimParams {
                fabric_delay: wan,
                mean_gap: Duration::from_millis(1500),
                ..SimParams::default()
            },
        ),
        (
            "3 nodes, 2 agents, 3 priorities, WAN",
            SimParams {
                nodes: 3,
                agents: 2,
                priorities: 3,
                fabric_delay: wan,
                mean_gap: Duration::from_millis(800),
                ..SimParams::default()
            },
        ),
        (
            "2 nodes, slow fabric 100-400 ms, settle 450 ms",
            SimParams {
                fabric_delay: (Duration::from_millis(100), Duration::from_millis(400)),
                mean_gap: Duration::from_millis(1000),
                talk: (Duration::from_millis(50), Duration::from_millis(300)),
                settle: Duration::from_millis(450),
                ..SimParams::default()
            },
        ),
        (
            "  same, NO settle time (control)",
            SimParams {
                fabric_delay: (Duration::from_millis(100), Duration::from_millis(400)),
                mean_gap: Duration::from_millis(1000),
                talk: (Duration::from_millis(50), Duration::from_millis(300)),
                settle: Duration::ZERO,
                ..SimParams::default()
            },
        ),
    ];
    for (name, base) in &scenarios {
        let (mut inv, mut refused, mut connected) = (0u64, 0u64, 0usize);
        for seed in 1..=seeds {
            let r = run(&SimParams {
                callers,
                seed,
                ..base.clone()
            });
            inv += r.inversions;
            refused += r.refused;
            connected += r.connected;
        }
        let total = callers as f64 * seeds as f64;
        println!(
            "{:<44} {:>8} {:>10} {:>9.2} {:>10} {:>10}",
            name,
            base.agents,
            inv,
            inv as f64 * 10_000.0 / total,
            refused,
            connected
        );
    }

    // Agent free → the next offer at the gateway, callers waiting: one node vs two.
    println!();
    println!("agent free -> offer (callers waiting), virtual time:");
    for (fabric, delay) in [("LAN 1-60 ms", lan), ("WAN 40-150 ms", wan)] {
        let mut p50 = Vec::new();
        for nodes in [1usize, 2] {
            let mut all = Vec::new();
            for seed in 1..=seeds {
                let r = run(&SimParams {
                    nodes,
                    callers,
                    seed,
                    fabric_delay: delay,
                    mean_gap: Duration::from_millis(1300),
                    ..SimParams::default()
                });
                all.extend(r.free_to_offer);
            }
            let (a, b, c) = (pct(&mut all, 0.5), pct(&mut all, 0.99), pct(&mut all, 1.0));
            println!(
                "  {fabric:<14} queue on {nodes} node(s): n={:<6} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
                all.len(),
                ms(a),
                ms(b),
                ms(c)
            );
            p50.push(a);
        }
        let hop = (delay.0 + delay.1) / 2;
        let bound = p50[0].mul_f64(1.2) + hop;
        println!(
            "  {fabric:<14} two/one p50 = {:.2}x; target two <= 1.2 x one + one hop ({:.1} ms): {}",
            ms(p50[1]) / ms(p50[0]).max(1e-9),
            ms(bound),
            if p50[1] <= bound { "met" } else { "NOT met" }
        );
    }
}
