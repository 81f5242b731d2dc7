use super::*;
use crate::health::{Outcome, Standing};

fn router(policy: Policy, n: usize) -> ModelRouter {
    ModelRouter::new(
        RoutingSettings {
            policy,
            block_size: 4,
            session_ttl: Some(Duration::from_secs(60)),
            ..RoutingSettings::default()
        },
        (0..n)
            .map(|i| EndpointSpec {
                target: None,
                label: format!("e{i}"),
                kv: None,
                probe: None,
            })
            .collect(),
    )
}

fn firsts(r: &ModelRouter, q: &RouteQuery<'_>, times: usize) -> Vec<usize> {
    (0..times)
        .map(|_| r.route(q, 0).order.first().unwrap())
        .collect()
}

#[test]
fn round_robin_rotates_and_lists_every_endpoint() {
    let r = router(Policy::RoundRobin, 3);
    let d = r.route(&RouteQuery::default(), 0);
    assert_eq!(d.order.iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(d.reason, Reason::RoundRobin);
    assert_eq!(firsts(&r, &RouteQuery::default(), 3), vec![1, 2, 0]);
    let none = router(Policy::RoundRobin, 0);
    assert_eq!(none.route(&RouteQuery::default(), 0).order.first(), None);
}

#[test]
fn least_loaded_takes_the_fewest_in_flight_then_turns() {
    let r = router(Policy::LeastLoaded, 3);
    let d = r.route(&RouteQuery::default(), 0);
    let _a = r.sent(0, &d, 0);
    let _b = r.sent(0, &d, 0);
    let _c = r.sent(1, &d, 0);
    assert_eq!(firsts(&r, &RouteQuery::default(), 3), vec![2, 2, 2]);
    let _d = r.sent(2, &d, 0);
    // 1 and 2 tie at one each: both take turns, 0 none.
    let f = firsts(&r, &RouteQuery::default(), 6);
    assert!(f.contains(&1) && f.contains(&2) && !f.contains(&0), "{f:?}");
}

#[test]
fn prefix_aware_sends_a_prompt_where_its_prefix_was_sent_and_spreads_new_ones() {
    let r = router(Policy::PrefixAware, 3);
    let prompt: Vec<u32> = (0..40).collect();
    let q = RouteQuery {
        prompt: Some(&prompt),
        ..RouteQuery::default()
    };
    // Nothing known: new prompts go round the endpoints.
    let news: Vec<usize> = (0..3)
        .map(|i| {
            let other: Vec<u32> = (100 * i..100 * i + 40).collect();
            let d = r.route(
                &RouteQuery {
                    prompt: Some(&other),
                    ..RouteQuery::default()
                },
                0,
            );
            assert_eq!(d.reason, Reason::NoPrefixMatch);
            d.order.first().unwrap()
        })
        .collect();
    let mut sorted = news.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2], "{news:?}");
    // Sent to 2 (no events there: the router's own record, for its approximate TTL).
    let d = r.route(&q, 0);
    let guard = r.sent(2, &d, 0);
    drop(guard);
    // A longer prompt with that prefix (a conversation's next turn) goes to 2.
    let next: Vec<u32> = (0..60).collect();
    let d = r.route(
        &RouteQuery {
            prompt: Some(&next),
            ..RouteQuery::default()
        },
        1_000,
    );
    assert_eq!(d.order.first(), Some(2));
    assert_eq!(d.reason, Reason::PrefixMatch);
    assert_eq!(d.matched_blocks, 10);
    // After the approximate TTL, the record no longer counts.
    let late = r.route(&q, 300_001);
    assert_eq!(late.reason, Reason::NoPrefixMatch);
}

#[test]
fn a_busy_holder_of_the_prefix_yields_to_the_least_loaded() {
    let r = router(Policy::PrefixAware, 2);
    let prompt: Vec<u32> = (0..40).collect();
    let q = RouteQuery {
        prompt: Some(&prompt),
        ..RouteQuery::default()
    };
    let d = r.route(&q, 0);
    // Requests on 0 past their prefill (decoding): each costs 1 against the 10 blocks 1
    // would have to prefill.
    let decoding = || {
        let mut g = r.sent(0, &d, 0).unwrap();
        g.first_token();
        g
    };
    let mut held = vec![decoding()];
    assert_eq!(
        r.route(&q, 0).order.first(),
        Some(0),
        "one in flight: still worth it"
    );
    // Three in flight on 0, none on 1: 3 > 2 × (0 + 1).
    held.push(decoding());
    held.push(decoding());
    let d = r.route(&q, 0);
    assert_eq!((d.order.first(), d.reason), (Some(1), Reason::Imbalance));
    drop(held);
}

