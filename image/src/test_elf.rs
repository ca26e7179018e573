//! Small relocatable ELF64 files (x86-64, little-endian), shaped like
//! kernel modules, for the tests of the builder's module edits.

/// One section; the writer adds the null section first and `.shstrtab`
/// last, so the first given section has index 1.
pub struct Section<'a> {
    pub name: &'a str,
    pub kind: u32,
    pub flags: u64,
    pub data: Vec<u8>,
    pub link: u32,
    pub info: u32,
    pub entsize: u64,
}

pub const SHT_PROGBITS: u32 = 1;
pub const SHT_SYMTAB: u32 = 2;
pub const SHT_STRTAB: u32 = 3;
pub const SHT_RELA: u32 = 4;

impl<'a> Section<'a> {
    pub fn progbits(name: &'a str, data: Vec<u8>) -> Self {
        Section {
            name,
            kind: SHT_PROGBITS,
            flags: 2, // SHF_ALLOC
            data,
            link: 0,
            info: 0,
            entsize: 0,
        }
    }

    /// Relocations of section `target` against symbol table `symtab`.
    pub fn rela(name: &'a str, symtab: u32, target: u32, entries: &[(u64, u32, u32, i64)]) -> Self {
        let mut data = Vec::new();
        for &(offset, sym, kind, addend) in entries {
            data.extend_from_slice(&offset.to_le_bytes());
            data.extend_from_slice(&((u64::from(sym) << 32) | u64::from(kind)).to_le_bytes());
            data.extend_from_slice(&addend.to_le_bytes());
        }
        Section {
            name,
            kind: SHT_RELA,
            flags: 0x40, // SHF_INFO_LINK
            data,
            link: symtab,
            info: target,
            entsize: 24,
        }
    }

    /// A symbol table of (name offset in `strtab`, st_info, section,
    /// value), after the null symbol.
    pub fn symtab(strtab: u32, symbols: &[(u32, u8, u16, u64)]) -> Self {
        let mut data = vec![0u8; 24];
        for &(name, info, shndx, value) in symbols {
            data.extend_from_slice(&name.to_le_bytes());
            data.push(info);
            data.push(0);
            data.extend_from_slice(&shndx.to_le_bytes());
            data.extend_from_slice(&value.to_le_bytes());
            data.extend_from_slice(&0u64.to_le_bytes());
        }
        Section {
            name: ".symtab",
            kind: SHT_SYMTAB,
            flags: 0,
            data,
            link: strtab,
            info: 1,
            entsize: 24,
        }
    }

    pub fn strtab(name: &'a str, data: &[u8]) -> Self {
        Section {
            name,
            kind: SHT_STRTAB,
            flags: 0,
            data: data.to_vec(),
            link: 0,
            info: 0,
            entsize: 0,
        }
    }
}

/// The file: ELF header, the sections' bytes, then the section headers.
pub fn relocatable(sections: &[Section<'_>]) -> Vec<u8> {
    let mut names = vec![0u8];
    let mut name_at = Vec::new();
    for s in sections {
        name_at.push(names.len() as u32);
        names.extend_from_slice(s.name.as_bytes());
        names.push(0);
    }
    let shstrtab_name = names.len() as u32;
    names.extend_from_slice(b".shstrtab\0");

    let mut f = vec![0u8; 64];
    let mut placed = Vec::new();
    for s in sections {
        f.resize(f.len().next_multiple_of(8), 0);
        placed.push(f.len());
        f.extend_from_slice(&s.data);
    }
    let names_at = f.len();
    f.extend_from_slice(&names);
    f.resize(f.len().next_multiple_of(8), 0);
    let shoff = f.len();
    let count = sections.len() + 2;

    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1;
    f[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[58..60].copy_from_slice(&64u16.to_le_bytes());
    f[60..62].copy_from_slice(&(count as u16).to_le_bytes());
    f[62..64].copy_from_slice(&((count - 1) as u16).to_le_bytes());

    let header = |name: u32, s: &Section<'_>, offset: usize, size: usize| {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&s.kind.to_le_bytes());
        h[8..16].copy_from_slice(&s.flags.to_le_bytes());
        h[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        h[40..44].copy_from_slice(&s.link.to_le_bytes());
        h[44..48].copy_from_slice(&s.info.to_le_bytes());
        h[48..56].copy_from_slice(&1u64.to_le_bytes());
        h[56..64].copy_from_slice(&s.entsize.to_le_bytes());
        h
    };
    f.extend_from_slice(&[0u8; 64]);
    for (i, s) in sections.iter().enumerate() {
        f.extend_from_slice(&header(name_at[i], s, placed[i], s.data.len()));
    }
    let shstrtab = Section::strtab(".shstrtab", &names);
    f.extend_from_slice(&header(shstrtab_name, &shstrtab, names_at, names.len()));
    f
}

/// Each section's name and size, in order, as goblin reads them.
pub fn section_sizes(module: &[u8]) -> Vec<(String, u64)> {
    let elf = goblin::elf::Elf::parse(module).expect("a valid ELF");
    elf.section_headers
        .iter()
        .map(|s| {
            let name = elf.shdr_strtab.get_at(s.sh_name).unwrap_or("");
            (name.to_string(), s.sh_size)
        })
        .collect()
}
