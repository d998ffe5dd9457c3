"""Small helpers shared across the package."""
import os
import tempfile


def atomic_write_text(path: str, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never
    see half a file and a failure leaves the old file (or none) in place."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