#[test]
fn a_session_sticks_until_its_ttl_which_changes_at_runtime() {
    let r = router(Policy::RoundRobin, 3);
    let q = RouteQuery {
        session: Some("s-1"),
        ..RouteQuery::default()
    };
    let d = r.route(&q, 0);
    let to = d.order.first().unwrap();
    drop(r.sent(to, &d, 0));
    for now in [1, 10_000, 59_999] {
        let d = r.route(&q, now);
        assert_eq!((d.order.first(), d.reason), (Some(to), Reason::Session));
        assert_eq!(d.order.iter().count(), 3, "the others follow");
    }
    // Shortened to 200 ms: the pin made at 0 is stale at 200, before any sweep.
    r.set_session_ttl(Some(Duration::from_millis(200)));
    assert_eq!(r.route(&q, 199).reason, Reason::Session);
    assert_eq!(r.route(&q, 200).reason, Reason::RoundRobin);
    // Off: no pins at all.
    r.set_session_ttl(None);
    assert_eq!(r.route(&q, 1).reason, Reason::RoundRobin);
    // A session id too long to keep is not pinned.
    r.set_session_ttl(Some(Duration::from_secs(1)));
    let long = "x".repeat(MAX_SESSION_ID_BYTES + 1);
    let q = RouteQuery {
        session: Some(&long),
        ..RouteQuery::default()
    };
    let d = r.route(&q, 0);
    drop(r.sent(0, &d, 0));
    assert_eq!(r.route(&q, 1).reason, Reason::RoundRobin);
}

#[test]
fn decisions_are_counted_by_reason() {
    let r = router(Policy::RoundRobin, 2);
    r.route(&RouteQuery::default(), 0);
    r.route(&RouteQuery::default(), 0);
    let counts = r.decisions();
    assert!(counts.contains(&(Reason::RoundRobin, 2)));
    assert!(counts.contains(&(Reason::Session, 0)));
}

#[test]
fn an_ejected_endpoint_goes_last_and_its_sessions_move() {
    let r = router(Policy::RoundRobin, 3);
    let q = RouteQuery {
        session: Some("s"),
        ..RouteQuery::default()
    };
    let d = r.route(&q, 0);
    drop(r.sent(1, &d, 0));
    for _ in 0..3 {
        r.report(&d, 1, Outcome::Failure, 0);
    }
    for _ in 0..6 {
        let d = r.route(&q, 1);
        let order: Vec<usize> = d.order.iter().collect();
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], 1, "ejected: last resort only");
        assert_ne!(
            d.reason,
            Reason::Session,
            "the pin does not hold on an ejected endpoint"
        );
    }
    let view = r.endpoints();
    assert_eq!(view[1].standing, Standing::Ejected);
    assert_eq!(view[1].ejections, 1);
    // Past the ejection and the slow start, it is first in its turn again.
    let later = 10_000 + 10_000;
    assert!((0..3).any(|_| r.route(&RouteQuery::default(), later).order.first() == Some(1)));
}

#[test]
fn retries_stop_at_max_attempts_and_at_the_budget() {
    let r = ModelRouter::new(
        RoutingSettings {
            retry: crate::retry_budget::RetrySettings {
                max_attempts: 3,
                ratio: 0.0,
                min_per_second: 0.2,
            },
            ..RoutingSettings::default()
        },
        vec![EndpointSpec {
            target: None,
            label: "e".into(),
            kv: None,
            probe: None,
        }],
    );
    assert_eq!(
        r.retry(3, RetryReason::Reset, 0),
        Err(RetryRefused::Attempts)
    );
    // Two retries in ten seconds (0.2 a second), then no more.
    assert_eq!(r.retry(1, RetryReason::Status5xx, 0), Ok(()));
    assert_eq!(r.retry(1, RetryReason::Status429, 0), Ok(()));
    assert_eq!(r.retry(1, RetryReason::Reset, 0), Err(RetryRefused::Budget));
    let counts = r.retries();
    assert!(counts.made.contains(&(RetryReason::Status5xx, 1)));
    assert_eq!((counts.refused_attempts, counts.refused_budget), (1, 1));
}

#[test]
fn a_prefix_every_request_shares_does_not_draw_all_the_traffic() {
    let r = router(Policy::PrefixAware, 4);
    let mut sent = [0u32; 4];
    for conversation in 0..200u32 {
        // A shared 32-token system prompt, then the conversation's own 8 tokens.
        let prompt: Vec<u32> = (0..32)
            .chain(1000 + 8 * conversation..1008 + 8 * conversation)
            .collect();
        let q = RouteQuery {
            prompt: Some(&prompt),
            ..RouteQuery::default()
        };
        let now = u64::from(conversation) * 10;
        let d = r.route(&q, now);
        let to = d.order.first().unwrap();
        drop(r.sent(to, &d, now));
        sent[to] += 1;
    }
    let mean = 50.0;
    assert!(
        sent.iter().all(|&n| f64::from(n) <= 1.3 * mean + 2.0),
        "each engine's share stays near the mean: {sent:?}"
    );
}

