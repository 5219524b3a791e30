//! Raw bytes on a connection to the sidecar's real listener (hyper HTTP/1,
//! the endpoint's routing, the token compare, the IMDSv2 paths with their
//! Host and X-Forwarded-For checks).
//! Promise: no panic and no hang; the credentials (their secret key) are
//! only ever sent to a request that carried the endpoint token.
#![no_main]

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use attache_fuzz::{ENDPOINT_TOKEN, SECRET, sidecar};
use libfuzzer_sys::fuzz_target;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut stream = TcpStream::connect(sidecar()).expect("connect to the sidecar");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // The peer may close before reading everything (a malformed request).
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("no answer from the sidecar: {e}"),
    }
    if contains(&reply, SECRET.as_bytes()) {
        assert!(
            contains(data, ENDPOINT_TOKEN.as_bytes()),
            "credentials served without the endpoint token"
        );
    }
});
