//! The image's service files (image/services/) are valid for this init: a
//! bad one would only show at boot, as a service left out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use zeronode_init::supervisor::graph;
use zeronode_init::supervisor::service::Service;

fn image_services() -> Vec<Service> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../image/services");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
        .iter()
        .map(|p| Service::load(p, "root:x:0:0:root:/root:/bin/sh\n").unwrap())
        .collect()
}

#[test]
fn every_image_service_file_loads_and_its_order_holds() {
    let services = image_services();
    let after: BTreeMap<String, Vec<String>> = services
        .iter()
        .map(|s| (s.name.clone(), s.after.clone()))
        .collect();
    assert!(
        graph::refusals(&after).is_empty(),
        "{:?}",
        graph::refusals(&after)
    );
    // Nothing the ready line waits for waits for the ready line.
    let by_name: BTreeMap<&str, &Service> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut todo: Vec<&str> = services
        .iter()
        .filter(|s| s.ready)
        .map(|s| s.name.as_str())
        .collect();
    assert!(todo.contains(&"provision"), "{todo:?}");
    while let Some(name) = todo.pop() {
        let s = by_name[name];
        assert!(!s.after_ready, "{name}: the ready line needs it");
        todo.extend(s.after.iter().map(String::as_str));
    }
}
