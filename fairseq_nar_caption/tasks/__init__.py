from . import captioning  # noqa: F401
