//! The dependency graph of services: what can start, and what is refused
//! because it names a missing service or sits on a cycle.

use std::collections::{BTreeMap, BTreeSet};

/// Why a service will not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MissingDependency {
        missing: String,
    },
    Cycle {
        path: Vec<String>,
    },
    /// A dependency, direct or not, was refused.
    DependsOnRefused {
        dependency: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MissingDependency { missing } => {
                write!(f, "depends on {missing:?}, which does not exist")
            }
            Refusal::Cycle { path } => write!(f, "dependency cycle: {}", path.join(" -> ")),
            Refusal::DependsOnRefused { dependency } => {
                write!(f, "depends on {dependency:?}, which was refused")
            }
        }
    }
}

/// Services refused, with the reason, given each service's `after` list.
pub fn refusals(after: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Refusal> {
    let mut refused = BTreeMap::new();
    for (name, deps) in after {
        if let Some(m) = deps.iter().find(|d| !after.contains_key(*d)) {
            refused.insert(
                name.clone(),
                Refusal::MissingDependency { missing: m.clone() },
            );
        }
    }
    // Cycles: depth-first search with colours; every service on a cycle is refused.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
    let mut stack: Vec<&str> = Vec::new();
    for start in after.keys() {
        visit(start, after, &mut state, &mut stack, &mut refused);
    }
    // Anything that depends on a refused service is refused too, to a fixed point.
    loop {
        let mut more = Vec::new();
        for (name, deps) in after {
            if refused.contains_key(name) {
                continue;
            }
            if let Some(d) = deps.iter().find(|d| refused.contains_key(*d)) {
                more.push((
                    name.clone(),
                    Refusal::DependsOnRefused {
                        dependency: d.clone(),
                    },
                ));
            }
        }
        if more.is_empty() {
            return refused;
        }
        refused.extend(more);
    }
}

fn visit<'a>(
    name: &'a str,
    after: &'a BTreeMap<String, Vec<String>>,
    state: &mut BTreeMap<&'a str, u8>,
    stack: &mut Vec<&'a str>,
    refused: &mut BTreeMap<String, Refusal>,
) {
    match state.get(name) {
        Some(2) => return,
        Some(1) => {
            let from = stack.iter().position(|s| *s == name).unwrap_or(0);
            let mut path: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
            path.push(name.to_string());
            for s in &stack[from..] {
                refused.insert(s.to_string(), Refusal::Cycle { path: path.clone() });
            }
            return;
        }
        _ => {}
    }
    state.insert(name, 1);
    stack.push(name);
    for d in after.get(name).into_iter().flatten() {
        if after.contains_key(d) {
            visit(d, after, state, stack, refused);
        }
    }
    stack.pop();
    state.insert(name, 2);
}

/// Reverse edges: for each service, the services that list it in `after`.
pub fn dependents(after: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> =
        after.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (name, deps) in after {
        for d in deps {
            if let Some(set) = out.get_mut(d) {
                set.insert(name.clone());
            }
        }
    }
    out
}

/// For each service (by index, `dependents` as reverse edges), how many
/// services wait for it directly or through others.
pub fn waited_on(dependents: &[Vec<usize>]) -> Vec<usize> {
    (0..dependents.len())
        .map(|start| {
            let mut seen = vec![false; dependents.len()];
            let mut todo = dependents[start].clone();
            let mut n = 0;
            while let Some(i) = todo.pop() {
                if !std::mem::replace(&mut seen[i], true) {
                    n += 1;
                    todo.extend_from_slice(&dependents[i]);
                }
            }
            n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn missing_and_cycles_are_refused_and_the_rest_is_not() {
        let g = graph(&[
            ("net", &[]),
            ("store", &["net"]),
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("after_cycle", &["a"]),
            ("orphan", &["ghost"]),
            ("after_orphan", &["orphan", "net"]),
        ]);
        let r = refusals(&g);
        assert!(!r.contains_key("net") && !r.contains_key("store"));
        assert_eq!(
            r["orphan"],
            Refusal::MissingDependency {
                missing: "ghost".into()
            }
        );
        assert_eq!(
            r["after_orphan"],
            Refusal::DependsOnRefused {
                dependency: "orphan".into()
            }
        );
        for s in ["a", "b", "c"] {
            let Refusal::Cycle { path } = &r[s] else {
                panic!("{s}: {:?}", r[s])
            };
            assert_eq!(path.len(), 4, "{path:?}");
            assert!(r[s].to_string().contains("a -> b -> c -> a"), "{}", r[s]);
        }
        assert_eq!(
            r["after_cycle"],
            Refusal::DependsOnRefused {
                dependency: "a".into()
            }
        );
    }

    #[test]
    fn self_loop() {
        let r = refusals(&graph(&[("x", &["x"])]));
        assert_eq!(r["x"].to_string(), "dependency cycle: x -> x");
    }

    #[test]
    fn reverse_edges() {
        let d = dependents(&graph(&[
            ("net", &[]),
            ("a", &["net"]),
            ("b", &["net", "a"]),
        ]));
        assert_eq!(d["net"], BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert!(d["b"].is_empty());
    }

    #[test]
    fn waited_on_counts_every_service_that_waits_directly_or_not() {
        // 0 <- 1 <- 2, 0 <- 3, 1 <- 3; 4 alone; 5 <-> 6 (a cycle, refused
        // elsewhere, still counted once each).
        let dependents = vec![
            vec![1, 3],
            vec![2, 3],
            vec![],
            vec![],
            vec![],
            vec![6],
            vec![5],
        ];
        assert_eq!(waited_on(&dependents), vec![3, 2, 0, 0, 0, 2, 2]);
    }
}
