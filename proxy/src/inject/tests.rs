use super::*;

#[test]
fn smoke() {
    let input = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/k8s/shared-volume.yaml")).unwrap();
    let out = inject(&input, &InjectOptions::default()).unwrap();
    println!("{}", out.yaml);
}
