//! Unit tests of the batch planner, on a fake clock: `t0` plus offsets, never a real wait.

use super::*;
use crate::TimeoutAction;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn batching(max: usize) -> PlannerConfig {
    PlannerConfig { batching: true, max_batch_size: max, ..PlannerConfig::default() }
}

fn entry(id: EntryId, rows: usize, arrival: Instant) -> Entry {
    Entry { id, rows, group: 0, priority: 0, arrival, deadlines: Deadlines::default() }
}

/// A profile of 1 ms per call plus 1 ms per row.
fn linear_profile() -> LatencyProfile {
    let mut profile = LatencyProfile::default();
    for rows in [1, 2, 4, 8] {
        profile.record(rows, ms(1 + rows as u64));
    }
    profile
}

fn admit_all(planner: &mut BatchPlanner, entries: Vec<Entry>, now: Instant) {
    for e in entries {
        planner.admit(e, now).expect("admitted");
    }
}

fn dispatch(planner: &mut BatchPlanner, now: Instant) -> Batch {
    match planner.next_batch(now) {
        Decision::Dispatch(batch) => batch,
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// Plays one round of a closed loop of `clients` requests arriving `gap` apart from `start`,
/// run together, so the planner has seen that many outstanding at once and that gap. Returns
/// when the next request arrives, one `gap` after the last. Ids from 1000 on.
fn busy_history(planner: &mut BatchPlanner, start: Instant, clients: u64, gap: Duration) -> Instant {
    let last = start + gap * (clients as u32 - 1);
    for i in 0..clients {
        let at = start + gap * i as u32;
        planner.admit(entry(1000 + i, 1, at), at).expect("admitted");
    }
    let batch = dispatch(planner, last);
    assert_eq!(batch.entries.len(), clients as usize, "the whole round runs at once");
    planner.complete(batch.id, None);
    last + gap
}

#[test]
fn batch_never_exceeds_max_batch_size() {
    let t0 = Instant::now();
    let mut planner = BatchPlanner::new(batching(4), LatencyProfile::default());
    let rows = [2, 1, 2, 3, 1];
    admit_all(&mut planner, rows.iter().enumerate().map(|(i, &r)| entry(i as u64, r, t0)).collect(), t0);
    let first = dispatch(&mut planner, t0);
    assert_eq!((first.entries.clone(), first.rows), (vec![0, 1], 3), "entry 2 would make 5 rows");
    assert_eq!(planner.next_batch(t0), Decision::Idle, "the only instance is busy");
    planner.complete(first.id, None);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![2]);
    planner.complete(1, None);
    let last = dispatch(&mut planner, t0);
    assert_eq!((last.entries, last.rows), (vec![3, 4], 4));
}

#[test]
fn higher_priority_first_and_fifo_within_a_level() {
    let t0 = Instant::now();
    let config = PlannerConfig { priority_levels: 2, default_priority_level: 2, ..PlannerConfig::default() };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    for (id, level) in [(0, 2), (1, 1), (2, 2), (3, 1)] {
        planner.admit(Entry { priority: level, ..entry(id, 1, t0 + ms(id)) }, t0 + ms(id)).expect("admitted");
    }
    let mut order = Vec::new();
    while let Decision::Dispatch(batch) = planner.next_batch(t0 + ms(5)) {
        order.extend(batch.entries);
        planner.complete(batch.id, None);
    }
    assert_eq!(order, vec![1, 3, 0, 2]);
}

#[test]
fn batches_fill_across_levels_but_start_with_the_head() {
    let t0 = Instant::now();
    let config = PlannerConfig { priority_levels: 2, default_priority_level: 2, ..batching(8) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    admit_all(
        &mut planner,
        vec![Entry { priority: 2, ..entry(0, 1, t0) }, Entry { priority: 1, ..entry(1, 1, t0) }],
        t0,
    );
    assert_eq!(dispatch(&mut planner, t0).entries, vec![1, 0]);
}

#[test]
fn waits_for_max_queue_delay_then_sends_what_it_has() {
    let config = PlannerConfig { max_queue_delay: ms(2), ..batching(8) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    // Four clients, a request every millisecond: company is expected until 2 ms.
    let t0 = busy_history(&mut planner, Instant::now(), 4, ms(1));
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    assert_eq!(planner.next_batch(t0), Decision::WaitUntil(t0 + ms(2)));
    admit_all(&mut planner, vec![entry(1, 3, t0 + ms(1))], t0 + ms(1));
    assert_eq!(
        planner.next_batch(t0 + ms(1)),
        Decision::WaitUntil(t0 + ms(2)),
        "the oldest request sets the time"
    );
    let batch = dispatch(&mut planner, t0 + ms(2));
    assert_eq!((batch.entries, batch.rows), (vec![0, 1], 4));
}

#[test]
fn full_batch_goes_at_once() {
    let t0 = Instant::now();
    let config = PlannerConfig { max_queue_delay: ms(100), ..batching(4) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 3, t0)], t0);
    assert!(matches!(planner.next_batch(t0), Decision::WaitUntil(_)));
    admit_all(&mut planner, vec![entry(1, 1, t0)], t0);
    assert_eq!(dispatch(&mut planner, t0).rows, 4);
    // A batch that cannot grow (the next request does not fit) goes at once too.
    planner.complete(0, None);
    admit_all(&mut planner, vec![entry(2, 3, t0), entry(3, 2, t0)], t0);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![2]);
}

