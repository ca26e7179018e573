//! The build's edits to Debian's module files, each declared in
//! zeronode.toml's [kernel] table: signatures off, the table of inline
//! static-call sites emptied, the function-tracing sites NOPped. Each edit
//! keeps the file's length and layout (sizes and bytes change in place).

use std::collections::HashMap;
use std::path::Path;

use goblin::elf::section_header::{SHT_REL, SHT_RELA, SHT_SYMTAB};
use goblin::elf::Elf;

use crate::error::{Error, Result};

/// What the kernel's `sign-file` appends to a module: the PKCS#7
/// signature, a 12-byte `struct module_signature` ending in the
/// signature's length (big-endian), and this marker.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// A module without its appended signature; unsigned bytes as they are.
/// The image's modules are covered by the pinned hash of the image they
/// ship in, and the kernel (not enforcing signatures) would load them
/// unsigned anyway: checking each one again is a SHA-256 over every byte
/// loaded, and under emulation that is a good part of loading.
pub fn unsigned(module: &[u8]) -> &[u8] {
    let Some(rest) = module.strip_suffix(SIGNATURE_MARKER) else {
        return module;
    };
    let Some(info_at) = rest.len().checked_sub(12) else {
        return module;
    };
    let len = u32::from_be_bytes([
        rest[info_at + 8],
        rest[info_at + 9],
        rest[info_at + 10],
        rest[info_at + 11],
    ]);
    match info_at.checked_sub(len as usize) {
        Some(end) => &module[..end],
        None => module,
    }
}

/// Empties a module's table of inline static-call sites and the
/// relocations that fill it in (both sections' sizes become 0; no byte
/// moves). Loading a module otherwise rewrites each listed call in place
/// with `text_poke_bp`, which stops every CPU three times a site: btrfs has
/// 529 sites, and under TCG that was a third of its load (~270 -> ~175 ms).
/// An unlisted call keeps going through the static call's trampoline,
/// which the kernel retargets on every update, so behaviour is the same.
pub fn without_static_call_sites(module: &mut [u8], path: &Path) -> Result<()> {
    let elf = parse(module, path)?;
    let name = |i: usize| elf.shdr_strtab.get_at(elf.section_headers[i].sh_name);
    let Some(sites) =
        (0..elf.section_headers.len()).find(|&i| name(i) == Some(".static_call_sites"))
    else {
        return Ok(());
    };
    let emptied: Vec<usize> = (0..elf.section_headers.len())
        .filter(|&i| {
            let s = &elf.section_headers[i];
            i == sites || (matches!(s.sh_type, SHT_RELA | SHT_REL) && s.sh_info as usize == sites)
        })
        .collect();
    for at in size_fields(&elf, &emptied, module.len(), path)? {
        module[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    }
    Ok(())
}

/// Empties a module's `.BTF` section: its bytes become zeros (which the
/// squashfs stores in next to nothing) and its size 0, so the loader finds
/// no type information and skips parsing it (btf_module_notify). Debian
/// builds with CONFIG_DEBUG_INFO_BTF_MODULES: every module carries the
/// types it defines (230 KB of btrfs's 3.9 MB), and each load parses and
/// checks all of them, type by type, under TCG on the way to ready.
pub fn without_btf(module: &mut [u8], path: &Path) -> Result<()> {
    let elf = parse(module, path)?;
    let Some(btf) = (0..elf.section_headers.len())
        .find(|&i| elf.shdr_strtab.get_at(elf.section_headers[i].sh_name) == Some(".BTF"))
    else {
        return Ok(());
    };
    let s = &elf.section_headers[btf];
    let body = (s.sh_offset as usize)
        .checked_add(s.sh_size as usize)
        .filter(|&end| end <= module.len())
        .map(|end| s.sh_offset as usize..end)
        .ok_or_else(|| elf_error(path, ".BTF lies outside the file".into()))?;
    let sizes = size_fields(&elf, &[btf], module.len(), path)?;
    module[body].fill(0);
    for at in sizes {
        module[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    }
    Ok(())
}

/// Where the sh_size field (8 bytes at offset 32 of an Elf64_Shdr) of each
/// of `sections` lies in the file, checked to be inside its `len` bytes.
fn size_fields(elf: &Elf<'_>, sections: &[usize], len: usize, path: &Path) -> Result<Vec<usize>> {
    let (shoff, shentsize) = (elf.header.e_shoff as usize, elf.header.e_shentsize as usize);
    sections
        .iter()
        .map(|&i| {
            i.checked_mul(shentsize)
                .and_then(|o| o.checked_add(32))
                .and_then(|o| shoff.checked_add(o))
                .filter(|at| at.checked_add(8).is_some_and(|end| end <= len))
                .ok_or_else(|| elf_error(path, format!("section header {i} lies outside the file")))
        })
        .collect()
}

/// The module's ELF, if it is a 64-bit little-endian one.
fn parse<'a>(module: &'a [u8], path: &Path) -> Result<Elf<'a>> {
    let elf = Elf::parse(module).map_err(|e| elf_error(path, format!("not a module: {e}")))?;
    if !elf.is_64 || !elf.little_endian {
        return Err(elf_error(path, "not a 64-bit little-endian module".into()));
    }
    Ok(elf)
}

