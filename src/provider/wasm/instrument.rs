//! Instruments a core wasm module for code contexts, as wizer does: every
//! defined memory, global and table is exported under a reserved name, so
//! that the host can copy an instance's whole state out and into a fresh
//! instance of the same compiled program; and the functions a context's
//! driver calls (found by name in the module's `name` section) are exported
//! too. Nothing else changes: every section but the export section is
//! copied byte for byte, so the code and its behaviour are the original's.

use std::collections::HashMap;

use anyhow::{Context, bail};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, KnownCustom, Name, Parser, Payload, TypeRef};

/// Prefixes of the names the instrumented state is exported under.
pub const MEMORY_PREFIX: &str = "__stacyvm_memory_";
pub const GLOBAL_PREFIX: &str = "__stacyvm_global_";
pub const TABLE_PREFIX: &str = "__stacyvm_table_";

/// What the instrumented module exposes beyond the original.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instrumented {
    pub wasm: Vec<u8>,
    /// Defined memories, globals (mutable ones only: the rest cannot change)
    /// and tables, by their index in their own index space.
    pub memories: Vec<u32>,
    pub globals: Vec<u32>,
    pub tables: Vec<u32>,
}

/// Adds the state exports and exports `functions` by their names in the
/// `name` section. Fails when a function is missing, or when the module
/// imports a memory, a mutable global or a table (state the host could not
/// see from inside the instance).
pub fn instrument(wasm: &[u8], functions: &[&str]) -> anyhow::Result<Instrumented> {
    let mut imported = (0u32, 0u32, 0u32, 0u32); // funcs, memories, globals, tables
    let mut defined = (0u32, 0u32, 0u32); // memories, tables, globals
    let mut mutable_globals = vec![];
    let mut exports: Vec<(String, ExternalKind, u32)> = vec![];
    let mut names: HashMap<String, u32> = HashMap::new();
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = vec![];
    let mut export_at = None;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.context("the module cannot be parsed")?;
        if let Payload::Version { encoding, .. } = &payload
            && *encoding != wasmparser::Encoding::Module
        {
            bail!("only core modules can be instrumented");
        }
        match &payload {
            Payload::ImportSection(reader) => {
                for imports in reader.clone() {
                    for import in imports?.into_iter() {
                        let (_, import) = import?;
                        match import.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => imported.0 += 1,
                            TypeRef::Memory(_) => bail!("the module imports a memory"),
                            TypeRef::Table(_) => bail!("the module imports a table"),
                            TypeRef::Global(g) if g.mutable => bail!("the module imports a mutable global"),
                            TypeRef::Global(_) => imported.2 += 1,
                            TypeRef::Tag(_) => {}
                        }
                    }
                }
            }
            Payload::MemorySection(reader) => defined.0 = reader.count(),
            Payload::TableSection(reader) => defined.1 = reader.count(),
            Payload::GlobalSection(reader) => {
                for (i, global) in reader.clone().into_iter().enumerate() {
                    if global?.ty.mutable {
                        mutable_globals.push(imported.2 + i as u32);
                    }
                }
                defined.2 = reader.count();
            }
            Payload::ExportSection(reader) => {
                for export in reader.clone() {
                    let export = export?;
                    exports.push((export.name.to_string(), export.kind, export.index));
                }
            }
            Payload::CustomSection(custom) => {
                if let KnownCustom::Name(reader) = custom.as_known() {
                    for name in reader {
                        if let Ok(Name::Function(map)) = name {
                            for naming in map {
                                let naming = naming?;
                                names.insert(naming.name.to_string(), naming.index);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            if id == wasm_encoder::SectionId::Export as u8 {
                export_at = Some(sections.len());
            }
            sections.push((id, range));
        }
    }
    let _ = imported.0;
    let mut out = Instrumented {
        memories: (imported.1..imported.1 + defined.0).collect(),
        globals: mutable_globals,
        tables: (imported.3..imported.3 + defined.1).collect(),
        ..Instrumented::default()
    };
    let mut section = ExportSection::new();
    for (name, kind, index) in &exports {
        if name.starts_with("__stacyvm_") {
            bail!("the module already exports the reserved name {name}");
        }
        section.export(name, export_kind(*kind), *index);
    }
    for &i in &out.memories {
        section.export(&format!("{MEMORY_PREFIX}{i}"), ExportKind::Memory, i);
    }
    for &i in &out.globals {
        section.export(&format!("{GLOBAL_PREFIX}{i}"), ExportKind::Global, i);
    }
    for &i in &out.tables {
        section.export(&format!("{TABLE_PREFIX}{i}"), ExportKind::Table, i);
    }
    for function in functions {
        if exports.iter().any(|(name, ..)| name == function) {
            continue;
        }
        let Some(&index) = names.get(*function) else {
            bail!("the module has no function named {function}");
        };
        section.export(function, ExportKind::Func, index);
    }
    let Some(export_at) = export_at else {
        bail!("the module has no export section");
    };
    let mut module = Module::new();
    for (i, (id, range)) in sections.iter().enumerate() {
        if i == export_at {
            module.section(&section);
        } else {
            module.section(&RawSection {
                id: *id,
                data: &wasm[range.clone()],
            });
        }
    }
    out.wasm = module.finish();
    Ok(out)
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with a memory, a mutable and a constant global, a table and
    /// a named function that is not exported.
    fn sample() -> Vec<u8> {
        let mut module = Module::new();
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], [wasm_encoder::ValType::I32]);
        module.section(&types);
        let mut funcs = wasm_encoder::FunctionSection::new();
        funcs.function(0);
        module.section(&funcs);
        let mut tables = wasm_encoder::TableSection::new();
        tables.table(wasm_encoder::TableType {
            element_type: wasm_encoder::RefType::FUNCREF,
            minimum: 1,
            maximum: None,
            table64: false,
            shared: false,
        });
        module.section(&tables);
        let mut memories = wasm_encoder::MemorySection::new();
        memories.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut globals = wasm_encoder::GlobalSection::new();
        for mutable in [true, false] {
            globals.global(
                wasm_encoder::GlobalType {
                    val_type: wasm_encoder::ValType::I32,
                    mutable,
                    shared: false,
                },
                &wasm_encoder::ConstExpr::i32_const(7),
            );
        }
        module.section(&globals);
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        module.section(&exports);
        let mut code = wasm_encoder::CodeSection::new();
        let mut f = wasm_encoder::Function::new([]);
        f.instructions().global_get(0).end();
        code.function(&f);
        module.section(&code);
        let mut names = wasm_encoder::NameSection::new();
        let mut map = wasm_encoder::NameMap::new();
        map.append(0, "secret_answer");
        names.functions(&map);
        module.section(&names);
        module.finish()
    }

    #[test]
    fn every_memory_mutable_global_and_table_is_exported_and_the_rest_is_unchanged() {
        let out = instrument(&sample(), &["secret_answer"]).unwrap();
        assert_eq!((out.memories, out.globals, out.tables), (vec![0], vec![0], vec![0]));
        let mut exports = vec![];
        for payload in Parser::new(0).parse_all(&out.wasm) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                for e in reader {
                    let e = e.unwrap();
                    exports.push((e.name.to_string(), e.kind, e.index));
                }
            }
        }
        assert_eq!(
            exports,
            vec![
                ("memory".to_string(), ExternalKind::Memory, 0),
                ("__stacyvm_memory_0".to_string(), ExternalKind::Memory, 0),
                ("__stacyvm_global_0".to_string(), ExternalKind::Global, 0),
                ("__stacyvm_table_0".to_string(), ExternalKind::Table, 0),
                ("secret_answer".to_string(), ExternalKind::Func, 0),
            ]
        );
        wasmparser::Validator::new().validate_all(&out.wasm).unwrap();
    }

    #[test]
    fn a_missing_function_or_a_component_is_refused() {
        let err = instrument(&sample(), &["nope"]).unwrap_err();
        assert_eq!(err.to_string(), "the module has no function named nope");
        let component = wasm_encoder::Component::new().finish();
        let err = instrument(&component, &[]).unwrap_err();
        assert_eq!(err.to_string(), "only core modules can be instrumented");
    }
}
