#!/bin/sh
# Installs what cprvm's build, tests and benchmarks need from Debian, only when
# something is missing, and on a host without usable KVM builds the L1 that
# scripts/with-kvm boots (Debian's kernel and busybox-static, cached in
# build/l1). Run by the Makefile; safe to run by hand. iasl (acpica-tools) is
# for tests/host/test_aml.py, which compares our AML with what it compiles.
set -e
need=""
have_hdr() { [ -e "/usr/include/$1" ]; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_hdr jansson.h || need="$need libjansson-dev"
have_hdr cmocka.h || need="$need libcmocka-dev"
/usr/bin/python3 -c 'import pytest' 2>/dev/null || need="$need python3-pytest"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v clang >/dev/null 2>&1 || need="$need clang"
have_pkg libclang-rt-14-dev || need="$need libclang-rt-14-dev"
command -v gcc >/dev/null 2>&1 || need="$need gcc"
# Static glibc (libc.a): cprvm and the Linux guest's workload link statically.
have_pkg libc6-dev || need="$need libc6-dev"
have_pkg busybox-static || need="$need busybox-static"
command -v iasl >/dev/null 2>&1 || need="$need acpica-tools"

if [ -n "$need" ]; then
	echo "setup: installing from Debian:$need"
	if [ "$(id -u)" != 0 ]; then
		echo "setup: need root to install:$need" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends $need >/dev/null
fi

here=$(dirname "$0")
case "$("$here/with-kvm" --platform)" in
*nested*) "$here/with-kvm" --prepare ;;
esac
exit 0
