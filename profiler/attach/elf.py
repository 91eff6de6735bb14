"""Just enough ELF to find exported symbols in a Python executable or libpython.

Only `.dynsym` is read: it survives `strip`, so this works for the stripped interpreters found in
Debian packages and Docker images, where `.symtab` and debug information are gone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["ElfError", "ElfSymbol", "dynamic_symbols", "load_bias", "read_at_vaddr"]

_SHT_DYNSYM = 11
_PT_LOAD = 1
_SHN_UNDEF = 0


class ElfError(ValueError):
    """The file is not an ELF file this module can read (or it is truncated)."""


@dataclass(frozen=True)
class ElfSymbol:
    """A defined dynamic symbol: its link-time address and its size in bytes."""

    name: str
    value: int
    size: int


@dataclass(frozen=True)
class _Segment:
    offset: int
    vaddr: int
    filesz: int


@dataclass(frozen=True)
class _Layout:
    """The fixed-size parts of one ELF file, already decoded."""

    endian: str  # "<" or ">"
    is64: bool
    segments: tuple[_Segment, ...]
    section_headers: tuple[tuple[int, int, int, int, int], ...]  # type, offset, size, link, entsize


def _read(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError(f"truncated ELF file: wanted {size} bytes at offset {offset}")
    return data


def _layout(f: BinaryIO) -> _Layout:
    ident = f.read(16)
    if ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if len(ident) < 16:
        raise ElfError("truncated ELF file: no complete identification")
    is64 = ident[4] == 2
    endian = "<" if ident[5] == 1 else ">"
    if is64:
        phoff, shoff = struct.unpack(endian + "QQ", _read(f, 32, 16))
        phentsize, phnum, shentsize, shnum = struct.unpack(endian + "HHHH", _read(f, 54, 8))
        ph_fmt, sh_fmt = "IIQQQQQQ", "IIQQQQIIQQ"
    else:
        phoff, shoff = struct.unpack(endian + "II", _read(f, 28, 8))
        phentsize, phnum, shentsize, shnum = struct.unpack(endian + "HHHH", _read(f, 42, 8))
        ph_fmt, sh_fmt = "IIIIIIII", "IIIIIIIIII"
    segments = []
    for i in range(phnum):
        raw = struct.unpack(
            endian + ph_fmt, _read(f, phoff + i * phentsize, struct.calcsize(ph_fmt))
        )
        # The field order differs between the two classes (p_flags moved in ELF64).
        p_type, p_offset, p_vaddr, p_filesz = (
            (raw[0], raw[2], raw[3], raw[5]) if is64 else (raw[0], raw[1], raw[2], raw[4])
        )
        if p_type == _PT_LOAD:
            segments.append(_Segment(p_offset, p_vaddr, p_filesz))
    sections = []
    for i in range(shnum):
        raw = struct.unpack(
            endian + sh_fmt, _read(f, shoff + i * shentsize, struct.calcsize(sh_fmt))
        )
        sections.append((raw[1], raw[4], raw[5], raw[6], raw[9]))
    return _Layout(endian, is64, tuple(segments), tuple(sections))


def dynamic_symbols(path: str, names: Iterable[str]) -> dict[str, ElfSymbol]:
    """Return the defined dynamic symbols of `path` whose names are in `names`.

    Names that are absent (or only imported, i.e. undefined) are simply missing from the result.
    Raises ElfError for a file that is not ELF and OSError when it cannot be read.
    """
    wanted = {name.encode() for name in names}
    found: dict[str, ElfSymbol] = {}
    with open(path, "rb") as f:
        layout = _layout(f)
        sym_fmt = layout.endian + ("IBBHQQ" if layout.is64 else "IIIBBH")
        for sh_type, offset, size, link, entsize in layout.section_headers:
            if sh_type != _SHT_DYNSYM or entsize == 0 or link >= len(layout.section_headers):
                continue
            strtab_offset, strtab_size = layout.section_headers[link][1:3]
            strtab = _read(f, strtab_offset, strtab_size)
            table = _read(f, offset, size)
            for start in range(0, size - entsize + 1, entsize):
                fields = struct.unpack_from(sym_fmt, table, start)
                if layout.is64:
                    name_off, _info, _other, shndx, value, sym_size = fields
                else:
                    name_off, value, sym_size, _info, _other, shndx = fields
                if shndx == _SHN_UNDEF:
                    continue
                name = strtab[name_off : strtab.find(b"\0", name_off)]
                if name in wanted:
                    found[name.decode()] = ElfSymbol(name.decode(), value, sym_size)
    return found


def load_bias(path: str, map_start: int, map_offset: int) -> int:
    """Return what the loader added to link-time addresses, given one mapping of `path`.

    `map_start` and `map_offset` come from a /proc/PID/maps line of this file. The bias is 0
    for a non-PIE executable and the load address for a shared library or a PIE.
    """
    with open(path, "rb") as f:
        layout = _layout(f)
    for seg in layout.segments:
        # The kernel maps whole pages: compare page-aligned offsets.
        page_offset = seg.offset & ~0xFFF
        if page_offset <= map_offset < seg.offset + max(seg.filesz, 1):
            return map_start - map_offset - ((seg.vaddr & ~0xFFF) - page_offset)
    raise ElfError(f"no loadable segment of {path} covers file offset {map_offset:#x}")


def read_at_vaddr(path: str, vaddr: int, size: int) -> bytes:
    """Read `size` bytes that the file maps at link-time address `vaddr` (e.g. a const)."""
    with open(path, "rb") as f:
        layout = _layout(f)
        for seg in layout.segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return _read(f, seg.offset + vaddr - seg.vaddr, size)
    raise ElfError(f"address {vaddr:#x} is not backed by {path}")
