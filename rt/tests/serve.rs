//! The connection timeouts every attache listener has, driven over raw TCP on
//! tokio's paused clock.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use attache_rt::serve::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: attache\r\n\r\n";

/// Serves "ok" on a loopback port until the returned sender is dropped.
async fn server() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = tower::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(hyper::Response::new("ok".to_string()))
    });
    tokio::spawn(serve(listener, service, None, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Reads one response (headers and the two-byte body "ok").
async fn read_response(conn: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed before the response ended: {seen:?}"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(seen).unwrap()
}

/// Whether the server has closed `conn`, waiting at most `wait` to find out.
async fn closed_within(conn: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(_) => false,
    }
}

/// A client that keeps a connection for its next request (Go's transport
/// keeps idle ones 90 s) must find it open: a server closing it first races
/// the next request, which fails with a broken pipe.
#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_waits_longer_than_clients_keep_it() {
    let (addr, _stop) = server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));

    assert!(!closed_within(&mut conn, Duration::from_secs(90)).await);
    conn.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (addr, _stop) = server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(REQUEST).await.unwrap();
    read_response(&mut conn).await;

    assert!(!closed_within(&mut conn, IDLE_TIMEOUT - Duration::from_secs(1)).await);
    assert!(closed_within(&mut conn, Duration::from_secs(2)).await);
}

/// A connection opened and never used is not idle between requests: it owes
/// its first request's headers within the header timeout.
#[tokio::test(start_paused = true)]
async fn a_connection_that_never_sends_is_closed_after_the_header_timeout() {
    let (addr, _stop) = server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    assert!(!closed_within(&mut conn, HEADER_READ_TIMEOUT - Duration::from_millis(100)).await);
    assert!(closed_within(&mut conn, Duration::from_millis(200)).await);
}

/// Slowloris: headers sent a byte a second never complete; the connection is
/// closed once the header timeout has passed since their first byte, on a
/// fresh connection and on a kept-alive one alike.
#[tokio::test(start_paused = true)]
async fn headers_trickled_a_byte_a_second_are_cut_off() {
    let (addr, _stop) = server().await;
    for kept_alive in [false, true] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        if kept_alive {
            conn.write_all(REQUEST).await.unwrap();
            read_response(&mut conn).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let start = tokio::time::Instant::now();
        let mut closed = false;
        for byte in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if conn.write_all(&[*byte]).await.is_err()
                || closed_within(&mut conn, Duration::from_secs(1)).await
            {
                closed = true;
                break;
            }
        }
        let took = start.elapsed();
        assert!(closed, "kept_alive={kept_alive}: still open after {took:?}");
        assert!(
            took >= HEADER_READ_TIMEOUT && took <= HEADER_READ_TIMEOUT + Duration::from_secs(1),
            "kept_alive={kept_alive}: closed after {took:?}"
        );
    }
}
