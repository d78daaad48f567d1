//! The identities this sidecar speaks as: its own, and one per service of
//! `services:` (several services on one host, each with its own AppID).
//!
//! Design bias: *a connection's local identity is fixed where it enters,
//! by what the kernel says, never looked up later*. Outbound, it is the
//! listener the connection arrived on (capture rules send each service's
//! sockets to its own listener, by owner uid or cgroup); inbound, the app
//! port it is for (the service listening there). From then on everything
//! that speaks for us on that connection comes from that one [`Local`]: the
//! certificate presented in the handshake, the tunnels it may share (each
//! identity pools its own, so one service's connection never rides on a
//! tunnel that authenticated another), and the claims audit lines name as
//! `local_appid`. Trust (the bundle, revocations) is the sidecar's and is
//! shared by all of them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::pool::TunnelPool;
use super::tls::{self, LocalIdentity, TlsState, Trust};
use crate::config::TunnelMode;

/// One identity the sidecar holds, with what uses it.
pub struct Local {
    /// `None`: the sidecar's own identity; `Some(name)`: the service's.
    pub service: Option<String>,
    pub tls: Arc<TlsState>,
    /// Server side of mesh handshakes presenting this identity.
    pub acceptor: TlsAcceptor,
    /// Client side of mesh handshakes presenting this identity.
    pub connector: TlsConnector,
    /// Connections to peer sidecars made as this identity.
    pub tunnels: TunnelPool,
}

impl Local {
    pub fn new(
        service: Option<String>,
        identity: LocalIdentity,
        trust: Arc<Trust>,
        mode: TunnelMode,
    ) -> Arc<Local> {
        let state = TlsState::sharing(identity, trust);
        Arc::new(Local {
            service,
            acceptor: TlsAcceptor::from(tls::server_config(state.clone(), mode)),
            connector: TlsConnector::from(tls::client_config(state.clone(), mode)),
            tunnels: TunnelPool::new(mode),
            tls: state,
        })
    }

    /// The current certificate and claims.
    pub fn identity(&self) -> Arc<LocalIdentity> {
        self.tls.identity.load_full()
    }

    /// For logs: the service's name, or `sidecar` for the sidecar's own.
    pub fn label(&self) -> &str {
        self.service.as_deref().unwrap_or("sidecar")
    }
}

/// Every identity the sidecar holds, and which one each connection uses.
pub struct Locals {
    own: Arc<Local>,
    services: Vec<Arc<Local>>,
    by_inbound_port: HashMap<u16, Arc<Local>>,
}

impl Locals {
    /// The sidecar's own identity and its services' (each with the app
    /// ports it listens on).
    pub fn new(own: Arc<Local>, services: Vec<(Arc<Local>, Vec<u16>)>) -> Locals {
        let mut by_inbound_port = HashMap::new();
        for (local, ports) in &services {
            for port in ports {
                by_inbound_port.insert(*port, local.clone());
            }
        }
        Locals {
            own,
            services: services.into_iter().map(|(local, _)| local).collect(),
            by_inbound_port,
        }
    }

    /// The sidecar's own identity.
    pub fn own(&self) -> &Arc<Local> {
        &self.own
    }

    /// The identity an inbound connection to app port `port` is served
    /// with: the service listening there, else the sidecar's own.
    pub fn for_inbound_port(&self, port: u16) -> &Arc<Local> {
        self.by_inbound_port.get(&port).unwrap_or(&self.own)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Local>> {
        self.services
            .iter()
            .find(|l| l.service.as_deref() == Some(name))
    }

    /// All of them, the sidecar's own first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Local>> {
        std::iter::once(&self.own).chain(&self.services)
    }

    /// What the admin API's `/appid` shows: the sidecar's SPIFFE ID and
    /// claims, and each service's under `services`.
    pub fn admin_json(&self) -> serde_json::Value {
        let mut json = self.own.identity().admin_json();
        if !self.services.is_empty() {
            let services: serde_json::Map<String, serde_json::Value> = self
                .services
                .iter()
                .map(|l| (l.label().to_owned(), l.identity().admin_json()))
                .collect();
            json["services"] = serde_json::Value::Object(services);
        }
        json
    }

    /// When the first of our certificates expires (what an alert
    /// on `appid_certificate_expiry_seconds` is about).
    pub fn soonest_not_after(&self) -> i64 {
        self.all()
            .map(|l| l.tls.identity.load().not_after)
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{Ca, KeyAlg};
    use crate::identity::spiffe::SpiffeId;
    use crate::identity::verify::TrustBundle;
    use appid_policy::AppIdClaims;
    use appid_policy::claims::attestation;

    fn identity(ca: &Ca, bundle: &TrustBundle, path: &str) -> LocalIdentity {
        let id = SpiffeId::parse(&format!("spiffe://prod.example/{path}")).unwrap();
        let claims = AppIdClaims::new(id.as_str(), attestation::JOIN_TOKEN);
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let issued = ca
            .issue(&id, &claims, &key, time::Duration::hours(1))
            .unwrap();
        LocalIdentity::from_pem(
            "cert",
            issued.pem.as_bytes(),
            "key",
            key.serialize_pem().as_bytes(),
            bundle,
        )
        .unwrap()
    }

    #[test]
    fn inbound_ports_pick_their_service_and_the_rest_is_ours() {
        let temp = tempfile::tempdir().unwrap();
        let ca = Ca::init(&temp.path().join("ca"), "prod.example", KeyAlg::EcdsaP256).unwrap();
        let bundle = TrustBundle::new(
            "ca",
            std::slice::from_ref(ca.cert_der()),
            vec!["prod.example".into()],
        )
        .unwrap();
        let trust = Trust::new(bundle.clone());
        let local = |service: Option<&str>, path: &str| {
            Local::new(
                service.map(str::to_owned),
                identity(&ca, &bundle, path),
                trust.clone(),
                TunnelMode::Pooled,
            )
        };
        let locals = Locals::new(
            local(None, "vm1"),
            vec![
                (local(Some("billing"), "vm1/billing"), vec![8081, 9090]),
                (local(Some("reports"), "vm1/reports"), vec![8082]),
            ],
        );
        let id = |l: &Arc<Local>| l.identity().id.to_string();
        assert_eq!(
            id(locals.for_inbound_port(8081)),
            "spiffe://prod.example/vm1/billing"
        );
        assert_eq!(
            id(locals.for_inbound_port(9090)),
            "spiffe://prod.example/vm1/billing"
        );
        assert_eq!(
            id(locals.for_inbound_port(8082)),
            "spiffe://prod.example/vm1/reports"
        );
        assert_eq!(id(locals.for_inbound_port(22)), "spiffe://prod.example/vm1");
        assert!(locals.service("reports").is_some());
        assert!(locals.service("nope").is_none());
        let all: Vec<_> = locals.all().map(|l| l.label().to_owned()).collect();
        assert_eq!(all, ["sidecar", "billing", "reports"]);
        let json = locals.admin_json();
        assert_eq!(json["id"], "spiffe://prod.example/vm1");
        assert_eq!(
            json["services"]["billing"]["id"],
            "spiffe://prod.example/vm1/billing"
        );
        // One trust for all: a revocation is everyone's.
        for l in locals.all() {
            assert!(Arc::ptr_eq(&l.tls.trust, &trust));
        }
    }
}