fn elf_error(path: &Path, reason: String) -> Error {
    Error::Elf {
        path: path.to_path_buf(),
        reason,
    }
}

/// The kernel's 5-byte NOP on x86-64 (`nopl 0x0(%rax,%rax,1)`), what
/// `ftrace_make_nop` writes over each site.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const CALL: u8 = 0xe8;
const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const RELA_SIZE: usize = 24;

/// One Elf64_Rela entry, where it sits in the file.
struct Rela {
    at: usize,
    offset: u64,
    sym: usize,
    kind: u32,
    addend: i64,
}

/// NOPs every call site `__mcount_loc` lists and empties that table (and
/// its relocations; no byte moves). Returns how many sites went. A module
/// without the table is left alone; a listed site that is not a relocated
/// `call __fentry__` is an error naming it, and the module is then
/// unchanged.
///
/// Debian builds the kernel with `-mfentry` and dynamic ftrace: each
/// function of a module starts with `call __fentry__`, and `__mcount_loc`
/// lists those calls. Loading the module NOPs each one, then looks every
/// site up among the module's symbols to skip weak functions
/// (`test_for_valid_rec`: a scan of the whole symbol table a site, so
/// quadratic in the module's size), which under TCG was the largest part
/// of loading btrfs. Here each site gets the NOP the kernel would write,
/// its relocation becomes R_X86_64_NONE (which the loader skips), and the
/// table goes: the module runs the same code, but ftrace (the function
/// tracer, BPF fentry/fexit, live patches) cannot attach to its functions;
/// kprobes still can, through int3.
pub fn without_ftrace_sites(module: &mut [u8], path: &Path) -> Result<usize> {
    let Some(plan) = plan(module, path)? else {
        return Ok(0);
    };
    for &(site, reloc) in &plan.sites {
        module[site..site + 5].copy_from_slice(&NOP5);
        // r_info 0: R_X86_64_NONE against the null symbol.
        module[reloc + 8..reloc + 16].copy_from_slice(&0u64.to_le_bytes());
    }
    for at in plan.sizes {
        module[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    }
    Ok(plan.sites.len())
}

/// What to change, as file offsets, all checked to lie in the file.
struct Plan {
    /// Each site's call and its relocation entry.
    sites: Vec<(usize, usize)>,
    /// The sh_size fields of `__mcount_loc` and of its relocations.
    sizes: Vec<usize>,
}

fn plan(module: &[u8], path: &Path) -> Result<Option<Plan>> {
    let bad = |reason: String| elf_error(path, reason);
    let elf = parse(module, path)?;
    let headers = &elf.section_headers;
    let name = |i: usize| elf.shdr_strtab.get_at(headers[i].sh_name).unwrap_or("");
    let Some(table) = (0..headers.len()).find(|&i| name(i) == "__mcount_loc") else {
        return Ok(None);
    };
    let rela_of = |target: usize| {
        (0..headers.len())
            .find(|&i| headers[i].sh_type == SHT_RELA && headers[i].sh_info as usize == target)
    };
    let table_rela =
        rela_of(table).ok_or_else(|| bad("__mcount_loc has no relocation section".into()))?;
    let symtab = (0..headers.len())
        .find(|&i| headers[i].sh_type == SHT_SYMTAB)
        .ok_or_else(|| bad("no symbol table".into()))?;
    let entries = |i: usize| -> Result<Vec<Rela>> {
        let h = &headers[i];
        if h.sh_link as usize != symtab {
            return Err(bad(format!("{} uses another symbol table", name(i))));
        }
        let (start, len) = (h.sh_offset as usize, h.sh_size as usize);
        let bytes = start
            .checked_add(len)
            .and_then(|end| module.get(start..end))
            .filter(|_| len % RELA_SIZE == 0)
            .ok_or_else(|| bad(format!("{} lies outside the file", name(i))))?;
        Ok(bytes
            .chunks_exact(RELA_SIZE)
            .enumerate()
            .map(|(n, e)| {
                let word = |k: usize| u64::from_le_bytes(e[k..k + 8].try_into().unwrap_or([0; 8]));
                let info = word(8);
                Rela {
                    at: start + n * RELA_SIZE,
                    offset: word(0),
                    sym: (info >> 32) as usize,
                    kind: info as u32,
                    addend: word(16) as i64,
                }
            })
            .collect())
    };
    let sym = |i: usize| {
        elf.syms
            .get(i)
            .ok_or_else(|| bad(format!("relocation names symbol {i}, which does not exist")))
    };

    // Each site: (section, offset of the call in it).
    let mut sites = Vec::new();
    for r in entries(table_rela)? {
        let s = sym(r.sym)?;
        if r.kind != R_X86_64_64 {
            return Err(bad(format!("__mcount_loc relocation of type {}", r.kind)));
        }
        let at = s.st_value.wrapping_add(r.addend as u64);
        sites.push((s.st_shndx, at));
    }
    // The `call __fentry__` relocation of each site, by (section, offset).
    let mut calls: HashMap<(usize, u64), usize> = HashMap::new();
    let mut sections: Vec<usize> = sites.iter().map(|&(s, _)| s).collect();
    sections.sort_unstable();
    sections.dedup();
    for &section in &sections {
        let rela = rela_of(section)
            .ok_or_else(|| bad(format!("{} has no relocation section", name(section))))?;
        for r in entries(rela)? {
            let fentry = elf.strtab.get_at(sym(r.sym)?.st_name) == Some("__fentry__");
            if fentry && matches!(r.kind, R_X86_64_PLT32 | R_X86_64_PC32) {
                calls.insert((section, r.offset.wrapping_sub(1)), r.at);
            }
        }
    }
    // Check every site before changing a byte.
    let mut edits = Vec::with_capacity(sites.len());
    for &(section, at) in &sites {
        let place = || format!("{}+{at:#x}", name(section));
        let h = headers
            .get(section)
            .ok_or_else(|| bad(format!("site in section {section}, which does not exist")))?;
        let file_at = usize::try_from(h.sh_offset.saturating_add(at)).unwrap_or(usize::MAX);
        let code = module
            .get(file_at..file_at.saturating_add(5))
            .filter(|_| at.checked_add(5).is_some_and(|end| end <= h.sh_size))
            .ok_or_else(|| bad(format!("site {} lies outside its section", place())))?;
        if code != [CALL, 0, 0, 0, 0] {
            return Err(bad(format!("site {} is not an unrelocated call", place())));
        }
        let reloc = *calls
            .get(&(section, at))
            .ok_or_else(|| bad(format!("site {} does not call __fentry__", place())))?;
        edits.push((file_at, reloc));
    }
    let sizes = size_fields(&elf, &[table, table_rela], module.len(), path)?;
    Ok(Some(Plan {
        sites: edits,
        sizes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_elf::{relocatable, section_sizes, Section};

    /// A module's .text, .static_call_sites and the .rela section that
    /// targets it.
    fn module_with_static_call_sites() -> Vec<u8> {
        relocatable(&[
            Section::progbits(".text", vec![0x90; 16]),
            Section::progbits(".static_call_sites", vec![0xAA; 8]),
            Section::rela(".rela.static_call_sites", 0, 2, &[(0, 0, 0, 0)]),
        ])
    }

    #[test]
    fn static_call_sites_are_emptied_and_nothing_else_changes() {
        let module = module_with_static_call_sites();
        let sizes = section_sizes;
        let before = sizes(&module);
        assert_eq!(before[2], (".static_call_sites".into(), 8));
        let mut edited = module.clone();
        without_static_call_sites(&mut edited, Path::new("m.ko")).unwrap();
        let after = sizes(&edited);
        assert_eq!(after[2], (".static_call_sites".into(), 0));
        assert_eq!(after[3], (".rela.static_call_sites".into(), 0));
        assert_eq!(after[1], before[1]);
        assert_eq!(after[4], before[4]);
        assert_eq!(edited.len(), module.len());
        let changed = module.iter().zip(&edited).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 2, "only the two sizes' low bytes differ");

        // A module without the table is left as it is; a non-ELF is refused.
        let mut plain = module.clone();
        let name = b"\0.static_call_sites\0"; // its own name in .shstrtab
        let name_at = plain.windows(name.len()).position(|w| w == name).unwrap();
        plain[name_at + 2] = b'S';
        let copy = plain.clone();
        without_static_call_sites(&mut plain, Path::new("m.ko")).unwrap();
        assert_eq!(plain, copy);
        let err = without_static_call_sites(&mut b"MZ".to_vec(), Path::new("x.ko")).unwrap_err();
        assert!(err.to_string().starts_with("x.ko: not a module"), "{err}");
    }

    #[test]
    fn btf_is_zeroed_and_emptied_and_nothing_else_changes() {
        let module = relocatable(&[
            Section::progbits(".text", vec![0x90; 16]),
            Section::progbits(".BTF", vec![0x9f, 0xeb, 1, 0, 0x18, 0, 0, 0, 7, 7, 7, 7]),
            Section::progbits(".BTF_ids", vec![0xBB; 8]),
        ]);
        let before = section_sizes(&module);
        assert_eq!(before[2], (".BTF".into(), 12));
        let mut edited = module.clone();
        without_btf(&mut edited, Path::new("m.ko")).unwrap();
        let after = section_sizes(&edited);
        assert_eq!(after[2], (".BTF".into(), 0));
        assert_eq!(after[1], before[1]);
        assert_eq!(after[3], before[3], ".BTF_ids is the module's data, kept");
        assert_eq!(edited.len(), module.len());
        let body = module
            .windows(4)
            .position(|w| w == [0x9f, 0xeb, 1, 0])
            .unwrap();
        assert!(edited[body..body + 12].iter().all(|&b| b == 0));
        let changed = module.iter().zip(&edited).filter(|(a, b)| a != b).count();
        assert_eq!(
            changed,
            8 + 1,
            "the body's non-zero bytes and the size's low byte"
        );

        // Without the section nothing changes; a non-ELF is refused.
        let mut plain = relocatable(&[Section::progbits(".text", vec![0x90; 16])]);
        let copy = plain.clone();
        without_btf(&mut plain, Path::new("m.ko")).unwrap();
        assert_eq!(plain, copy);
        let err = without_btf(&mut b"MZ".to_vec(), Path::new("x.ko")).unwrap_err();
        assert!(err.to_string().starts_with("x.ko: not a module"), "{err}");
    }

    #[test]
    fn signatures_come_off_and_unsigned_modules_stay_whole() {
        let body = b"\x7fELF module body".to_vec();
        let sig = vec![0x30u8; 681];
        let mut signed = body.clone();
        signed.extend_from_slice(&sig);
        // struct module_signature: algo, hash, id_type, signer_len,
        // key_id_len, 3 pad bytes, big-endian signature length.
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(unsigned(&signed), &body[..]);
        assert_eq!(unsigned(&body), &body[..]);
        // A marker whose length points before the file's start: left alone.
        let mut broken = body.clone();
        broken.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        broken.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(unsigned(&broken), &broken[..]);
    }

    const TEXT_AT: usize = 64; // the first section's bytes follow the ELF header

    /// A module with one traced function (its `call __fentry__` at .text+4)
    /// and one ordinary call (to `foo`, at .text+10).
    fn module(site_code: u8, site_symbol: u32) -> Vec<u8> {
        let mut text = vec![0x90u8; 4];
        text.extend_from_slice(&[site_code, 0, 0, 0, 0, 0xc3, CALL, 0, 0, 0, 0, 0xc3]);
        relocatable(&[
            Section::progbits(".text", text),
            Section::rela(
                ".rela.text",
                5,
                1,
                &[
                    (5, site_symbol, R_X86_64_PLT32, -4),
                    (11, 3, R_X86_64_PLT32, -4),
                ],
            ),
            Section::progbits("__mcount_loc", vec![0; 8]),
            Section::rela(".rela__mcount_loc", 5, 3, &[(0, 1, R_X86_64_64, 4)]),
            // .text's section symbol, then __fentry__ and foo, undefined.
            Section::symtab(6, &[(0, 3, 1, 0), (1, 0x10, 0, 0), (12, 0x10, 0, 0)]),
            Section::strtab(".strtab", b"\0__fentry__\0foo\0"),
        ])
    }

    fn r_info(m: &[u8], section: usize, entry: usize) -> u64 {
        let elf = Elf::parse(m).unwrap();
        let at = elf.section_headers[section].sh_offset as usize + entry * RELA_SIZE + 8;
        u64::from_le_bytes(m[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn the_listed_call_becomes_a_nop_and_the_table_goes() {
        let before = module(CALL, 2);
        let mut after = before.clone();
        assert_eq!(
            without_ftrace_sites(&mut after, Path::new("m.ko")).unwrap(),
            1
        );
        assert_eq!(after.len(), before.len());

        let text = &after[TEXT_AT..TEXT_AT + 16];
        assert_eq!(&text[4..9], &NOP5, "the traced call is the kernel's NOP");
        assert_eq!(&text[10..15], &[CALL, 0, 0, 0, 0], "the other call stays");
        assert_eq!(r_info(&after, 2, 0), 0, "its relocation is R_X86_64_NONE");
        assert_eq!(r_info(&after, 2, 1), r_info(&before, 2, 1));

        let (old, new) = (section_sizes(&before), section_sizes(&after));
        assert_eq!(old[3], ("__mcount_loc".into(), 8));
        assert_eq!(new[3], ("__mcount_loc".into(), 0));
        assert_eq!(new[4], (".rela__mcount_loc".into(), 0));
        for i in [1, 2, 5, 6, 7] {
            assert_eq!(new[i], old[i]);
        }
        // 3 code bytes (NOP5 ends in two zeroes, like the unrelocated call),
        // the type and symbol bytes of r_info, the low byte of each size.
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 3 + 2 + 2);
    }

    #[test]
    fn a_module_without_the_table_is_left_alone() {
        let mut m = module(CALL, 2);
        let at = m.windows(12).position(|w| w == b"__mcount_loc").unwrap();
        m[at] = b'X';
        let copy = m.clone();
        assert_eq!(without_ftrace_sites(&mut m, Path::new("m.ko")).unwrap(), 0);
        assert_eq!(m, copy);
    }

    #[test]
    fn a_site_that_is_not_a_call_to_fentry_is_refused_and_nothing_changes() {
        for (mut m, expect) in [
            (
                module(0x90, 2),
                "m.ko: site .text+0x4 is not an unrelocated call",
            ),
            (
                module(CALL, 3),
                "m.ko: site .text+0x4 does not call __fentry__",
            ),
        ] {
            let copy = m.clone();
            let err = without_ftrace_sites(&mut m, Path::new("m.ko")).unwrap_err();
            assert_eq!(err.to_string(), expect);
            assert_eq!(m, copy);
        }
        let err = without_ftrace_sites(&mut b"MZ".to_vec(), Path::new("x.ko")).unwrap_err();
        assert!(err.to_string().starts_with("x.ko: not a module"), "{err}");
    }
}
