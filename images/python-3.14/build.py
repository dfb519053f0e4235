#!/usr/bin/env python3
"""Builds stacyvm's pre-initialized CPython 3.14 image.

    python3 build.py --out DIR

Needs Python 3.9 or later with `venv` and pip, and access to a Python package
index (PIP_INDEX_URL or STACYVM_PACKAGE_INDEX choose another one). Every
package is pinned by hash in requirements.txt. The result, in DIR:

    python.wasm   a wasi:cli/command component: CPython 3.14 with
                  stacyvm_python.py imported and its memory snapshotted
    lib/          the standard library, to be mounted read-only at /python
    build.json    what was built from what, with the component's sha256

The snapshot bakes in a hash seed chosen at build time, so two builds are not
bit-identical; build.json records the sha256 of the one that was built.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPONENTIZE_PY = "0.25.1"
APP = "stacyvm_python"
WORLD = "stacyvm:python/python"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# The stdlib archive componentize-py embeds: 708 files, about 12 MiB.
STDLIB_MARKERS = {"os.py", "encodings/__init__.py", "traceback.py"}
STDLIB_MAX_BYTES = 256 << 20


def log(message):
    print("build.py: " + message, file=sys.stderr, flush=True)


def recipe_files():
    """Every file of this recipe, by path relative to it, in a fixed order."""
    files = []
    for path in HERE.rglob("*"):
        rel = path.relative_to(HERE)
        if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            files.append(rel.as_posix())
    return sorted(files)


def recipe_digest():
    """A digest of every file of this recipe, so that a server can tell when a
    built image is stale. stacyvm computes the same digest over the copy
    embedded in its binary."""
    h = hashlib.sha256()
    for rel in recipe_files():
        data = (HERE / rel).read_bytes()
        h.update(b"%s\0%d\0" % (rel.encode(), len(data)))
        h.update(data)
    return h.hexdigest()


def run(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def make_venv(work):
    venv = work / "venv"
    stamp = venv / "installed.sha256"
    want = hashlib.sha256((HERE / "requirements.txt").read_bytes()).hexdigest()
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    if stamp.exists() and stamp.read_text().strip() == want:
        return bindir
    run([sys.executable, "-m", "venv", "--clear", venv])
    pip = [bindir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--require-hashes"]
    index = os.environ.get("STACYVM_PACKAGE_INDEX")
    if index:
        pip += ["--index-url", index]
    run(pip + ["-r", HERE / "requirements.txt"])
    stamp.write_text(want)
    return bindir


def find_stdlib_archive(bindir):
    """componentize-py carries the 3.14 standard library as a zstd-compressed
    tar inside its native module; find it by content, not by offset."""
    import_check = (
        "import componentize_py, os; print(os.path.dirname(componentize_py.__file__))"
    )
    pkg = Path(subprocess.check_output([bindir / "python", "-c", import_check], text=True).strip())
    native = next(p for p in pkg.iterdir() if p.name.startswith("componentize_py.") and p.suffix in (".so", ".pyd"))
    data = native.read_bytes()
    code = (
        "import sys, zstandard\n"
        "data = sys.stdin.buffer.read()\n"
        "r = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)\n"
        "out = r.read(%d)\n"
        "sys.stdout.buffer.write(out)\n" % STDLIB_MAX_BYTES
    )
    start = 0
    while True:
        at = data.find(ZSTD_MAGIC, start)
        if at < 0:
            raise SystemExit("build.py: no standard library archive found in " + str(native))
        start = at + 1
        done = subprocess.run(
            [bindir / "python", "-c", code], input=data[at:], capture_output=True
        )
        if done.returncode != 0 or len(done.stdout) < 1 << 20:
            continue
        try:
            with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
                names = set(tar.getnames())
        except tarfile.TarError:
            continue
        if STDLIB_MARKERS <= names:
            return done.stdout


def extract_stdlib(archive, dest):
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        for m in members:
            if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                raise SystemExit("build.py: unexpected member in the stdlib archive: " + m.name)
        tar.extractall(tmp, members=members)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sum(1 for m in members if m.isfile())


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for python.wasm, lib/ and build.json")
    parser.add_argument("--print-recipe", action="store_true", help="print the digest of this recipe and exit")
    args = parser.parse_args()
    if args.print_recipe:
        print(recipe_digest())
        return
    started = time.monotonic()
    out = args.out.resolve()
    work = out / ".build"
    work.mkdir(parents=True, exist_ok=True)
    bindir = make_venv(work)

    log("extracting the standard library")
    files = extract_stdlib(find_stdlib_archive(bindir), out / "lib")

    # componentize-py bundles every directory on its python path; give it one
    # that holds only the app.
    appdir = work / "app"
    shutil.rmtree(appdir, ignore_errors=True)
    appdir.mkdir()
    shutil.copy(HERE / (APP + ".py"), appdir / (APP + ".py"))
    wasm_tmp = work / "python.wasm"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["RUST_BACKTRACE"] = "0"
    run(
        [
            bindir / "componentize-py",
            "--wit-path",
            HERE / "wit",
            "--world",
            WORLD,
            "componentize",
            APP,
            "--python-path",
            appdir,
            "--output",
            wasm_tmp,
        ],
        cwd=appdir,
        env=env,
    )
    wasm = out / "python.wasm"
    os.replace(wasm_tmp, wasm)
    info = {
        "name": "python-3.14",
        "python": "3.14.0",
        "componentize_py": COMPONENTIZE_PY,
        "recipe_sha256": recipe_digest(),
        "wasm_sha256": sha256_file(wasm),
        "wasm_size": wasm.stat().st_size,
        "stdlib_files": files,
    }
    tmp = out / "build.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / "build.json")
    log("built %s (%d bytes, %d stdlib files) in %.1f s" % (wasm, info["wasm_size"], files, time.monotonic() - started))


if __name__ == "__main__":
    main()
