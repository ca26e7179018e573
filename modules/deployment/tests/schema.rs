//! Schema and decoding: each kind of bad document gets its own error.

use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use zeronode_deployment::{decode, hex, sign_value, DeleteOrder, Deployment, DocError, Grant};

fn twin(n: u8) -> String {
    hex::encode(SigningKey::from_bytes(&[n; 32]).verifying_key().as_bytes())
}

fn good() -> Value {
    json!({
        "kind": "deployment", "id": "d1", "version": 1, "twin": twin(1),
        "expiration": 4102444800u64,
        "signature_requirement": {"requests": [{"twin": twin(1), "weight": 1, "required": true}], "threshold": 1},
        "workloads": [
            {"name": "net", "type": "network", "version": 1, "data": {"subnet": "10.1.0.0/24"}},
            {"name": "vol", "type": "volume", "version": 1, "data": {"size": 1048576}},
            {"name": "db", "type": "zdb", "version": 1, "data": {"size": 1048576, "mode": "user"}},
            {"name": "web", "type": "container", "version": 1,
             "data": {"image": "alpine", "cpu": 1, "memory": 268435456, "network": "net",
                      "mounts": [{"volume": "vol", "path": "/data"}], "entrypoint": "/bin/sh"}}
        ]
    })
}

fn code(v: &Value) -> &'static str {
    match decode::<Deployment>(serde_json::to_vec(v).unwrap().as_slice()) {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = good();
    f(&mut v);
    v
}

#[test]
fn good_documents_decode() {
    let mut v = good();
    assert_eq!(code(&v), "ok");
    sign_value(&mut v, &SigningKey::from_bytes(&[1; 32])).unwrap();
    let p = decode::<Deployment>(serde_json::to_vec(&v).unwrap().as_slice()).unwrap();
    assert_eq!(p.doc.workloads.len(), 4);
    let u = p.doc.usage();
    assert_eq!(
        (u.cpu, u.memory, u.disk, u.count),
        (1, 268435456, 2 << 20, 4)
    );
}

#[test]
fn container_image_archive_decodes() {
    let v = with(|v| {
        v["workloads"][3]["data"]["image"] =
            json!({"url": "http://10.0.2.2:8000/web.tar", "sha256": "ab".repeat(32)});
        v["workloads"][3]["data"]["mounts"][0]["readonly"] = true.into();
    });
    assert_eq!(code(&v), "ok");
}

#[test]
fn a_vm_counts_against_the_quota_and_needs_its_volumes_and_network() {
    let vm = json!({"name": "vm", "type": "vm", "version": 1,
        "data": {"kernel": {"url": "http://h/k", "sha256": "ab".repeat(32)}, "cpu": 2,
                 "memory": 134217728, "network": "net",
                 "disks": [{"volume": "vol", "size": 8388608}]}});
    let v = with(|v| v["workloads"].as_array_mut().unwrap().push(vm.clone()));
    assert_eq!(code(&v), "ok");
    let p = decode::<Deployment>(serde_json::to_vec(&v).unwrap().as_slice()).unwrap();
    let u = p.doc.usage();
    assert_eq!((u.cpu, u.memory, u.count), (3, 268435456 + 134217728, 5));
    for (what, f) in [
        (
            "no cpu",
            Box::new(|d: &mut Value| d["cpu"] = 0.into()) as Box<dyn Fn(&mut Value)>,
        ),
        (
            "unknown network",
            Box::new(|d: &mut Value| d["network"] = "nope".into()),
        ),
        (
            "unknown volume",
            Box::new(|d: &mut Value| d["disks"][0]["volume"] = "nope".into()),
        ),
        (
            "bad disk member",
            Box::new(|d: &mut Value| d["disks"][0]["bogus"] = 1.into()),
        ),
    ] {
        let mut w = vm.clone();
        f(&mut w["data"]);
        let v = with(|v| v["workloads"].as_array_mut().unwrap().push(w));
        assert_eq!(code(&v), "schema_invalid", "{what}");
    }
}

