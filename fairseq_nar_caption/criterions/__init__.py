from . import nacf_loss  # noqa: F401
from . import group_mask  # noqa: F401
