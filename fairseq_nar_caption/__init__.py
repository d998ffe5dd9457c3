"""fairseq_nar_caption: non-autoregressive captioning as fairseq plugins.

Load with ``fairseq-train --user-dir <repo>/fairseq_nar_caption`` (and the same
for fairseq-generate).  fairseq's --user-dir auto-imports only ``tasks/`` and
``models/``; everything that registers is imported here instead, and our
checkpoints are made loadable under torch's ``weights_only`` protection.
"""
import logging

# fairseq leaves the root logger at DEBUG in some entry points; h5py then floods stderr
logging.getLogger("h5py").setLevel(logging.WARNING)

from . import checkpoint  # noqa: E402,F401  (allow-lists fairseq checkpoint globals)
from . import criterions  # noqa: E402,F401
from . import generators  # noqa: E402,F401  (registry, before tasks read it)
from . import models  # noqa: E402,F401
from . import tasks  # noqa: E402,F401
