#!/usr/bin/env bash
# Makes the root file system of the debian:bookworm-slim stand-in in $1: debootstrap's minbase,
# trimmed as the slim image is (no docs, man pages, locales, apt lists).
set -euo pipefail
root=$1
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
