//! The shared state store as the gateway's subsystems use it: a real `redis-server` started
//! by the testkit, stopped, paused and started again under the store's async connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sluice_store::{redis, RedisError, RedisStore, IO_TIMEOUT, RECONNECT_PAUSE};
use sluice_testkit::redis::RedisServer;

/// Clients connected to `redis`, this question's own connection not counted.
fn connected_clients(redis: &RedisServer) -> u64 {
    let info = redis.query(&["INFO", "clients"]);
    let n: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    n - 1
}

async fn client_id(store: &RedisStore) -> Result<i64, RedisError> {
    store.command(redis::cmd("CLIENT").arg("ID")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_one_connection() {
    let redis = RedisServer::start();
    let store = std::sync::Arc::new(RedisStore::connect(&redis.url()).unwrap());
    // `connect` checked the server over the blocking side's connection.
    assert_eq!(connected_clients(&redis), 1);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut pipe = redis::pipe();
                pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
                pipe.cmd("GET").arg(format!("k{i}"));
                let (got,): (i64,) = store.pipeline(&pipe).await.unwrap();
                assert_eq!(got, i);
                client_id(&store).await.unwrap()
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "every task used the same connection: {ids:?}");
    assert_eq!(connected_clients(&redis), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_answer_is_late_is_replaced() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).unwrap();
    let first = client_id(&store).await.unwrap();
    // Redis holds every client's commands for longer than the deadline.
    let pause_ms = (IO_TIMEOUT + Duration::from_secs(1))
        .as_millis()
        .to_string();
    assert_eq!(redis.query(&["CLIENT", "PAUSE", &pause_ms, "ALL"]), "OK");
    let late = tokio::time::timeout(IO_TIMEOUT * 3, client_id(&store))
        .await
        .expect("the deadline ends the call");
    match late {
        Err(RedisError::Io { source, .. }) => assert!(source.is_timeout(), "{source}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The late answer is never read as the next call's: a new connection serves it.
    let next = loop {
        match client_id(&store).await {
            Ok(id) => break id,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_ne!(next, first);
    let echoed: String = store
        .command(redis::cmd("ECHO").arg("after the pause"))
        .await
        .unwrap();
    assert_eq!(echoed, "after the pause");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_at_once_and_the_connection_comes_back_with_redis() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).unwrap();
    let set = redis::cmd("SET").arg("k").arg("v").clone();
    store.command::<()>(&set).await.unwrap();

    redis.kill();
    // The connection in use fails; the next call's connect fails; the calls after it, within
    // the pause, are answered without trying.
    assert!(matches!(
        store.command::<()>(&set).await,
        Err(RedisError::Io { .. })
    ));
    assert!(store.command::<()>(&set).await.is_err());
    let unavailable = store.command::<()>(&set).await.unwrap_err();
    assert!(
        matches!(unavailable, RedisError::Unavailable { .. }),
        "{unavailable}"
    );
    assert!(
        unavailable.to_string().contains("unreachable"),
        "{unavailable}"
    );

    redis.restart();
    tokio::time::sleep(RECONNECT_PAUSE).await;
    let mut answered = false;
    for _ in 0..50 {
        if store.command::<()>(&set).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the store reconnected once Redis was back");
    let v: String = store.command(redis::cmd("GET").arg("k")).await.unwrap();
    assert_eq!(v, "v");
}
