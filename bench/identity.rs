//! Criterion benchmarks of the per-handshake identity work.
//!
//! - `verify_peer`: chain verification + SPIFFE checks + AppID decode of one
//!   leaf, next to `appid_decode` alone and `webpki_chain` alone (the
//!   baseline: what rustls would do without AppID), so the cost of the
//!   AppID part shows as a ratio within one run.
//! - `handshake`: a complete TLS 1.3 mutual handshake between the sidecar's
//!   client and server configs (resumption is off by design), in memory (no
//!   sockets), with AppID verification on both sides.
//!
//! Run: `cargo bench -p appid-proxy --bench identity`.

use criterion::{Criterion, criterion_group, criterion_main};
use rustls_pki_types::{CertificateDer, UnixTime};

use appid_policy::AppIdClaims;
use appid_policy::claims::{Vulns, attestation};
use appid_policy::extension;
use appid_proxy::config::TunnelMode;
use appid_proxy::identity::ca::{Ca, KeyAlg};
use appid_proxy::identity::spiffe::SpiffeId;
use appid_proxy::identity::verify::{PeerRole, TrustBundle, verify_peer};
use appid_proxy::sidecar::tls::{self, LocalIdentity, TlsState};

struct Fixture {
    _dir: tempfile::TempDir,
    bundle: TrustBundle,
    leaf: CertificateDer<'static>,
    client: LocalIdentity,
    server: LocalIdentity,
}

fn claims(id: &SpiffeId) -> AppIdClaims {
    let mut claims = AppIdClaims::new(id.as_str(), attestation::JOIN_TOKEN);
    claims.labels.insert("app".into(), "web".into());
    claims.labels.insert("team".into(), "shop".into());
    claims.vulns = Some(Vulns {
        critical: 0,
        high: 2,
        medium: 7,
        low: 13,
        unknown: 0,
        scanner: "trivy".into(),
        report: format!("sha256:{}", "ab".repeat(32)),
        scanned_at: Some("2026-11-20T10:00:00Z".into()),
    });
    claims
}

fn identity(ca: &Ca, bundle: &TrustBundle, name: &str) -> (CertificateDer<'static>, LocalIdentity) {
    let id = SpiffeId::parse(&format!("spiffe://bench.example/ns/shop/sa/{name}")).unwrap();
    let key = KeyAlg::EcdsaP256.generate().unwrap();
    let issued = ca
        .issue(&id, &claims(&id), &key, time::Duration::hours(1))
        .unwrap();
    let local = LocalIdentity::from_pem(
        name,
        issued.pem.as_bytes(),
        name,
        key.serialize_pem().as_bytes(),
        bundle,
    )
    .unwrap();
    (issued.der, local)
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "bench.example", KeyAlg::EcdsaP256).unwrap();
    let bundle = TrustBundle::new(
        "ca.pem",
        std::slice::from_ref(ca.cert_der()),
        vec!["bench.example".into()],
    )
    .unwrap();
    let (leaf, client) = identity(&ca, &bundle, "web");
    let (_, server) = identity(&ca, &bundle, "api");
    Fixture {
        _dir: dir,
        bundle,
        leaf,
        client,
        server,
    }
}

fn verification(c: &mut Criterion) {
    let f = fixture();
    let now = UnixTime::now();
    let extension_value = extension::encode(&claims(
        &SpiffeId::parse("spiffe://bench.example/ns/shop/sa/web").unwrap(),
    ))
    .unwrap();
    let algorithms = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    // The same root the bundle holds, for the webpki-only baseline.
    let anchors = appid_proxy::identity::files::read_certs(&f._dir.path().join("ca.pem")).unwrap();
    let trust_anchors: Vec<_> = anchors
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(der).unwrap().to_owned())
        .collect();

    let mut group = c.benchmark_group("verify");
    group.bench_function("webpki_chain (baseline)", |b| {
        b.iter(|| {
            let ee = webpki::EndEntityCert::try_from(&f.leaf).unwrap();
            ee.verify_for_usage(
                algorithms,
                &trust_anchors,
                &[],
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .unwrap();
        })
    });
    group.bench_function("appid_decode", |b| {
        b.iter(|| extension::decode(std::hint::black_box(&extension_value)).unwrap())
    });
    group.bench_function("verify_peer (chain + SPIFFE + AppID)", |b| {
        b.iter(|| {
            verify_peer(
                std::slice::from_ref(&f.leaf),
                &f.bundle,
                PeerRole::Client,
                now,
            )
            .unwrap()
        })
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let f = fixture();
    let client_state = TlsState::new(f.client, f.bundle.clone());
    let server_state = TlsState::new(f.server, f.bundle.clone());
    // The sidecar's own configs: TLS 1.3, mutual, no resumption.
    let client_config = tls::client_config(client_state, TunnelMode::Strict);
    let server_config = tls::server_config(server_state, TunnelMode::Strict);

    let mut group = c.benchmark_group("handshake");
    group.bench_function("full mTLS + AppID both sides", |b| {
        b.iter(|| {
            let mut client =
                rustls::ClientConnection::new(client_config.clone(), tls::peer_server_name())
                    .unwrap();
            let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
            transfer_until_done(&mut client, &mut server);
            assert!(!client.is_handshaking() && !server.is_handshaking());
        })
    });
    group.finish();
}

/// Moves TLS records between the two ends until both finish the handshake.
fn transfer_until_done(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) {
    let mut buffer = Vec::with_capacity(16 * 1024);
    for _ in 0..16 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
        buffer.clear();
        while client.wants_write() {
            client.write_tls(&mut buffer).unwrap();
        }
        let mut slice = buffer.as_slice();
        while !slice.is_empty() {
            server.read_tls(&mut slice).unwrap();
        }
        server.process_new_packets().unwrap();
        buffer.clear();
        while server.wants_write() {
            server.write_tls(&mut buffer).unwrap();
        }
        let mut slice = buffer.as_slice();
        while !slice.is_empty() {
            client.read_tls(&mut slice).unwrap();
        }
        client.process_new_packets().unwrap();
    }
    panic!("handshake did not finish");
}

criterion_group!(benches, verification, handshake);
criterion_main!(benches);