#[test]
fn largest_preferred_size_goes_at_once() {
    let t0 = Instant::now();
    let config = PlannerConfig { preferred_batch_sizes: vec![2, 4], max_queue_delay: ms(100), ..batching(8) };
    let mut planner = BatchPlanner::new(config.clone(), LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    assert_eq!(planner.next_batch(t0), Decision::WaitUntil(t0 + ms(100)));
    admit_all(&mut planner, vec![entry(1, 1, t0), entry(2, 1, t0)], t0);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![0, 1], "2 is preferred, 3 is not");
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    admit_all(&mut planner, (0..5).map(|id| entry(id, 1, t0)).collect(), t0);
    assert_eq!(dispatch(&mut planner, t0).rows, 4, "the largest preferred size formed");
}

#[test]
fn without_batching_each_request_runs_alone_at_once() {
    let t0 = Instant::now();
    let config = PlannerConfig { instances: 3, max_queue_delay: ms(100), ..PlannerConfig::default() };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    admit_all(&mut planner, (0..4).map(|id| entry(id, 1, t0)).collect(), t0);
    for id in 0..3 {
        assert_eq!(dispatch(&mut planner, t0).entries, vec![id], "one per instance, no delay");
    }
    assert_eq!(planner.next_batch(t0), Decision::Idle);
    planner.complete(1, None);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![3]);
}

#[test]
fn requests_of_different_shapes_do_not_share_a_batch() {
    let t0 = Instant::now();
    let mut planner =
        BatchPlanner::new(PlannerConfig { instances: 2, ..batching(8) }, LatencyProfile::default());
    admit_all(
        &mut planner,
        vec![entry(0, 1, t0), Entry { group: 7, ..entry(1, 1, t0) }, entry(2, 1, t0)],
        t0,
    );
    assert_eq!(dispatch(&mut planner, t0).entries, vec![0, 2]);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![1]);
}

