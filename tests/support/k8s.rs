//! A stand-in for a Kubernetes cluster's service-account issuer: an RSA key
//! made here, its JWKS (what `kubectl get --raw /openid/v1/jwks` prints),
//! and projected service-account tokens signed with it in the shape the API
//! server issues them, so the real `appid authority serve --k8s-*` can be
//! tested without a cluster.

/// The `iss` of the tokens (most clusters' default).
pub const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience `appid inject` asks the kubelet for.
pub const K8S_AUDIENCE: &str = "appid-authority";

/// The test cluster's service-account issuer: an RSA key and its JWKS.
pub struct Cluster {
    key: aws_lc_rs::rsa::KeyPair,
    pub jwks: String,
}

/// One pod a token is bound to.
pub struct Pod<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
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

    /// A token as the kubelet mounts it for pod `pod` of `ns`/`sa`, valid
    /// ten minutes from now, for `audience`.
    pub fn token(&self, ns: &str, sa: &str, pod: &str, audience: &str) -> String {
        let uid = format!("uid-{pod}");
        let pod = Pod {
            namespace: ns,
            service_account: sa,
            name: pod,
            uid: &uid,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.token_for(&pod, audience, now - 5)
    }

    /// A ten-minute token for `pod` and `audience` issued at `iat` (Unix
    /// seconds: one in the past makes an expired token).
    pub fn token_for(&self, pod: &Pod<'_>, audience: &str, iat: i64) -> String {
        let claims = serde_json::json!({
            "aud": [audience],
            "exp": iat + 600,
            "iat": iat,
            "iss": K8S_ISSUER,
            "jti": format!("jti-{}-{iat}", pod.name),
            "kubernetes.io": {
                "namespace": pod.namespace,
                "node": {"name": "node-1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
                "pod": {"name": pod.name, "uid": pod.uid},
                "serviceaccount": {
                    "name": pod.service_account,
                    "uid": format!("uid-sa-{}", pod.service_account),
                },
                "warnafter": iat + 600 - 7
            },
            "nbf": iat,
            "sub": format!("system:serviceaccount:{}:{}", pod.namespace, pod.service_account),
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
/// authority serve` for a cluster whose JWKS is in `jwks`.
pub fn authority_args(jwks: &std::path::Path) -> Vec<String> {
    vec![
        "--k8s-jwks".into(),
        jwks.to_str().expect("UTF-8 path").into(),
        "--k8s-issuer".into(),
        K8S_ISSUER.into(),
        "--k8s-audience".into(),
        K8S_AUDIENCE.into(),
    ]
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
