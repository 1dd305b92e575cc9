//! The three QA modes (and the router between them), shipped as graphs in the binary.

use std::collections::BTreeMap;

use crate::definition::Graph;
use crate::validate::{check, parse, Catalog};

/// The built-in definitions' sources, in dependency order.
pub const SOURCES: [(&str, &str); 4] = [
    ("qa-llm", include_str!("../builtin/qa-llm.yaml")),
    ("qa-kb", include_str!("../builtin/qa-kb.yaml")),
    ("qa-db", include_str!("../builtin/qa-db.yaml")),
    ("qa-auto", include_str!("../builtin/qa-auto.yaml")),
];

/// Whether `name` is a built-in graph's.
pub fn is_builtin(name: &str) -> bool {
    SOURCES.iter().any(|(n, _)| *n == name)
}

/// The built-in graphs by name. They name their models through inputs, so they check
/// against any catalog.
pub fn builtins() -> BTreeMap<String, Graph> {
    let mut out = BTreeMap::new();
    for (name, source) in SOURCES {
        let catalog = Catalog { graphs: out.clone(), ..Catalog::default() };
        // Checked by this module's test; a broken built-in is left out rather than panic.
        if let Ok(g) = parse(source).map_err(|p| vec![p]).and_then(|raw| check(&raw, &catalog)) {
            out.insert(name.to_string(), g);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses_and_checks() {
        let mut catalog = Catalog::default();
        for (name, source) in SOURCES {
            let raw = parse(source).unwrap_or_else(|p| panic!("{name}: {p}"));
            let g = check(&raw, &catalog).unwrap_or_else(|p| panic!("{name}: {p:?}"));
            assert_eq!(g.name, name);
            catalog.graphs.insert(name.to_string(), g);
        }
        assert_eq!(builtins().len(), 4);
    }
}
