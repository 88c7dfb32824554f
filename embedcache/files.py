"""Writing files and directories so that a crash, a full disk or a wrong path never leaves half a result.

Everything is written beside its destination under a ``.tmp-`` name, flushed,
fsynced and renamed into place; an OSError becomes a :class:`WriteError` that
names the file.  ``check_output`` refuses to replace an existing output unless
asked, and never replaces an input.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import WriteError, os_error_message
from .trust import inside


def json_sha256(value) -> str:
    """The SHA-256 (hex) of a JSON value written with sorted keys: the one way we hash a description."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def writing(path, doing: str = "writing"):
    """Turn an OSError inside the block into a WriteError naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(os_error_message(e, path, doing)) from e


def _temporary(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


@contextmanager
def atomic_file(path):
    """Yield a temporary path beside ``path``; when the block ends cleanly, fsync it and rename it over ``path``.

    On any error (a full disk included) the temporary file is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with writing(path):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(path.parent)
    finally:
        try:
            tmp.unlink(missing_ok=True)  # gone already after the rename
        except OSError:  # a read-only file system refuses even to remove what is not there
            pass


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (created with the umask's permissions)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_bytes(path, _json_bytes(obj))


def create_json_once(path, obj) -> bool:
    """Write ``obj`` as JSON to ``path`` unless a file is there already; True when this call created it.

    The file is written whole and fsynced under a temporary name, then linked into
    place: ``link`` never replaces and is atomic on local and network file systems
    alike, so of several processes creating the same file at once exactly one
    succeeds and none sees half of it.
    """
    path = Path(path)
    data = _json_bytes(obj)
    with writing(path):
        if not path.parent.is_dir():
            raise FileNotFoundError(2, "No such directory", str(path.parent))
        for _ in range(3):  # a writer tidying the directory may remove our staged file: stage it again
            staged = path.with_name(f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                with open(staged, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(staged, path)
            except FileExistsError:
                return False
            except FileNotFoundError:
                continue
            finally:
                staged.unlink(missing_ok=True)
            fsync_dir(path.parent)
            return True
        raise OSError(f"could not create {path}: its temporary file kept disappearing")


def check_output(path, inputs=(), overwrite: bool = False, flag: str = "out", kind: str = "file") -> Path:
    """Refuse an output that would destroy an input (always) or that exists (unless ``overwrite``).

    ``inputs`` holds ``(flag, path)`` pairs (files or directories: data, caches, models),
    so the message can say which input it is.  Paths are compared with links resolved:
    an output that is an input, contains one or lies inside one is refused, with or
    without ``overwrite``, and so is a system directory (``/``, ``/etc``, the home
    directory...).  ``kind`` says what the output is: ``file`` (an existing directory
    is never replaced), ``model`` (an existing directory must be a saved model) or
    ``encoder`` (a sentence-transformers directory).  Creates the output's parent directory.  Returns the output as a Path.
    """
    path = Path(path)
    check_not_input(path, inputs, flag)
    if path.exists() and not overwrite:
        what = "directory" if path.is_dir() else "file"
        how = "--overwrite" if flag.startswith("--") else "overwrite=True"
        raise WriteError(f"{flag} {path}: a {what} of that name exists; pass {how} to replace it")
    if path.exists():
        if kind == "file" and path.is_dir():
            raise WriteError(f"{flag} {path} is a directory; give a file name")
        if kind == "model" and not (path.is_dir() and is_model_directory(path)):
            raise WriteError(
                f"{flag} {path} exists and is not a model directory (config.json and model.safetensors); "
                "it is never replaced: write to another path"
            )
        if kind == "encoder" and not (path / "modules.json").is_file():
            raise WriteError(
                f"{flag} {path} exists and is not an encoder directory (modules.json); it is never "
                "replaced: write to another path"
            )
    with writing(path.parent, "creating"):
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.is_dir():
        raise WriteError(f"{flag} {path}: {path.parent} is not a directory")
    return path


def is_model_directory(path) -> bool:
    """Whether ``path`` holds a saved head model, or only what a fine-tuning run stages in the directory it
    will save to (what a model output may replace)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return True
    return path.is_dir() and all(p.name in ("checkpoints", ".encoder-new") for p in path.iterdir())


def check_not_input(path, inputs=(), flag: str = "out") -> None:
    """Refuse an output ``path`` that is, contains or lies inside one of ``inputs`` (``(flag, path)`` pairs),
    links resolved, or that is a system directory; a WriteError naming both."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if real in system_directories():
        raise WriteError(f"{flag} {path} is the system directory {real}: give a directory of its own")
    for name, source in inputs:
        if source is None:
            continue
        if real == Path(os.path.realpath(source)) or _same(path, Path(source)):
            how = "is"
        elif inside(path, source):
            how = "lies inside"
        elif inside(source, path):
            how = "contains"
        else:
            continue
        raise WriteError(
            f"{flag} {path} {how} the input {name} {source}: writing it would destroy the input; write to another path"
        )


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def system_directories() -> set[Path]:
    """Directories no output or cache may be: the root, the system's top-level folders, the home directory."""
    names = (
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/mnt",
        "/media",
    )
    return {Path(os.path.realpath(n)) for n in names} | {Path(os.path.realpath(Path.home()))}


_RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths in one atomic step (Linux >= 3.15)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextmanager
def atomic_directory(path):
    """Yield an empty temporary directory beside ``path``; when the block ends cleanly it replaces ``path``.

    An existing directory at ``path`` stays whole until the new one is: the two are
    swapped in one atomic rename where the system allows it (Linux), else the old one
    is moved aside first.  A crash at any instant leaves the old or the new directory
    at ``path``, never a mix; an error leaves the old one.
    """
    path = Path(path)
    tmp = _temporary(path)
    for stale in path.parent.glob(f".tmp-{path.name}-*"):  # left by a writer that was killed
        if stale.is_dir() and not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        with writing(path):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            if not path.exists():
                os.rename(tmp, path)
            elif not _exchange(tmp, path):
                aside = path.with_name(f".old-{path.name}-{os.getpid()}")
                os.rename(path, aside)
                os.rename(tmp, path)
                shutil.rmtree(aside, ignore_errors=True)
            fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the old directory


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def hash_files(paths: list[Path]) -> str:
    """sha256 over the names and contents of ``paths`` (in name order), read in 4 MB blocks."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()
