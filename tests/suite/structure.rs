//! The crate's layering (issue 15): no module imports a sibling that imports it back, at any
//! level (formats → quant → model → runtime → calib/methods/eval → convert → cli at the top).
//! `tools/module_graph.py` draws the graph; these tests run it on the crate and on a small
//! made-up crate with a cycle, so the check itself is known to bite.

use std::path::Path;
use std::process::Command;

use crate::common;

fn module_graph(src: &Path) -> (bool, String) {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(py)
        .arg(common::root().join("tools/module_graph.py"))
        .arg("--src")
        .arg(src)
        .output()
        .expect("cannot run python3");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn module_import_graph_has_no_cycles() {
    let (ok, report) = module_graph(&common::root().join("src"));
    assert!(ok && report.contains("no import cycles"), "{report}");
}

#[test]
fn module_graph_finds_a_cycle_between_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    // a::x uses b (through a `use` group); b uses a::y in an expression; a's children use
    // their parent (not a layering edge). A `crate::b` inside a string or comment is no edge.
    std::fs::write(src.join("a/mod.rs"), "pub mod x;\npub mod y;\n").unwrap();
    std::fs::write(src.join("a/x.rs"), "use crate::{b::{self, Thing}};\nuse super::y;\n").unwrap();
    std::fs::write(src.join("a/y.rs"), "// crate::b::Thing\nconst S: &str = \"crate::b\";\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct Thing;\nfn f() { crate::a::y::g() }\n").unwrap();
    let (ok, report) = module_graph(src);
    assert!(!ok, "{report}");
    assert!(report.contains("CYCLE under crate: {a, b}"), "{report}");
    assert!(report.contains("a::x -> b") && report.contains("b -> a::y"), "{report}");
    // Without b's call back into a, the graph is acyclic (and y's string/comment add nothing).
    std::fs::write(src.join("b.rs"), "pub struct Thing;\n").unwrap();
    let (ok, report) = module_graph(src);
    assert!(ok && report.contains("no import cycles"), "{report}");
}