fn spec(label: &str) -> EndpointSpec {
    EndpointSpec {
        target: None,
        label: label.into(),
        kv: None,
        probe: None,
    }
}

#[test]
fn endpoints_added_and_removed_at_runtime_take_and_leave_traffic() {
    let r = Arc::new(router(Policy::RoundRobin, 2));
    let before = r.route(&RouteQuery::default(), 0);
    let id = r.add_endpoint(spec("e2")).unwrap();
    assert_eq!(
        r.add_endpoint(spec("e2")),
        Err(EndpointChangeError::Exists("e2".into()))
    );
    let table = r.table();
    assert_eq!((table.version, table.len()), (1, 3));
    assert_eq!(table.id(2), Some(id));
    // Every endpoint of the new table takes its turn, the new one too.
    let labels: std::collections::BTreeSet<String> = (0..3)
        .map(|_| {
            let d = r.route(&RouteQuery::default(), 0);
            d.table.label(d.order.first().unwrap()).unwrap().to_owned()
        })
        .collect();
    assert_eq!(labels.len(), 3, "{labels:?}");
    // A decision made before the change still reads its own table.
    assert_eq!(before.table.len(), 2);
    assert_eq!(before.table.label(1), Some("e1"));

    assert_eq!(r.remove_endpoint("e0").unwrap(), EndpointId(0));
    assert_eq!(
        r.remove_endpoint("e0"),
        Err(EndpointChangeError::NotFound("e0".into()))
    );
    for _ in 0..6 {
        let d = r.route(&RouteQuery::default(), 0);
        let routed: Vec<&str> = d.order.iter().map(|i| d.table.label(i).unwrap()).collect();
        assert_eq!(routed.len(), 2);
        assert!(!routed.contains(&"e0"), "{routed:?}");
    }
    // The old decision's endpoint is still there for it (its request finishes).
    assert!(r.sent(0, &before, 0).is_some());
}

#[test]
fn a_session_pinned_to_a_removed_endpoint_is_pinned_again() {
    let r = Arc::new(router(Policy::RoundRobin, 3));
    let q = RouteQuery {
        session: Some("s"),
        ..RouteQuery::default()
    };
    let d = r.route(&q, 0);
    let first = d.order.first().unwrap();
    let pinned_label = d.table.label(first).unwrap().to_owned();
    drop(r.sent(first, &d, 0));
    let d = r.route(&q, 1);
    assert_eq!(d.reason, Reason::Session);
    r.remove_endpoint(&pinned_label).unwrap();
    let d = r.route(&q, 2);
    assert_ne!(d.reason, Reason::Session);
    let to = d.order.first().unwrap();
    assert_ne!(d.table.label(to).unwrap(), pinned_label);
    drop(r.sent(to, &d, 2));
    let again = r.route(&q, 3);
    assert_eq!(again.reason, Reason::Session);
    assert_eq!(
        again.table.label(again.order.first().unwrap()),
        d.table.label(to)
    );
    // Re-added under the same name it is a new endpoint: the old pin does not follow it.
    let id = r.add_endpoint(spec(&pinned_label)).unwrap();
    assert!(id.0 >= 3);
}

#[test]
fn removing_an_endpoint_drops_what_the_index_held_for_it() {
    let r = Arc::new(router(Policy::PrefixAware, 2));
    let prompt: Vec<u32> = (0..32).collect();
    let q = RouteQuery {
        prompt: Some(&prompt),
        ..RouteQuery::default()
    };
    let d = r.route(&q, 0);
    let to = d.order.first().unwrap();
    let label = d.table.label(to).unwrap().to_owned();
    drop(r.sent(to, &d, 0));
    let d = r.route(&q, 1);
    assert_eq!((d.reason, d.matched_blocks), (Reason::PrefixMatch, 8));
    r.remove_endpoint(&label).unwrap();
    let held: u64 = r
        .index()
        .unwrap()
        .summary()
        .iter()
        .map(|p| p.routed_blocks)
        .sum();
    assert_eq!(held, 0);
    // Back under the same name, it holds nothing of before.
    r.add_endpoint(spec(&label)).unwrap();
    let d = r.route(&q, 2);
    assert_eq!((d.reason, d.matched_blocks), (Reason::NoPrefixMatch, 0));
}
