from . import ar_caption  # noqa: F401
from . import nacf  # noqa: F401
from . import saic  # noqa: F401