#[test]
fn reject_expires_a_request_instead_of_running_it_late() {
    let t0 = Instant::now();
    let config = PlannerConfig { default_timeout: Some(ms(5)), ..batching(8) };
    let mut planner = BatchPlanner::new(config.clone(), LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    let busy = dispatch(&mut planner, t0);
    let late = Entry { deadlines: config.deadlines(t0, None, None), ..entry(1, 1, t0) };
    admit_all(&mut planner, vec![late], t0);
    assert_eq!(planner.next_batch(t0 + ms(1)), Decision::WaitUntil(t0 + ms(5)), "wakes to expire it");
    assert_eq!(planner.next_batch(t0 + ms(5)), Decision::Idle);
    assert_eq!(planner.take_expired(), vec![1]);
    planner.complete(busy.id, None);
    assert_eq!(planner.next_batch(t0 + ms(6)), Decision::Idle, "never dispatched after its deadline");
    assert!(planner.take_expired().is_empty(), "reported once");
}

#[test]
fn reject_expires_a_request_once_it_can_no_longer_finish_in_time() {
    // 1 ms + 1 ms per row: one row typically runs 2 ms, so a request due at 10 ms must start by 8.
    let t0 = Instant::now();
    let config = PlannerConfig { default_timeout: Some(ms(10)), ..batching(8) };
    let mut planner = BatchPlanner::new(config.clone(), linear_profile());
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    let busy = dispatch(&mut planner, t0);
    let waiting = Entry { deadlines: config.deadlines(t0, None, None), ..entry(1, 1, t0) };
    admit_all(&mut planner, vec![waiting], t0);
    assert_eq!(planner.next_batch(t0 + ms(1)), Decision::WaitUntil(t0 + ms(8)), "wakes to expire it");
    assert_eq!(planner.next_batch(t0 + ms(8)), Decision::Idle);
    assert_eq!(planner.take_expired(), vec![1], "expired at 8 ms, not run to finish after 10 ms");
    planner.complete(busy.id, None);
}

#[test]
fn delay_lets_a_timed_out_request_yield_its_place() {
    let t0 = Instant::now();
    let config = PlannerConfig {
        timeout_action: TimeoutAction::Delay,
        default_timeout: Some(ms(2)),
        allow_timeout_override: true,
        ..PlannerConfig::default()
    };
    let mut planner = BatchPlanner::new(config.clone(), LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    let busy = dispatch(&mut planner, t0);
    let first = Entry { deadlines: config.deadlines(t0, None, None), ..entry(1, 1, t0) };
    let second =
        Entry { deadlines: config.deadlines(t0 + ms(1), Some(ms(100)), None), ..entry(2, 1, t0 + ms(1)) };
    admit_all(&mut planner, vec![first, second], t0 + ms(1));
    // Entry 2 asked for 100 ms but may only shorten the default: both time out, 1 first.
    assert_eq!(planner.next_batch(t0 + ms(3)), Decision::Idle);
    planner.complete(busy.id, None);
    assert_eq!(dispatch(&mut planner, t0 + ms(4)).entries, vec![1], "both late: arrival order");
    assert!(planner.take_expired().is_empty(), "DELAY never expires on the timeout");

    let mut planner = BatchPlanner::new(config.clone(), LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    let busy = dispatch(&mut planner, t0);
    let timed = Entry { deadlines: config.deadlines(t0, None, None), ..entry(1, 1, t0) };
    let untimed = Entry { deadlines: Deadlines::default(), ..entry(2, 1, t0 + ms(1)) };
    admit_all(&mut planner, vec![timed, untimed], t0 + ms(1));
    assert_eq!(planner.next_batch(t0 + ms(3)), Decision::Idle);
    planner.complete(busy.id, None);
    assert_eq!(dispatch(&mut planner, t0 + ms(3)).entries, vec![2], "the punctual one goes first");
}

#[test]
fn admission_refuses_a_full_queue_and_oversized_requests() {
    let t0 = Instant::now();
    let config = PlannerConfig { max_queue_size: 2, ..batching(4) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 1, t0), entry(1, 1, t0)], t0);
    let full = planner.admit(entry(2, 1, t0), t0).expect_err("queue full");
    assert_eq!(full.reason, RejectReason::QueueFull { capacity: 2 });
    assert!(full.retry_after > Duration::ZERO);
    let big = planner.admit(entry(3, 5, t0), t0).expect_err("too many rows");
    assert_eq!(big.reason, RejectReason::TooManyRows { rows: 5, max: 4 });
    assert_eq!(planner.queue_len(), 2);
}

#[test]
fn admission_refuses_a_predicted_deadline_miss() {
    let t0 = Instant::now();
    // One instance, no batching, 2 ms per request (1 ms fixed + 1 ms per row), due in 5 ms.
    let config = PlannerConfig { slo: Some(ms(5)), ..PlannerConfig::default() };
    let mut planner = BatchPlanner::new(config.clone(), linear_profile());
    let due = |id: EntryId| Entry { deadlines: config.deadlines(t0, None, None), ..entry(id, 1, t0) };
    admit_all(&mut planner, vec![due(0), due(1)], t0);
    let miss = planner.admit(due(2), t0).expect_err("third would finish at 6 ms");
    assert_eq!(miss.reason, RejectReason::PredictedMiss { predicted: ms(6), allowed: ms(5) });
    assert_eq!(miss.retry_after, ms(4), "when the queue ahead of it has run");
    assert!(miss.reason.to_string().contains("about 6.0 ms but the deadline allows 5.0 ms"));
    let past = Entry { deadlines: config.deadlines(t0, None, None), ..entry(3, 1, t0) };
    assert_eq!(planner.admit(past, t0 + ms(5)).map_err(|r| r.reason), Err(RejectReason::DeadlinePassed));
}

#[test]
fn admission_packs_the_queue_ahead_as_the_dispatcher_will() {
    let t0 = Instant::now();
    let mut planner = BatchPlanner::new(batching(8), linear_profile());
    let due_in = |id: EntryId, rows: usize, due: Duration| Entry {
        deadlines: Deadlines { due: Some(t0 + due), ..Deadlines::default() },
        ..entry(id, rows, t0)
    };
    // The head must be done by 2.5 ms: alone (2 ms) it is, with the next 3 rows (5 ms) it is
    // not, so they form a second batch from 2 ms on (not one batch of 4 rows ending at 5 ms).
    admit_all(&mut planner, vec![due_in(0, 1, us(2_500)), due_in(1, 3, ms(100))], t0);
    // Due at 6.5 ms, a row cannot join that batch (it would end at 7 ms): it runs after it.
    let miss = planner.admit(due_in(2, 1, us(6_500)), t0).expect_err("alone it ends at 8 ms");
    assert_eq!(miss.reason, RejectReason::PredictedMiss { predicted: ms(8), allowed: us(6_500) });
    assert_eq!(miss.retry_after, ms(6), "when the two batches ahead have run");
    planner.admit(due_in(3, 1, ms(7)), t0).expect("joins the second batch, on time at 7 ms");
    assert_eq!(dispatch(&mut planner, t0).entries, vec![0], "the head alone meets its due time");
}

#[test]
fn admission_times_running_batches_with_the_upper_curve() {
    let t0 = Instant::now();
    let mut profile = LatencyProfile::default();
    // One row: typically 2 ms, up to 4 ms (the 90th percentile of 2, 2, 4).
    for exec in [2, 2, 4] {
        profile.record(1, ms(exec));
    }
    let mut planner = BatchPlanner::new(PlannerConfig::default(), profile);
    let due_in = |id: EntryId, due: Duration| Entry {
        deadlines: Deadlines { due: Some(t0 + due), ..Deadlines::default() },
        ..entry(id, 1, t0)
    };
    admit_all(&mut planner, vec![due_in(0, ms(10))], t0);
    dispatch(&mut planner, t0);
    // Behind a run that may take 4 ms, its own may end at 8 ms.
    let miss = planner.admit(due_in(1, ms(7)), t0 + ms(1)).expect_err("up to 8 ms");
    assert_eq!(miss.reason, RejectReason::PredictedMiss { predicted: ms(7), allowed: ms(6) });
}

#[test]
fn slo_fires_early_to_meet_the_oldest_deadline() {
    let config = PlannerConfig { max_queue_delay: ms(100), slo: Some(ms(10)), ..batching(8) };
    let mut planner = BatchPlanner::new(config.clone(), linear_profile());
    // Four clients 5 ms apart: company is expected for 10 ms after each arrival.
    let t0 = busy_history(&mut planner, Instant::now(), 4, ms(5));
    let arrive =
        |id: EntryId, at: Instant| Entry { deadlines: config.deadlines(at, None, None), ..entry(id, 1, at) };
    admit_all(&mut planner, vec![arrive(0, t0)], t0);
    // Alone it takes 2 ms, so it can wait until 8 ms, not the 100 ms queue delay.
    assert_eq!(planner.next_batch(t0), Decision::WaitUntil(t0 + ms(8)));
    admit_all(&mut planner, vec![arrive(1, t0 + ms(1))], t0 + ms(1));
    // Two rows take 3 ms: leave by 7 ms.
    assert_eq!(planner.next_batch(t0 + ms(1)), Decision::WaitUntil(t0 + ms(7)));
    let batch = dispatch(&mut planner, t0 + ms(7));
    assert_eq!(batch.entries, vec![0, 1]);
}

#[test]
fn slo_sends_the_prefix_that_meets_every_deadline() {
    let t0 = Instant::now();
    let mut planner = BatchPlanner::new(batching(8), linear_profile());
    let due_in = |id: EntryId, due: Duration| Entry {
        deadlines: Deadlines { due: Some(t0 + due), ..Deadlines::default() },
        ..entry(id, 1, t0)
    };
    // 4 rows take 5 ms, too late for entry 0 (due at 3.5 ms); 2 rows take 3 ms.
    let entries =
        vec![due_in(0, Duration::from_micros(3500)), due_in(1, ms(50)), due_in(2, ms(50)), due_in(3, ms(50))];
    admit_all(&mut planner, entries, t0);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![0, 1]);
}

