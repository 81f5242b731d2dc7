//! Our ZMTP client against another implementation's sockets (the `zeromq` crate's PUB and
//! ROUTER over real TCP), and against hostile peers (a raw TCP listener that breaks the
//! protocol in the ways that cost memory or time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use sluice_routing::zmtp::{Connection, ConnectionLimits, SocketType, ZmtpError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

fn message(frames: &[&[u8]]) -> ZmqMessage {
    ZmqMessage::try_from(
        frames
            .iter()
            .map(|f| Bytes::copy_from_slice(f))
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_sub_connection_receives_what_a_zeromq_pub_publishes() {
    let mut publisher = zeromq::PubSocket::new();
    let endpoint = publisher.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut sub = Connection::connect(
        &endpoint.to_string(),
        SocketType::Sub,
        ConnectionLimits::default(),
    )
    .await
    .unwrap();
    sub.subscribe(b"").await.unwrap();
    // A subscription takes a moment to reach the publisher: publish until one arrives.
    let payload = vec![7u8; 300]; // a long frame
    let received = loop {
        publisher
            .send(message(&[b"kv", &0u64.to_be_bytes(), &payload]))
            .await
            .unwrap();
        match sub.recv(Duration::from_millis(50)).await {
            Ok(m) => break m,
            Err(ZmtpError::Timeout(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(received.len(), 3);
    assert_eq!(&received[0][..], b"kv");
    assert_eq!(&received[2][..], &payload[..]);
}

#[tokio::test]
async fn a_dealer_connection_talks_to_a_zeromq_router() {
    let mut router = zeromq::RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut dealer = Connection::connect(
        &endpoint.to_string(),
        SocketType::Dealer,
        ConnectionLimits::default(),
    )
    .await
    .unwrap();
    dealer.send(&[b"", &5u64.to_be_bytes()]).await.unwrap();
    let request = router.recv().await.unwrap().into_vec();
    assert_eq!(request.len(), 3, "identity, empty, start sequence");
    assert_eq!(&request[2][..], &5u64.to_be_bytes());
    let identity = request[0].clone();
    router
        .send(message(&[&identity, b"", b"kv", &5u64.to_be_bytes(), b"P"]))
        .await
        .unwrap();
    let answer = dealer.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        answer,
        vec![
            Bytes::new(),
            Bytes::from_static(b"kv"),
            Bytes::copy_from_slice(&5u64.to_be_bytes()),
            Bytes::from_static(b"P")
        ]
    );
}

/// A peer that answers the handshake as a PUB would, then runs `then` on the socket.
async fn hostile<F, Fut>(then: F) -> String
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3;
        greeting[12..16].copy_from_slice(b"NULL");
        s.write_all(&greeting).await.unwrap();
        let mut theirs = [0u8; 64];
        s.read_exact(&mut theirs).await.unwrap();
        let body = [
            &[5u8][..],
            b"READY",
            &[11],
            b"Socket-Type",
            &3u32.to_be_bytes(),
            b"PUB",
        ]
        .concat();
        s.write_all(&[&[0x04, body.len() as u8][..], &body].concat())
            .await
            .unwrap();
        then(s).await;
    });
    format!("tcp://{address}")
}

fn quick() -> ConnectionLimits {
    ConnectionLimits {
        io_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    }
}

#[tokio::test]
async fn a_frame_claiming_a_terabyte_is_refused_at_once() {
    let endpoint = hostile(|mut s| async move {
        s.write_all(&[0x02, 0, 0, 1, 0, 0, 0, 0, 0]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let mut sub = Connection::connect(&endpoint, SocketType::Sub, quick())
        .await
        .unwrap();
    let e = sub.recv(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(e, ZmtpError::Protocol(_)), "{e}");
    assert!(e.to_string().contains("more than"), "{e}");
}

#[tokio::test]
async fn a_message_that_stalls_midway_times_out() {
    let endpoint = hostile(|mut s| async move {
        // The first frame of three, then nothing.
        s.write_all(&[0x01, 2, b'k', b'v']).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let mut sub = Connection::connect(&endpoint, SocketType::Sub, quick())
        .await
        .unwrap();
    let e = sub.recv(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(e, ZmtpError::Timeout("a message")), "{e}");
}

#[tokio::test]
async fn too_many_frames_in_a_message_are_refused() {
    let endpoint = hostile(|mut s| async move {
        for _ in 0..100 {
            if s.write_all(&[0x01, 0]).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let mut sub = Connection::connect(&endpoint, SocketType::Sub, quick())
        .await
        .unwrap();
    let e = sub.recv(Duration::from_secs(5)).await.unwrap_err();
    assert!(e.to_string().contains("more than 8 frames"), "{e}");
}

#[tokio::test]
async fn a_silent_peer_or_a_wrong_socket_type_fails_the_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let _held = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let e = Connection::connect(&format!("tcp://{address}"), SocketType::Sub, quick())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ZmtpError::Timeout("the handshake")), "{e}");

    // A PUB is no peer for a DEALER.
    let endpoint = hostile(|_s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let e = Connection::connect(&endpoint, SocketType::Dealer, quick())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("PUB socket"), "{e}");
}
