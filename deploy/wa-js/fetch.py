"""Install the pinned @wppconnect/wa-js bundle that the WhatsApp Web channel injects.

    python deploy/wa-js/fetch.py [--dest .tools/wa-js] [--tarball FILE]

`deploy/wa-js/wa-js.lock.json` pins the npm package's version and its sha512 integrity (the
registry's `dist.integrity`). The tarball is downloaded from the npm registry (NPM_CONFIG_REGISTRY,
else the `registry=` of ~/.npmrc, else npm's default), refused unless its sha512 matches the pin,
and `dist/wppconnect-wa.js` (checked against `bundle_sha256` too), the package's LICENSE and
its TypeScript declarations (`dist/**/*.d.ts`, read by the contract test that every WPP function
the channel calls exists) are extracted into DEST. Nothing is fetched at run time: dispatch
reads DEST (WHATSAPP_WEB_WA_JS_PATH). Standard library only, so a machine with Python and make
needs no node; with `--tarball` it installs from a file (an offline mirror, `npm pack`).

An install that is already in place and matches the pin does nothing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "wa-js.lock.json"
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
STAMP = "wa-js.installed.json"


def registry() -> str:
    url = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
    if not url:
        npmrc = Path.home() / ".npmrc"
        if npmrc.is_file():
            for line in npmrc.read_text(errors="replace").splitlines():
                match = re.match(r"\s*registry\s*=\s*(\S+)", line)
                if match:
                    url = match.group(1)
    return (url or DEFAULT_REGISTRY).rstrip("/") + "/"


def tarball_url(package: str, version: str) -> str:
    # The registry's layout: <registry>/<@scope/name>/-/<name>-<version>.tgz
    return f"{registry()}{package}/-/{package.rsplit('/', 1)[-1]}-{version}.tgz"


def check_integrity(data: bytes, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"wa-js: the lock's integrity must be sha512, not {algorithm!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise SystemExit(
            f"wa-js: the downloaded tarball's sha512 ({actual}) is not the pinned one; refusing it"
        )


def installed(dest: Path, lock: dict[str, str]) -> bool:
    stamp = dest / STAMP
    bundle = dest / Path(lock["bundle"]).name
    if not (stamp.is_file() and bundle.is_file()):
        return False
    try:
        done = json.loads(stamp.read_text())
    except ValueError:
        return False
    return (
        done.get("version") == lock["version"]
        and done.get("integrity") == lock["integrity"]
        and hashlib.sha256(bundle.read_bytes()).hexdigest() == lock["bundle_sha256"]
    )


def extract(data: bytes, dest: Path, lock: dict[str, str]) -> None:
    bundle_name = "package/" + lock["bundle"]
    staging = Path(tempfile.mkdtemp(prefix=".wa-js-", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if not member.isfile() or ".." in Path(name).parts:
                    continue
                wanted = (
                    name == bundle_name
                    or name == "package/LICENSE"
                    or (name.startswith("package/dist/") and name.endswith(".d.ts"))
                )
                if not wanted:
                    continue
                source = tar.extractfile(member)
                assert source is not None
                content = source.read()
                if name == bundle_name:
                    target = staging / Path(name).name
                    if hashlib.sha256(content).hexdigest() != lock["bundle_sha256"]:
                        raise SystemExit("wa-js: the bundle's sha256 is not the pinned one")
                elif name == "package/LICENSE":
                    target = staging / "LICENSE"
                else:
                    target = staging / "types" / name.removeprefix("package/dist/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        if not (staging / Path(lock["bundle"]).name).is_file():
            raise SystemExit(f"wa-js: the tarball has no {lock['bundle']}")
        (staging / STAMP).write_text(
            json.dumps(
                {
                    "package": lock["package"],
                    "version": lock["version"],
                    "integrity": lock["integrity"],
                },
                indent=2,
            )
            + "\n"
        )
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".tools/wa-js"))
    parser.add_argument("--tarball", type=Path, help="install from this .tgz instead")
    args = parser.parse_args(argv)
    lock = json.loads(LOCK.read_text())
    dest: Path = args.dest.resolve()
    if installed(dest, lock):
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    if args.tarball is not None:
        data = args.tarball.read_bytes()
    else:
        url = tarball_url(lock["package"], lock["version"])
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
        except OSError as err:
            print(
                f"wa-js: cannot download {lock['package']}@{lock['version']} ({err}); set "
                "NPM_CONFIG_REGISTRY to a reachable npm registry, or pass --tarball FILE",
                file=sys.stderr,
            )
            return 1
    check_integrity(data, lock["integrity"])
    extract(data, dest, lock)
    print(f"wa-js {lock['version']} installed in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