#[test]
fn each_schema_rule_refuses() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "image archive without sha256",
            with(|v| v["workloads"][3]["data"]["image"] = json!({"url": "http://h/x.tar"})),
            "schema_invalid",
        ),
        (
            "image archive sha256 not 64 hex",
            with(|v| {
                v["workloads"][3]["data"]["image"] =
                    json!({"url": "http://h/x.tar", "sha256": "abc"})
            }),
            "schema_invalid",
        ),
        (
            "mount path relative",
            with(|v| v["workloads"][3]["data"]["mounts"][0]["path"] = "data".into()),
            "schema_invalid",
        ),
        (
            "mount of a volume not in the deployment",
            with(|v| v["workloads"][3]["data"]["mounts"][0]["volume"] = "other".into()),
            "schema_invalid",
        ),
        (
            "mount naming a network, not a volume",
            with(|v| v["workloads"][3]["data"]["mounts"][0]["volume"] = "net".into()),
            "schema_invalid",
        ),
        (
            "wrong kind",
            with(|v| v["kind"] = "grant".into()),
            "schema_invalid",
        ),
        (
            "bad id",
            with(|v| v["id"] = "Has Space".into()),
            "schema_invalid",
        ),
        (
            "version 0",
            with(|v| v["version"] = 0.into()),
            "schema_invalid",
        ),
        (
            "version 2^53",
            with(|v| v["version"] = (1u64 << 53).into()),
            "schema_invalid",
        ),
        (
            "negative version",
            with(|v| v["version"] = (-1).into()),
            "schema_invalid",
        ),
        (
            "float version",
            with(|v| v["version"] = 1.5.into()),
            "schema_invalid",
        ),
        (
            "twin not hex",
            with(|v| v["twin"] = "zz".into()),
            "schema_invalid",
        ),
        (
            "twin upper hex",
            with(|v| v["twin"] = twin(1).to_uppercase().into()),
            "schema_invalid",
        ),
        (
            "unknown member",
            with(|v| v["extra"] = 1.into()),
            "schema_invalid",
        ),
        (
            "missing workloads",
            with(|v| {
                v.as_object_mut().unwrap().remove("workloads");
            }),
            "schema_invalid",
        ),
        (
            "no workloads",
            with(|v| v["workloads"] = json!([])),
            "schema_invalid",
        ),
        (
            "threshold over weights",
            with(|v| v["signature_requirement"]["threshold"] = 2.into()),
            "schema_invalid",
        ),
        (
            "threshold 0",
            with(|v| v["signature_requirement"]["threshold"] = 0.into()),
            "schema_invalid",
        ),
        (
            "duplicate workload",
            with(|v| {
                let w = v["workloads"][0].clone();
                v["workloads"].as_array_mut().unwrap().push(w);
            }),
            "schema_invalid",
        ),
        (
            "bad subnet",
            with(|v| v["workloads"][0]["data"]["subnet"] = "10.1.0.0/33".into()),
            "schema_invalid",
        ),
        (
            "tiny volume",
            with(|v| v["workloads"][1]["data"]["size"] = 10.into()),
            "schema_invalid",
        ),
        (
            "volume extra data",
            with(|v| v["workloads"][1]["data"]["x"] = 1.into()),
            "schema_invalid",
        ),
        (
            "container without cpu",
            with(|v| {
                v["workloads"][3]["data"]
                    .as_object_mut()
                    .unwrap()
                    .remove("cpu");
            }),
            "schema_invalid",
        ),
        (
            "container on missing network",
            with(|v| v["workloads"][3]["data"]["network"] = "nope".into()),
            "schema_invalid",
        ),
        (
            "unknown type",
            with(|v| v["workloads"][1]["type"] = "kubernetes".into()),
            "unknown_workload_type",
        ),
        (
            "bad signature hex",
            with(|v| v["signatures"] = json!([{"twin": twin(1), "signature": "00"}])),
            "schema_invalid",
        ),
    ];
    for (what, doc, want) in cases {
        assert_eq!(code(&doc), want, "{what}");
    }
}

#[test]
fn malformed_input() {
    for bad in [
        &b""[..],
        b"{",
        b"[1]",
        b"null",
        b"{\"kind\":\"deployment\",\"kind\":\"deployment\"}",
        b"\xff\xfe",
        b"{} {}",
    ] {
        let e = decode::<Deployment>(bad).unwrap_err();
        assert_eq!(
            e.code(),
            "malformed_json",
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn grants_and_delete_orders() {
    let g = json!({"kind": "grant", "twin": twin(2), "version": 1, "expiration": 4102444800u64,
        "quota": {"cpu": 2, "memory": 1073741824, "disk": 10737418240u64, "count": 10}});
    assert!(decode::<Grant>(g.to_string().as_bytes()).is_ok());
    let mut g2 = g.clone();
    g2["quota"]["gpu"] = 1.into();
    assert_eq!(
        decode::<Grant>(g2.to_string().as_bytes())
            .unwrap_err()
            .code(),
        "schema_invalid"
    );
    let d = json!({"kind": "delete", "id": "d1", "version": 2, "twin": twin(1)});
    assert!(decode::<DeleteOrder>(d.to_string().as_bytes()).is_ok());
    // A deployment is not a delete order, nor a grant.
    assert!(matches!(
        decode::<DeleteOrder>(good().to_string().as_bytes()),
        Err(DocError::Schema(_))
    ));
}
