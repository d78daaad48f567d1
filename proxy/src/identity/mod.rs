//! Workload identity: the CA, issuance of AppID certificates, verification.