#[test]
fn slo_prefers_throughput_among_feasible_sizes() {
    let t0 = Instant::now();
    // Batches of 3 are slow on this engine (say, a kernel falls off a fast path).
    let mut profile = LatencyProfile::default();
    for (rows, exec) in [(1, 2), (2, 2), (3, 9), (4, 9)] {
        profile.record(rows, ms(exec));
    }
    let mut planner = BatchPlanner::new(batching(3), profile);
    let due = Deadlines { due: Some(t0 + ms(20)), ..Deadlines::default() };
    admit_all(&mut planner, (0..3).map(|id| Entry { deadlines: due, ..entry(id, 1, t0) }).collect(), t0);
    assert_eq!(dispatch(&mut planner, t0).rows, 2, "2 rows in 2 ms beat 3 rows in 9 ms");
}

#[test]
fn instances_run_batches_at_once_and_cancelled_requests_leave() {
    let t0 = Instant::now();
    let mut planner =
        BatchPlanner::new(PlannerConfig { instances: 2, ..batching(1) }, LatencyProfile::default());
    admit_all(&mut planner, (0..4).map(|id| entry(id, 1, t0)).collect(), t0);
    assert!(planner.cancel(1));
    assert!(!planner.cancel(1));
    assert_eq!(dispatch(&mut planner, t0).entries, vec![0]);
    assert_eq!(dispatch(&mut planner, t0).entries, vec![2]);
    assert_eq!(planner.next_batch(t0), Decision::Idle);
    assert_eq!((planner.in_flight(), planner.free_instances(), planner.queue_len()), (2, 0, 1));
}

