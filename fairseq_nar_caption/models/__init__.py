from . import ar_caption  # noqa: F401
