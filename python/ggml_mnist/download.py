"""Download the MNIST and Fashion-MNIST IDX files from public mirrors and verify them by SHA-256.

The files, their checksums and the mirrors are the dataset registry's (:mod:`ggml_mnist.datasets`)."""

from __future__ import annotations

import contextlib
import http.client
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .data import PathLike, atomic_path
from .datasets import DATASETS, FileSpec, download_info, file_matches, file_present, identify_dataset, identify_labels  # noqa: F401 (their old home: download.DATASETS, ...)
from .errors import ChecksumError, ConfigError, DownloadError, ModelIOError
from .outputs import FOREIGN_KINDS, describe

_CHUNK = 1 << 16


class _Failure(NamedTuple):
    url: str
    reason: str
    kind: str  # "offline" (no connection), "checksum", or "other"


def verify_dataset(name: str, directory: PathLike) -> dict[str, bool]:
    """Check the files of dataset name in ``directory/name`` (each as .gz or uncompressed).

    Returns {file name: True if present with the expected SHA-256}. Raises ConfigError for an
    unknown dataset.
    """
    return {f: status == "ok" for f, status in dataset_status(name, directory).items()}


def dataset_status(name: str, directory: PathLike) -> dict[str, str]:
    """Say of each file of dataset name in ``directory/name``: "ok", "missing", or what is wrong with it.

    A file that is present with other content is described by its kind ("present but its SHA-256 does not
    match (it is a GGUF model file)"). Raises ConfigError for an unknown dataset.
    """
    target = Path(directory) / name
    out = {}
    for filename, spec in download_info(name).files.items():
        if file_present(target, filename, spec):
            out[filename] = "ok"
            continue
        found = _foreign_or_damaged(target, filename)
        out[filename] = (
            "missing" if found is None else (f"present but its SHA-256 does not match (it is {describe(found)})")
        )
    return out


def _foreign_or_damaged(target: Path, filename: str) -> Path | None:
    """The file present under filename (.gz first, then uncompressed) that did not verify, or None."""
    return next((p for p in (target / filename, target / filename.removesuffix(".gz")) if p.exists()), None)


def _is_foreign(path: Path) -> bool:
    """True for a file of a known other kind (a model, a picture, a log) that a download must not replace
    without force; anything else under a dataset name is a damaged download."""
    return describe(path) in FOREIGN_KINDS


def download_dataset(
    name: str = "mnist",
    directory: PathLike = "data",
    *,
    mirrors: Iterable[str] | str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    force: bool = False,
) -> Path:
    """Download the files of dataset name into ``directory/name`` and verify them.

    Files already there (``.gz`` or uncompressed) with the right SHA-256 are kept; others are
    fetched from the mirrors in turn and only move to their final name once verified.
    ``mirrors`` (base URLs, or one as a string) replaces the built-in list. Progress goes to
    stderr when progress is True. A damaged download (gzip or IDX bytes that do not verify) is
    replaced; a file of another kind under a dataset name (a model saved there by mistake) is
    only replaced with ``force``, otherwise ModelIOError names it before anything is fetched.
    Returns ``directory/name``. Raises ConfigError for an unknown dataset or an empty mirror
    list, ChecksumError when every mirror served wrong bytes and DownloadError when every
    mirror failed.
    """
    spec = download_info(name)
    if mirrors is None:
        mirrors = spec.mirrors
    mirrors = (mirrors,) if isinstance(mirrors, str) else tuple(mirrors)
    if not mirrors:
        raise ConfigError("no mirrors to download from; pass at least one base URL")
    target = Path(directory) / name
    for filename, file_spec in spec.files.items():
        found = _foreign_or_damaged(target, filename)
        if not force and found is not None and not file_present(target, filename, file_spec) and _is_foreign(found):
            raise ModelIOError(
                f"'{found}' is present but its SHA-256 does not match (it is {describe(found)}); move "
                "it away, or run `mnist-data download --force` (force=True) to replace it"
            )
    created = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    try:
        for filename, file_spec in spec.files.items():
            if file_present(target, filename, file_spec):
                _say(progress, f"{filename}: already present, verified\n")
                continue
            _download_file(target, filename, file_spec, mirrors, timeout, progress)
    except BaseException:
        for folder in created:  # innermost first: leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return target


def _download_file(
    target: Path,
    filename: str,
    spec: FileSpec,
    mirrors: tuple[str, ...],
    timeout: float,
    progress: bool,
) -> None:
    failures: list[_Failure] = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            with atomic_path(target / filename) as tmp:
                _fetch(url, tmp, spec, timeout, progress)
                if not file_matches(tmp, spec):
                    raise ChecksumError(f"uncompressed SHA-256 is not {spec.sha256}")
        except urllib.error.HTTPError as e:
            failures.append(_Failure(url, f"HTTP {e.code} {e.reason}", "other"))
        except urllib.error.URLError as e:
            failures.append(_Failure(url, f"cannot connect ({e.reason})", "offline"))
        except ChecksumError as e:
            failures.append(_Failure(url, str(e), "checksum"))
        except (OSError, http.client.HTTPException) as e:
            failures.append(_Failure(url, f"transfer failed ({type(e).__name__}: {e})", "other"))
        else:
            (target / filename.removesuffix(".gz")).unlink(missing_ok=True)  # failed verification
            return
        if len(failures) < len(mirrors):  # the error below lists every failure; say only why the next mirror is tried
            _say(progress, f"{filename}: {failures[-1].url}: {failures[-1].reason}; trying the next mirror\n")
    raise _failure_error(target, filename, failures)


def _failure_error(target: Path, filename: str, failures: list[_Failure]) -> DownloadError:
    tried = "\n".join(f"  {f.url}: {f.reason}" for f in failures)
    kinds = {f.kind for f in failures}
    if kinds == {"checksum"}:
        return ChecksumError(
            f"every mirror served a {filename} whose content does not match the expected "
            f"SHA-256:\n{tried}\nthe mirrors may be corrupt; try other mirrors with mirrors=[...]"
        )
    message = f"could not download {filename} from any mirror:\n{tried}"
    if kinds == {"offline"}:
        message += (
            f"\nthis machine seems to be offline. Fetch the .gz files from a mirror above on a "
            f"machine with internet access and copy them (or their uncompressed forms) into "
            f"'{target}'; running the download again verifies them without contacting any mirror"
        )
    return DownloadError(message)


def _fetch(url: str, dest: Path, spec: FileSpec, timeout: float, progress: bool) -> None:
    """Stream url into the new file dest; raise OSError if the transfer breaks off."""
    limit = spec.size + spec.size // 100 + (1 << 16)  # gzip never grows data by more
    name = url.rsplit("/", 1)[-1]
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "xb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None and length.isdigit() else None
        done = 0
        try:
            while chunk := response.read(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise DownloadError(f"server sent more than the {limit} bytes expected")
                out.write(chunk)
                _say(progress, _progress_line(name, done, total))
        finally:
            _say(progress and done > 0, "\n")
        if total is not None and done < total:
            raise ConnectionError(f"connection closed after {done} of {total} bytes")


def _progress_line(name: str, done: int, total: int | None) -> str:
    if total:
        return f"\r{name}: {100 * done // total:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB"
    return f"\r{name}: {done / 1e6:.1f} MB"


def _say(enabled: bool, text: str) -> None:
    if enabled:
        sys.stderr.write(text)
        sys.stderr.flush()