#[test]
fn completions_update_the_profile() {
    let t0 = Instant::now();
    let mut planner = BatchPlanner::new(batching(4), LatencyProfile::default());
    admit_all(&mut planner, vec![entry(0, 2, t0)], t0);
    let batch = dispatch(&mut planner, t0);
    planner.complete(batch.id, Some((2, ms(3))));
    assert_eq!(planner.profile().predict(2), Some(ms(3)));
}

#[test]
fn a_lone_request_runs_at_once() {
    let t0 = Instant::now();
    let config = PlannerConfig { max_queue_delay: us(500), ..batching(8) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    // The very first request: nothing is measured yet, so the configured delay applies.
    admit_all(&mut planner, vec![entry(0, 1, t0)], t0);
    assert_eq!(planner.next_batch(t0), Decision::WaitUntil(t0 + us(500)));
    let batch = dispatch(&mut planner, t0 + us(500));
    planner.complete(batch.id, None);
    // One client in a closed loop: each request is all that is outstanding, and goes at once.
    for id in 1..20 {
        let at = t0 + us(500 + 120 * id);
        admit_all(&mut planner, vec![entry(id, 1, at)], at);
        let batch = dispatch(&mut planner, at);
        assert_eq!(batch.entries, vec![id]);
        planner.complete(batch.id, None);
    }
}

#[test]
fn a_burst_waits_for_company_while_arrivals_are_dense() {
    let config = PlannerConfig { max_queue_delay: us(500), ..batching(8) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    let t = busy_history(&mut planner, Instant::now(), 4, us(10));
    // The next round: three of the four clients wait for the fourth, 10 µs apart.
    for i in 0..3 {
        let at = t + us(10 * i);
        admit_all(&mut planner, vec![entry(i, 1, at)], at);
        assert_eq!(planner.next_batch(at), Decision::WaitUntil(at + us(20)), "the next is due 10 µs on");
    }
    // The fourth: everything outstanding is queued, so the batch goes at once, not at 500 µs.
    admit_all(&mut planner, vec![entry(3, 1, t + us(30))], t + us(30));
    let batch = dispatch(&mut planner, t + us(30));
    assert_eq!(batch.entries, vec![0, 1, 2, 3]);
    planner.complete(batch.id, None);

    // A round where the fourth client has gone: the batch waits twice the usual gap, then goes.
    let t = t + us(100);
    for i in 0..3 {
        admit_all(&mut planner, vec![entry(10 + i, 1, t + us(10 * i))], t + us(10 * i));
    }
    let last = t + us(20);
    let Decision::WaitUntil(until) = planner.next_batch(last) else { panic!("expected a wait") };
    assert!(until > last && until <= last + us(40), "waits about two gaps: {:?}", until - last);
    assert_eq!(dispatch(&mut planner, until).entries, vec![10, 11, 12]);
}

#[test]
fn waiting_for_company_stops_before_a_deadline_would_be_missed() {
    // 1 ms + 1 ms per row; eight clients, one every 100 µs.
    let config = PlannerConfig { max_queue_delay: ms(10), ..batching(8) };
    let mut planner = BatchPlanner::new(config, linear_profile());
    let t = busy_history(&mut planner, Instant::now(), 8, us(100));
    let due = |id: EntryId, at: Instant, due: Instant| Entry {
        deadlines: Deadlines { due: Some(due), ..Deadlines::default() },
        ..entry(id, 1, at)
    };
    // Alone it runs 2 ms, so it may start until 2 ms: company is expected before then.
    admit_all(&mut planner, vec![due(0, t, t + ms(4))], t);
    assert_eq!(planner.next_batch(t), Decision::WaitUntil(t + us(200)));
    // Two rows run 3 ms: start by 1 ms.
    admit_all(&mut planner, vec![entry(1, 1, t + us(100))], t + us(100));
    assert_eq!(planner.next_batch(t + us(100)), Decision::WaitUntil(t + us(300)));
    // Three rows would run 4 ms, past the due time whenever they start: the two that fit go now.
    admit_all(&mut planner, vec![entry(2, 1, t + us(200))], t + us(200));
    let batch = dispatch(&mut planner, t + us(200));
    assert_eq!(batch.entries, vec![0, 1]);
    assert!(t + us(200) + planner.profile().predict(batch.rows).expect("profiled") <= t + ms(4));
    planner.complete(batch.id, None);

    // Clients 1 ms apart, a request that must start within 500 µs: the next arrival would come
    // too late to share its batch, so it goes at once.
    let config = PlannerConfig { max_queue_delay: ms(10), ..batching(8) };
    let mut planner = BatchPlanner::new(config, linear_profile());
    let t = busy_history(&mut planner, Instant::now(), 8, ms(1));
    admit_all(&mut planner, vec![due(0, t, t + us(2500))], t);
    assert_eq!(dispatch(&mut planner, t).entries, vec![0]);
}

#[test]
fn company_never_delays_a_batch_past_max_queue_delay() {
    let config = PlannerConfig { max_queue_delay: us(500), ..batching(16) };
    let mut planner = BatchPlanner::new(config, LatencyProfile::default());
    let t = busy_history(&mut planner, Instant::now(), 16, us(100));
    // Requests keep coming every 100 µs, but never all sixteen of the last round at once.
    let mut now = t;
    let mut next_arrival = t;
    let mut id = 0;
    let first = loop {
        if now == next_arrival {
            admit_all(&mut planner, vec![entry(id, 1, now)], now);
            id += 1;
            next_arrival = now + us(100);
        }
        match planner.next_batch(now) {
            Decision::Dispatch(batch) => break batch,
            Decision::WaitUntil(at) => {
                assert!(at <= t + us(500), "asked to wait until {:?} after the oldest", at - t);
                now = at.min(next_arrival);
            }
            Decision::Idle => panic!("a queued request with a free instance is never idle"),
        }
    };
    assert_eq!(now, t + us(500), "sent when the oldest has waited max_queue_delay");
    assert_eq!(first.entries, vec![0, 1, 2, 3, 4, 5]);
}
