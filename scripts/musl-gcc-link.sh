#!/bin/sh
# Linker for x86_64-unknown-linux-musl with Debian's musl-tools (see .cargo/config.toml).
# A dynamically linked musl addon (crt-static off, so that Node on Alpine can dlopen it) links
# libgcc_s for unwinding, as Alpine's own Node does; musl-gcc's specs search only musl's directory
# for it. Offer the system's libgcc_s.so.1, alone in a directory of its own so that no glibc
# library (libc.so, libdl.so) can take musl's place: only its soname ends up in the addon.
set -e
libgcc_dir=${TMPDIR:-/tmp}/musl-gcc-link-libgcc
mkdir -p "$libgcc_dir"
ln -sf "$(gcc -print-file-name=libgcc_s.so.1)" "$libgcc_dir/libgcc_s.so.1"
exec musl-gcc "$@" -L"$libgcc_dir"
