"""fairseq_nar_caption: non-autoregressive captioning as fairseq plugins.

Load with ``fairseq-train --user-dir <repo>/fairseq_nar_caption`` (and the same
for fairseq-generate).  fairseq's --user-dir auto-imports only ``tasks/`` and
``models/``; everything that registers is imported here instead, and our
checkpoints are made loadable under torch's ``weights_only`` protection.

Under fairseq's commands and ours, our known errors (bad data, options, checkpoints)
print one line naming the file, the item and the fix instead of a traceback
(``cli/common.py``; ``NAR_CAPTION_TRACEBACK=1`` brings the traceback back).
"""
import logging

# fairseq leaves the root logger at DEBUG in some entry points; h5py then floods stderr
logging.getLogger("h5py").setLevel(logging.WARNING)
# fairseq imports every task module; its text-to-speech task then asks for tensorboardX on each run
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)

from .cli import common as _common  # noqa: E402

_common.install_excepthook()

from . import checkpoint  # noqa: E402,F401  (allow-lists fairseq checkpoint globals, wraps fairseq's loading)
from . import criterions  # noqa: E402,F401
from . import generators  # noqa: E402,F401  (registry, before tasks read it)
from . import models  # noqa: E402,F401
from . import tasks  # noqa: E402,F401
