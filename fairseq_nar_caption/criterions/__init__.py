from . import nacf_loss  # noqa: F401
