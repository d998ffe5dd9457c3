from . import nacf_loss  # noqa: F401
from . import group_mask  # noqa: F401
from . import query_ctc  # noqa: F401
from . import rdt_loss  # noqa: F401
