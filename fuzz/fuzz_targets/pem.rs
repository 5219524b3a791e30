//! PEM bundles and certificate chains handed to the sidecar (certificate and
//! key files, `--intermediates`, the broker CA bundle) and to the broker (the
//! CA Secret): chain parsing, certificate facts, chain verification, private
//! keys, the CA loader, the signer, and the TLS root bundle reader.
//! Promise: no panic or hang; a signer that loads can sign.
#![no_main]

use attache_fuzz::{ca_der, now};
use attache_pki::cert::{CertificateInfo, parse_certificate_pem, parse_pem_chain, verify_chain};
use attache_pki::{CertificateAuthority, PrivateKey, X509Signer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let chain = parse_pem_chain(text).unwrap_or_default();
    for der in &chain {
        if let Ok(info) = CertificateInfo::from_der(der) {
            let _ = info.workload_identity();
            let _ = info.lifetime();
        }
    }
    if let Some((leaf, rest)) = chain.split_first() {
        let _ = verify_chain(leaf, rest, &[ca_der().to_vec()], now());
        let _ = verify_chain(leaf, rest, rest, now());
    }
    let _ = parse_certificate_pem(text);
    let key = PrivateKey::from_pem(text);
    if let (Ok(key), Some((leaf, rest))) = (key, chain.split_first())
        && let Ok(signer) = X509Signer::new(leaf.clone(), rest.to_vec(), key)
    {
        signer
            .sign(
                "POST",
                "rolesanywhere.eu-west-1.amazonaws.com",
                "/sessions",
                "",
                &[],
                b"{}",
                "eu-west-1",
                "rolesanywhere",
                now(),
            )
            .expect("a loaded signer signs");
    }
    let _ = CertificateAuthority::from_pem(text, text);
    let _ = reqwest::Certificate::from_pem_bundle(data);
});
