//! Compiles `resources/seccomp/<target arch>.json` (seccompiler's JSON format) into BPF
//! programs at build time; `src/lib.rs` includes them as `DEFAULT_FILTERS`.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let rules = root
        .join("../../resources/seccomp")
        .join(format!("{arch}.json"));
    println!("cargo:rerun-if-changed={}", rules.display());
    let target = match seccompiler::TargetArch::try_from(arch.as_str()) {
        Ok(t) => t,
        Err(e) => panic!("no seccomp filters for target architecture {arch}: {e:?}"),
    };
    let file = std::fs::File::open(&rules)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", rules.display()));
    let map = seccompiler::compile_from_json(file, target)
        .unwrap_or_else(|e| panic!("{}: {e}", rules.display()));
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = String::from(
        "/// The default filters, by thread kind: (code, jt, jf, k) per BPF instruction.\n",
    );
    out.push_str("pub static DEFAULT_FILTERS: &[(&str, &[Insn])] = &[\n");
    for name in names {
        let _ = writeln!(out, "    ({name:?}, &[");
        for i in &map[name] {
            let _ = writeln!(out, "        ({}, {}, {}, {}),", i.code, i.jt, i.jf, i.k);
        }
        out.push_str("    ]),\n");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("filters.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
