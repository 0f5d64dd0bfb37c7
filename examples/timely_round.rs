//! Timely alone, the baseline for `benches/two_processes.sh`: the time of a
//! round of the smallest synchronous loop, on threads or on processes.
//!
//! Every worker holds one record. Each round, every worker sends the
//! record it holds to the next worker over timely's exchange and
//! busy-waits `WORK_US` microseconds on the one that arrives (a stand-in
//! for a gradient step). That is one trip over
//! the network a round and no progress wait, the shape of tidemill's
//! `allreduce` step when every worker folds, without any of its work.
//!
//! The workers run on [`Cluster::execute`], as tidemill's jobs do: the same
//! handshake, timely's own network threads on the sockets, the same worker
//! configuration (`TIDEMILL_IDLE_SPIN_US`).
//!
//! ```sh
//! cargo build --release --example timely_round
//! target/release/examples/timely_round 10000 110 2                        # 2 threads
//! target/release/examples/timely_round 10000 110 1 2 1 hosts &            # 2 processes
//! target/release/examples/timely_round 10000 110 1 2 0 hosts
//! ```
//!
//! Arguments: rounds, microseconds of work a round, worker threads a
//! process, and for several processes: processes, this process's index,
//! the hostfile (`host:port` a line). Worker 0 prints `µs a round: X`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback, ToStream};

use tidemill::cluster::{Cluster, JobDescription};

const USAGE: &str = "usage: timely_round ROUNDS WORK_US WORKERS [PROCESSES PROCESS HOSTFILE]";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 {
        match args.get(i).map(|a| a.parse()) {
            Some(Ok(n)) => n,
            _ => usage(),
        }
    };
    let (rounds, work, workers) = (number(0), Duration::from_micros(number(1)), number(2));
    let cluster = match args.len() {
        3 => Cluster {
            workers: workers as usize,
            ..Cluster::default()
        },
        6 => Cluster {
            workers: workers as usize,
            processes: number(3) as usize,
            process: number(4) as usize,
            hostfile: Some(PathBuf::from(&args[5])),
            ..Cluster::default()
        },
        _ => usage(),
    };
    let guards = cluster.execute(
        || Ok(JobDescription::default()),
        move |worker| {
            let index = worker.index() as u64;
            let peers = worker.peers() as u64;
            worker.dataflow::<u64, _, _>(move |scope| {
                let (handle, cycle) = scope.feedback(1);
                // (the worker it started on, rounds made): each round it
                // moves to the next worker, so every worker holds one record
                // a round.
                vec![(index, 0u64)]
                    .to_stream(scope)
                    .concat(cycle)
                    .exchange(move |&(origin, round)| (origin + round + 1) % peers)
                    .map_in_place(move |record| {
                        let start = Instant::now();
                        while start.elapsed() < work {
                            std::hint::spin_loop();
                        }
                        record.1 += 1;
                    })
                    .filter(move |&(_, round)| round < rounds)
                    .connect_loop(handle);
            });
            let start = Instant::now();
            while worker.step_or_park(None) {}
            if index == 0 {
                let per_round = start.elapsed().as_secs_f64() / rounds.max(1) as f64;
                println!("µs a round: {:.1}", per_round * 1e6);
            }
        },
    );
    if let Err(e) = guards.and_then(|g| cluster.join(g)) {
        eprintln!("timely_round: {e}");
        std::process::exit(1);
    }
}
