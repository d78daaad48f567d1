//! The test cluster's service-account issuer, shared by the Kubernetes
//! attestation tests (`#[path = "k8s_cluster.rs"] mod k8s_cluster;`): an RSA
//! key, its JWKS, and projected tokens in the shape the API server issues.

#![allow(dead_code)]

pub const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const K8S_AUDIENCE: &str = "appid-authority";

/// The test cluster's service-account issuer: an RSA key and its JWKS.
pub struct Cluster {
    key: aws_lc_rs::rsa::KeyPair,
    pub jwks: String,
}

impl Cluster {
    pub fn new() -> Cluster {
        use aws_lc_rs::signature::KeyPair as _;
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public_key());
        let jwks = serde_json::json!({"keys": [{
            "use": "sig", "kty": "RSA", "kid": "cluster-key-1", "alg": "RS256",
            "n": b64(&public.n), "e": b64(&public.e),
        }]})
        .to_string();
        Cluster { key, jwks }
    }

    /// A token as the kubelet mounts it for pod `pod` (uid `uid-<pod>`) of
    /// `ns`/`sa`, valid ten minutes from now, for `audience`.
    pub fn token(&self, ns: &str, sa: &str, pod: &str, audience: &str) -> String {
        self.token_for_uid(ns, sa, pod, &format!("uid-{pod}"), audience)
    }

    /// [`Self::token`] for a pod with uid `uid`.
    pub fn token_for_uid(
        &self,
        ns: &str,
        sa: &str,
        pod: &str,
        uid: &str,
        audience: &str,
    ) -> String {
        let iat = time::OffsetDateTime::now_utc().unix_timestamp() - 5;
        self.token_issued_at(ns, sa, pod, uid, audience, iat)
    }

    /// [`Self::token_for_uid`], issued at `iat` (Unix seconds; an hour ago
    /// makes an expired token).
    pub fn token_issued_at(
        &self,
        ns: &str,
        sa: &str,
        pod: &str,
        uid: &str,
        audience: &str,
        iat: i64,
    ) -> String {
        let claims = serde_json::json!({
            "aud": [audience],
            "exp": iat + 600,
            "iat": iat,
            "iss": K8S_ISSUER,
            "jti": format!("jti-{pod}-{iat}"),
            "kubernetes.io": {
                "namespace": ns,
                "node": {"name": "node-1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
                "pod": {"name": pod, "uid": uid},
                "serviceaccount": {"name": sa, "uid": format!("uid-sa-{sa}")},
                "warnafter": iat + 600 - 7
            },
            "nbf": iat,
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
        });
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","kid":"cluster-key-1"}"#),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        format!("{input}.{}", b64(&signature))
    }
}

/// The `--k8s-jwks`, `--k8s-issuer`, `--k8s-audience` arguments of `appid
/// authority serve` for a cluster whose JWKS is in the file `jwks`.
pub fn authority_args(jwks: &std::path::Path) -> Vec<String> {
    let jwks = jwks.to_str().expect("UTF-8 path");
    [
        "--k8s-jwks",
        jwks,
        "--k8s-issuer",
        K8S_ISSUER,
        "--k8s-audience",
        K8S_AUDIENCE,
    ]
    .map(String::from)
    .to_vec()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
