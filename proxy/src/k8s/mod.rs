//! Kubernetes manifests appid writes from scratch (as opposed to
//! [`crate::inject`], which edits the user's): the namespace's sidecar
//! ConfigMap ([`sidecar_config`], `appid inject config`) and the authority's
//! own deployment ([`authority`], `appid authority manifests`).
//!
//! Design bias: *a template you can read*. Each manifest is written as the
//! YAML text a person would write, with the few values that vary checked
//! first and then quoted (or written as literal blocks), so the source shows
//! the output. Everything here is pure: the commands read the files and
//! print; the tests validate the output with `kubernetes-validate --strict`
//! (`tests/k8s_manifests.rs`).

pub mod authority;
pub mod sidecar_config;
mod yaml;

/// A Kubernetes namespace name (RFC 1123 label).
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a Kubernetes namespace name: write lowercase letters, digits and '-' \
             (at most 63, starting and ending with a letter or digit), e.g. shop",
            namespace.escape_debug()
        ))
    }
}

/// An image reference, as far as it can be checked offline.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` is not an image reference; write one like registry.example/appid:1.0",
            image.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_images() {
        for good in ["shop", "a", "appid-system", "x1", &"a".repeat(63)] {
            assert!(check_namespace(good).is_ok(), "{good}");
        }
        for bad in ["", "Shop", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            let err = check_namespace(bad).unwrap_err();
            assert!(err.contains("namespace"), "{err}");
        }
        assert!(check_image("registry.example/appid:1.0").is_ok());
        assert!(check_image("a b").is_err());
        assert!(check_image("").is_err());
    }
}
