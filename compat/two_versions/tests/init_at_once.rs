//! Two major versions of static_call in one executable, initialized at
//! once from two threads (released together by a barrier), in eight fresh
//! processes: both succeed every time, and every site of every key of both
//! copies calls its key's target directly.

use std::sync::{Arc, Barrier};
use two_versions::common::{in_child, run_child};
use two_versions::{assert_both_initialized, init, COPIES};

#[test]
fn both_versions_initialize_at_once() {
    for _ in 0..8 {
        run_child("init_at_once_child", &[]);
    }
}

#[test]
#[ignore = "child process of both_versions_initialize_at_once"]
fn init_at_once_child() {
    if !in_child("init_at_once_child") {
        return;
    }
    let barrier = Arc::new(Barrier::new(COPIES));
    let threads: Vec<_> = (0..COPIES)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                init(c)
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(Result::is_ok), "both copies initialize: {results:?}");
    assert_both_initialized();
    println!("child init_at_once_child: done");
}
