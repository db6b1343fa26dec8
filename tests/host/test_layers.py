"""scripts/check-layers (issue 18): src/ includes go one way. Run on a copy
of the tree: it passes as the tree is, and fails on an include that goes up
and on an allow-list entry that no longer occurs."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(os.path.join(ROOT, "src"), tmp_path / "src")
    (tmp_path / "scripts").mkdir()
    for f in ("check-layers", "layers-known"):
        shutil.copy2(os.path.join(ROOT, "scripts", f), tmp_path / "scripts" / f)
    return tmp_path


def check(tree):
    return subprocess.run([str(tree / "scripts" / "check-layers")], capture_output=True,
                          text=True, timeout=60)


def add_include(path, header):
    """Adds the include before the file's first one; returns its line."""
    text = path.read_text()
    first = text.index("#include")
    path.write_text(text[:first] + f'#include "{header}"\n' + text[first:])
    return text[:first].count("\n") + 1


def test_tree_passes(tree):
    r = check(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "none upward" in r.stdout


@pytest.mark.parametrize("src,header,levels", [
    ("dev/serial.c", "cpr/cpr.h", "(1 -> 4)"),
    ("state/stream.h", "vm/vm.h", "(0 -> 3)"),
    ("cpr/registry.c", "qmp/qmp.h", "(4 -> 5)"),
])
def test_upward_include_fails(tree, src, header, levels):
    line = add_include(tree / "src" / src, header)
    r = check(tree)
    assert r.returncode == 1
    assert f"src/{src}:{line}: includes {header} {levels}: upward" in r.stdout
    assert "1 upward" in r.stderr


def test_downward_include_passes(tree):
    add_include(tree / "src" / "cpr" / "registry.c", "x86/pagewalk.h")
    assert check(tree).returncode == 0


def test_stale_allow_list_entry_fails(tree):
    with open(tree / "scripts" / "layers-known", "a") as f:
        f.write("\nsrc/x86/boot.c vm/vm_priv.h\n")
    r = check(tree)
    assert r.returncode == 1
    assert "src/x86/boot.c vm/vm_priv.h: stale: remove it" in r.stdout
