"""Our AML builder (src/x86/aml.c) against iasl: for each case, the ASL below
is compiled by iasl and the body of its table (after the 36-byte header)
must equal, byte for byte, what build/tests/aml-cases prints for the same
case (tests/host/aml_cases.c builds each one with the aml_* calls). Case
"dsdt" is the DSDT body acpi_build() ships.

Where a name resolves the same without its root prefix, iasl drops it
("\\_SB" becomes "_SB_"), so the ASL here writes such names as iasl emits
them; the "dsdt" case keeps the "\\_S5" of acpi.c's comment on purpose.
iasl comes from Debian's acpica-tools, which scripts/setup.sh installs."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("CPRVM_BUILD", "build"))
AML_CASES = os.path.join(BUILD, "tests", "aml-cases")


def buffer(name, n):
    """Name (name, Buffer (n) { ... }) holding aml_cases.c's pattern."""
    data = ", ".join("0x%02X" % ((i * 7 + 3) & 0xFF) for i in range(n))
    return "Name (%s, Buffer (0x%X) { %s })" % (name, n, data) if n else \
        "Name (%s, Buffer () { })" % name


CASES = {
    "dsdt": r"""
    Name (\_S5, Package (0x04) { Zero, Zero, Zero, Zero })
""",
    "integers": """
    Name (INTS, Package (0x0B) { 0, 1, 2, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF,
        0x100000000, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF })
""",
    "eisaid": """
    Name (E1, EisaId ("PNP0501"))
    Name (E2, EisaId ("PNP0A03"))
    Name (E3, EisaId ("PNP0000"))
""",
    "device_eisaid": """
    Scope (_SB) {
        Device (COM1) {
            Name (_HID, EisaId ("PNP0501"))
            Name (_UID, One)
            Name (_DDN, "COM1")
        }
    }
""",
    "device_string_hid": """
    Scope (_SB) {
        Device (VGEN) {
            Name (_HID, "QEMU0002")
            Name (_CID, "VM_Gen_Counter")
            Name (_DDN, "VM_Gen_Counter")
            Name (ADDR, Package (0x02) { 0x12345678, 0x9ABCDEF0 })
        }
    }
""",
    "methods": """
    Method (_STA, 0, NotSerialized) { Return (0x0F) }
    Method (MSER, 7, Serialized) { Return ("done") }
""",
    # Root and parent prefixes, dual and multi paths, with and without the
    # root prefix, each written where iasl has no shorter form for it.
    "names": r"""
    Device (AAA) { Name (_ADR, Zero) Device (BBB) { Name (_ADR, Zero) } }
    Scope (_SB) {
        Device (DEV0) {
            Name (_ADR, Zero)
            Device (GHI) {
                Name (_ADR, Zero)
                Device (KLM) { Name (_ADR, Zero) }
                Name (^^PP, 8)
            }
            Name (\ROOT, One)
            Name (^PAR, 2)
            Name (GHI.DUAL, 3)
            Name (GHI.KLM.MULT, 4)
            Name (\AAA.RDUA, 5)
            Name (\AAA.BBB.RMUL, 6)
        }
    }
    Scope (\) { Name (ABCD, One) }
""",
    "pkglen_2": "    Name (P2, Package (0x40) { %s })\n" %
                ", ".join("0x%X" % (0x10000 + i) for i in range(0x40)),
    "pkglen_3": "    Scope (_SB) { %s }\n" % buffer("BIG", 0x1400),
    "pkglen_edges": "".join("    %s\n" % buffer(name, n) for name, n in
                            (("B060", 60), ("B061", 61), ("B4K0", 4090), ("B4K1", 4091),
                             ("B000", 0))),
}


@pytest.fixture(scope="module")
def ours():
    """{case: our AML bytes}, from aml-cases."""
    if not os.path.exists(AML_CASES):
        pytest.fail("%s is missing: run `make %s` (make host builds it)" %
                    (AML_CASES, os.path.relpath(AML_CASES, ROOT)))
    r = subprocess.run([AML_CASES], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cases = {}
    for line in r.stdout.splitlines():
        name, hexbytes = line.split()
        cases[name] = bytes.fromhex(hexbytes)
    return cases


def iasl_body(tmp_path, asl):
    """The AML iasl compiles from asl in a DSDT, without the table header."""
    iasl = shutil.which("iasl")
    if not iasl:
        pytest.fail("iasl not found: install Debian's acpica-tools (scripts/setup.sh does)")
    src = tmp_path / "case.asl"
    src.write_text('DefinitionBlock ("", "DSDT", 2, "CPRVM", "CPRVMTBL", 1)\n{\n%s}\n' % asl)
    r = subprocess.run([iasl, "-p", str(tmp_path / "case"), str(src)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "iasl failed:\n" + r.stdout + r.stderr
    table = (tmp_path / "case.aml").read_bytes()
    assert table[:4] == b"DSDT" and int.from_bytes(table[4:8], "little") == len(table)
    return table[36:]


def test_cases_match(ours):
    """aml_cases.c and this file list the same cases."""
    assert sorted(ours) == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_iasl(tmp_path, ours, case):
    want = iasl_body(tmp_path, CASES[case])
    got = ours.get(case)
    assert got is not None, "aml-cases has no case %r" % case
    if got != want:
        at = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w),
                  min(len(got), len(want)))
        pytest.fail("%s: first difference at byte %d of %d (iasl: %d)\n  ours: %s\n  iasl: %s"
                    % (case, at, len(got), len(want), got[max(0, at - 8):at + 24].hex(" "),
                       want[max(0, at - 8):at + 24].hex(" ")), pytrace=False)
