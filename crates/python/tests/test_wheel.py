"""The built wheel (issue 17, "Wheels"), as scripts/test.sh builds it once and
names it in $SEQFEED_WHEEL: what it ships, what its extension links, and that
it imports and reads a real plan in a fresh venv that has no torch.

Without $SEQFEED_WHEEL these tests skip (a `pip install ./crates/python`
checkout has no wheel file to look at); scripts/test.sh always sets it.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import make_dataset, write_plan

# manylinux2014 == manylinux_2_17: the newest glibc symbol version the extension may need.
GLIBC_MAX = (2, 17)
SO = "seqfeed/_native.abi3.so"


@pytest.fixture(scope="module")
def wheel():
    w = os.environ.get("SEQFEED_WHEEL")
    if not w:
        pytest.skip("SEQFEED_WHEEL is not set (scripts/test.sh builds the wheel and sets it)")
    p = pathlib.Path(w)
    assert p.is_file(), f"SEQFEED_WHEEL={w} is not a file"
    return p


@pytest.fixture(scope="module")
def native_so(wheel, tmp_path_factory):
    out = tmp_path_factory.mktemp("so")
    with zipfile.ZipFile(wheel) as z:
        assert SO in z.namelist(), f"{wheel.name} has no {SO}: {z.namelist()}"
        z.extract(SO, out)
    return out / SO


def readelf(*args):
    r = subprocess.run(["readelf", "-W", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"readelf {' '.join(map(str, args))} failed: {r.stderr}"
    return r.stdout


def test_wheel_is_abi3_manylinux2014_and_ships_stubs(wheel):
    """One abi3 wheel for CPython >= 3.9 tagged manylinux_2_17 (manylinux2014),
    with the type stubs, the py.typed marker and torch as a dependency."""
    assert re.fullmatch(
        r"seqfeed-[^-]+-cp39-abi3-(manylinux2014_x86_64\.manylinux_2_17_x86_64|manylinux_2_17_x86_64\.manylinux2014_x86_64)\.whl", wheel.name
    ), f"unexpected wheel tag: {wheel.name}"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for need in (SO, "seqfeed/_native.pyi", "seqfeed/py.typed", "seqfeed/__init__.py"):
            assert need in names, f"{wheel.name} lacks {need}"
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    assert "Requires-Dist: torch>=2.3" in requires, requires


def test_extension_is_stripped_and_links_no_rdma_or_cuda(native_so):
    """No debug info or symbol table; rdma-core and CUDA are dlopen'ed at run
    time, so they are not NEEDED; no glibc symbol newer than manylinux2014's 2.17."""
    sections = readelf("-S", native_so)
    for s in (".debug_info", ".debug_line", ".symtab"):
        assert f" {s} " not in sections, f"{native_so.name} still has {s}"
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", native_so))
    assert needed, "readelf found no NEEDED entries"
    for lib in needed:
        assert not re.match(r"lib(ibverbs|rdmacm|mlx|cuda|cudart|nvidia)", lib), f"links {lib}: {needed}"
        assert not lib.startswith("libpython"), f"abi3 extension links {lib}"
    versions = {
        tuple(map(int, v.split(".")))
        for v in re.findall(r"Name: GLIBC_([0-9.]+)", readelf("-V", native_so))
    }
    assert versions, "readelf found no GLIBC version needs"
    too_new = sorted(v for v in versions if v > GLIBC_MAX)
    assert not too_new, f"needs glibc symbols newer than 2.17: {too_new}"


def test_plan_functions_work_without_torch(wheel, tmp_path):
    """In a fresh venv without torch, the wheel installed with --no-deps
    imports, reads a plan over data packed by the CLI, and never imports
    torch; Loader raises a ModuleNotFoundError that says torch is needed."""
    ds = make_dataset(tmp_path)
    plan = write_plan(tmp_path / "plan.toml", [("web", 0.6), ("code", 0.4)], 8, 12)
    venv = tmp_path / "venv"
    # -I: the child ignores PYTHONPATH and the user site, so nothing of this venv leaks in.
    subprocess.run([sys.executable, "-I", "-m", "venv", venv], check=True)
    py = venv / "bin" / "python"
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    r = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, env=clean)
    assert r.returncode != 0, "the fresh venv imports torch: the test would prove nothing"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", wheel],
        check=True,
        env=clean,
    )
    script = textwrap.dedent(
        """
        import json, sys
        import seqfeed
        st = seqfeed.plan_stats(sys.argv[1], dataset=sys.argv[2])
        rows = seqfeed.plan_show(sys.argv[1], 0, 2, dataset=sys.argv[2])
        src = seqfeed.inspect_source(sys.argv[2] + "/web", seq=0)
        try:
            seqfeed.inspect_source(sys.argv[2] + "/nope")
            err = None
        except seqfeed.SeqfeedError as e:
            err = str(e)
        after_plan = "torch" in sys.modules
        try:
            seqfeed.Loader
            loader = "imported"
        except ModuleNotFoundError as e:
            loader = str(e)
        print(json.dumps({
            "version": seqfeed.__version__, "file": seqfeed.__file__,
            "steps": st["steps"], "quota": sum(s["quota"] for s in st["sources"]),
            "ranks": [r["dp_rank"] for r in rows], "seq_len": len(src["tokens"]),
            "error": err, "torch_after_plan": after_plan, "loader": loader,
        }))
        """
    )
    r = subprocess.run(
        [py, "-c", script, plan, ds], capture_output=True, text=True, env=clean, cwd=tmp_path
    )
    assert r.returncode == 0, f"the torch-free venv failed:\n{r.stderr}"
    got = json.loads(r.stdout)
    assert got["file"].startswith(str(venv)), f"imported seqfeed from {got['file']}, not the venv"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", got["version"]), got["version"]
    assert got["steps"] == 12 and got["quota"] == 96, got
    assert got["ranks"] == [0] * 4 + [1] * 4, got
    assert got["seq_len"] == 65, got
    assert got["error"] and "nope" in got["error"], got
    assert got["torch_after_plan"] is False, "import seqfeed / plan_stats imported torch"
    assert "needs PyTorch" in got["loader"] and "pip install" in got["loader"], got["loader"]
