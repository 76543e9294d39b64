#!/usr/bin/env python3
"""embed-file.py IN NAME OUT - turns a file into a C include for the build.

OUT (under build/, never committed) defines
  static const unsigned char NAME[]   the bytes of IN, then a NUL
  #define NAME_LEN                    its length without the NUL
  #define NAME_ETAG                   "\"<32 hex of its SHA-256>\"", a strong HTTP validator
so the binary serves IN without reading the source tree at run time (a
deployed binary has none). Used for docs/openapi.json (src/http/routes_openapi.c).
"""
import hashlib
import os
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: embed-file.py IN NAME OUT")
    src, name, out = sys.argv[1:]
    with open(src, "rb") as fh:
        data = fh.read()
    if b"\0" in data:
        sys.exit(f"{src}: contains a NUL byte")
    digest = hashlib.sha256(data).hexdigest()[:32]
    lines = [f"/* Generated from {src} by scripts/embed-file.py: do not edit. */",
             f"#define {name.upper()}_LEN {len(data)}u",
             f'#define {name.upper()}_ETAG "\\"{digest}\\""',
             f"static const unsigned char {name}[] = {{"]
    body = data + b"\0"
    for i in range(0, len(body), 16):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in body[i:i + 16]) + ",")
    lines.append("};")
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, out)     # whole or not at all: make never sees half a file


if __name__ == "__main__":
    main()
