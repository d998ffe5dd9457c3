from . import ar_caption  # noqa: F401
from . import nacf  # noqa: F401
from . import saic  # noqa: F401
from . import narvl  # noqa: F401
from . import rdt  # noqa: F401
