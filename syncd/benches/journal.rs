//! The daemon's per-tick journal work against the size of its history: a journal holding
//! 0, 100,000 and 1,000,000 rows of files long gone (terminal), plus a small queue. Each
//! operation the loop runs every tick is timed over several interleaved rounds; the table
//! gives the median and the spread (min–max), the JSON line the same for machines.
//!
//! "full count" is the summary as it used to be computed (a GROUP BY over every row), run
//! beside the one the daemon now uses (totals kept by triggers), for contrast.
//!
//! Knobs: `BENCH_ROWS` (comma-separated, default `0,100000,1000000`), `BENCH_ROUNDS` (7),
//! `BENCH_JSON` (a path: the result as a file, for `docs/results/journal.json`).

use std::time::{Duration, Instant};

use edgemask_syncd::journal::{Journal, NewFile};

fn build(path: &std::path::Path, terminal: usize) -> Journal {
    // An empty journal with the schema, then old rows straight into SQLite (the API would
    // take minutes for a million), then opened again as the daemon opens it.
    drop(Journal::open(path).unwrap());
    {
        let mut c = rusqlite::Connection::open(path).unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO files (path, size, mtime_ns, clip, is_manifest, key, state, ready_at, updated_at, uploaded_seq)
                     VALUES (?1, 1000, 1, ?2, 0, ?3, 'removed', ?4, ?4, ?5)",
                )
                .unwrap();
            let now = edgemask_syncd::journal::now_secs();
            for i in 0..terminal {
                let p = format!("/out/cam{}/clip-{i:08}.mp4", i % 8);
                st.execute(rusqlite::params![
                    p,
                    format!("/out/cam/clip-{i}"),
                    format!("k{p}"),
                    now,
                    i as i64
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let j = Journal::open(path).unwrap();
    for i in 0..50 {
        j.upsert_ready(&NewFile {
            path: format!("/out/q/f{i}.mp4").into(),
            size: 10,
            mtime_ns: 1,
            clip: None,
            is_manifest: false,
            key: format!("q/f{i}.mp4"),
            ident: None,
        })
        .unwrap();
    }
    j
}

fn old_summary(path: &std::path::Path) -> Duration {
    let c = rusqlite::Connection::open(path).unwrap();
    let t = Instant::now();
    let mut st = c
        .prepare("SELECT state, COUNT(*), SUM(size), MIN(ready_at) FROM files GROUP BY state")
        .unwrap();
    let n = st.query_map([], |r| r.get::<_, i64>(1)).unwrap().count();
    assert!(n > 0);
    t.elapsed()
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let rows: Vec<usize> = std::env::var("BENCH_ROWS")
        .unwrap_or_else(|_| "0,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_ROWS: numbers"))
        .collect();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let journals: Vec<(usize, std::path::PathBuf, Journal)> = rows
        .iter()
        .map(|&n| {
            let p = dir.path().join(format!("j{n}.sqlite"));
            let t = Instant::now();
            let j = build(&p, n);
            eprintln!(
                "built a journal of {n} terminal rows in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            (n, p, j)
        })
        .collect();
    let ops = [
        "summary",
        "open_work",
        "prune (nothing due)",
        "upsert + mark",
        "retention candidates",
        "full count (old summary)",
    ];
    // samples[op][journal] in microseconds
    let mut samples = vec![vec![Vec::new(); journals.len()]; ops.len()];
    for round in 0..rounds {
        // Interleaved: every journal in every round, so drift hits all alike.
        for (ji, (_, path, j)) in journals.iter().enumerate() {
            let t = Instant::now();
            std::hint::black_box(j.summary().unwrap());
            samples[0][ji].push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            std::hint::black_box(j.open_work(20).unwrap());
            samples[1][ji].push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            std::hint::black_box(j.prune(30 * 86_400, 10_000).unwrap());
            samples[2][ji].push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let r = j
                .upsert_ready(&NewFile {
                    path: format!("/out/new/r{round}.mp4").into(),
                    size: 5,
                    mtime_ns: 1,
                    clip: None,
                    is_manifest: false,
                    key: format!("new/r{round}.mp4"),
                    ident: None,
                })
                .unwrap()
                .unwrap();
            j.mark_uploading(&r).unwrap();
            samples[3][ji].push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            std::hint::black_box(j.retained_bytes().unwrap());
            std::hint::black_box(j.retained_after(i64::MIN, 256).unwrap());
            std::hint::black_box(j.retained_older(0, (i64::MIN, i64::MIN), 256).unwrap());
            samples[4][ji].push(t.elapsed().as_secs_f64() * 1e6);
            samples[5][ji].push(old_summary(path).as_secs_f64() * 1e6);
        }
    }
    println!("journal per-tick work, µs: median (min–max) of {rounds} rounds");
    print!("{:<26}", "operation \\ terminal rows");
    for (n, _, _) in &journals {
        print!("{:>26}", n);
    }
    println!("{:>12}", "last÷first");
    let mut json = Vec::new();
    for (oi, op) in ops.iter().enumerate() {
        print!("{op:<26}");
        let mut meds = Vec::new();
        for (ji, (n, _, _)) in journals.iter().enumerate() {
            let (med, lo, hi) = stats(&mut samples[oi][ji]);
            print!("{:>26}", format!("{med:.0} ({lo:.0}–{hi:.0})"));
            meds.push(med);
            json.push(format!(
                "{{\"op\":\"{op}\",\"rows\":{n},\"median_us\":{med:.1},\"min_us\":{lo:.1},\"max_us\":{hi:.1}}}"
            ));
        }
        println!("{:>12.2}", meds[meds.len() - 1] / meds[0].max(1.0));
    }
    let line = format!(
        "{{\"bench\":\"journal\",\"rounds\":{rounds},\"results\":[{}]}}",
        json.join(",")
    );
    println!("{line}");
    // BENCH_JSON: the same as a result file, with when and where (docs/results/journal.json
    // is the recorded one the syncd README's table is filled from, by scripts/figures.py).
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let date = std::process::Command::new("date")
            .args(["-u", "+%F"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let profile = if cfg!(debug_assertions) { "dev" } else { "release" };
        let doc = format!(
            "{{\"date\":\"{date}\",\"machine\":\"{cores} cores\",\"profile\":\"{profile}\",{}",
            &line[1..]
        );
        std::fs::write(&path, doc).unwrap();
        println!("result: {path}");
    }
}
