use super::*;
use crate::source::postgres::catalog::quote_ident;
use bytes::{BufMut, BytesMut};
use connection::quote_literal;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// A stream whose server end is a Unix socket the test writes to.
fn stream_pair() -> (ReplicationStream, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stream = ReplicationStream {
        framed: Framed::new(Socket::Unix(ours)),
        ended: false,
    };
    (stream, theirs)
}

fn xlog_frame(start: u64, data: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u8(b'd');
    buf.put_u32((4 + XLOG_DATA_HEADER_LEN + data.len()) as u32);
    buf.put_u8(b'w');
    buf.put_u64(start);
    buf.put_u64(start + 100);
    buf.put_i64(42);
    buf.put_slice(data);
    buf.to_vec()
}

fn keepalive_frame(end: u64, reply: bool) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u8(b'd');
    buf.put_u32((4 + KEEPALIVE_LEN) as u32);
    buf.put_u8(b'k');
    buf.put_u64(end);
    buf.put_i64(7);
    buf.put_u8(u8::from(reply));
    buf.to_vec()
}

#[tokio::test]
async fn reassembles_frames_split_across_reads() {
    let (mut stream, mut server) = stream_pair();
    let mut bytes = xlog_frame(10, b"Bhello");
    bytes.extend(keepalive_frame(99, true));
    for chunk in bytes.chunks(3) {
        server.write_all(chunk).await.unwrap();
    }
    match stream.next_message().await.unwrap() {
        Some(ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time,
            data,
        }) => {
            assert_eq!((wal_start, wal_end, send_time), (Lsn(10), Lsn(110), 42));
            assert_eq!(&data[..], b"Bhello");
        }
        other => panic!("expected XLogData, got {other:?}"),
    }
    let keepalive = stream.next_message().await.unwrap();
    assert_eq!(
        keepalive,
        Some(ReplicationMessage::Keepalive {
            wal_end: Lsn(99),
            send_time: 7,
            reply_requested: true
        })
    );
}

#[tokio::test]
async fn cancelled_reads_lose_no_bytes() {
    let (mut stream, mut server) = stream_pair();
    let frame = xlog_frame(1, b"Ixyz");
    server.write_all(&frame[..10]).await.unwrap();
    let timed_out = tokio::time::timeout(Duration::from_millis(50), stream.next_message()).await;
    assert!(timed_out.is_err(), "a half frame must not be returned");
    server.write_all(&frame[10..]).await.unwrap();
    match stream.next_message().await.unwrap() {
        Some(ReplicationMessage::XLogData { data, .. }) => assert_eq!(&data[..], b"Ixyz"),
        other => panic!("expected XLogData, got {other:?}"),
    }
}

#[tokio::test]
async fn next_buffered_only_returns_what_is_already_read() {
    let (mut stream, mut server) = stream_pair();
    let mut bytes = xlog_frame(1, b"B");
    bytes.extend(xlog_frame(2, b"C"));
    server.write_all(&bytes).await.unwrap();
    assert!(stream.next_message().await.unwrap().is_some());
    // The second frame arrived in the same read.
    assert!(matches!(
        stream.next_buffered().unwrap(),
        Some(ReplicationMessage::XLogData {
            wal_start: Lsn(2),
            ..
        })
    ));
    assert_eq!(stream.next_buffered().unwrap(), None);
}

#[tokio::test]
async fn copy_done_ends_the_stream() {
    let (mut stream, mut server) = stream_pair();
    server.write_all(&[b'c', 0, 0, 0, 4]).await.unwrap();
    assert_eq!(stream.next_message().await.unwrap(), None);
    assert_eq!(stream.next_message().await.unwrap(), None);
}

#[tokio::test]
async fn rejects_oversized_frames_and_unknown_payloads() {
    let (mut stream, mut server) = stream_pair();
    server
        .write_all(&[b'd', 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let err = stream.next_message().await.unwrap_err();
    assert!(matches!(err, ReplicationError::Protocol(_)), "{err}");

    let (mut stream, mut server) = stream_pair();
    server.write_all(&[b'd', 0, 0, 0, 5, b'x']).await.unwrap();
    let err = stream.next_message().await.unwrap_err();
    assert!(err.to_string().contains("'x'"), "{err}");
}

#[tokio::test]
async fn eof_is_closed() {
    let (mut stream, server) = stream_pair();
    drop(server);
    let err = stream.next_message().await.unwrap_err();
    assert!(matches!(err, ReplicationError::Closed), "{err}");
}

#[test]
fn server_error_display() {
    let err = ReplicationError::Server {
        code: "42704".into(),
        message: "replication slot \"x\" does not exist".into(),
        detail: Some("d".into()),
        hint: Some("h".into()),
    };
    assert_eq!(
        err.to_string(),
        "42704: replication slot \"x\" does not exist (d) h"
    );
    assert_eq!(err.sqlstate(), Some("42704"));
}

#[test]
fn quoting() {
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
}
