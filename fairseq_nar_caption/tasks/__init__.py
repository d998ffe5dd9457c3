from . import captioning  # noqa: F401
from . import vision_language  # noqa: F401
from . import rdt_captioning  # noqa: F401
