"""Images as the package reads them: one rule for every reader (feature extraction, the hub, the
vision-language datasets and scorer).

``to_rgb`` turns a decoded PIL image into 8-bit RGB: 16-bit greyscale (PIL modes ``I;16*``, and
``I`` from a PNG when its values fit 16 bits) is scaled to 8 bits (value // 257), never clipped
to white; 32-bit integer and floating-point images have no one mapping to 8-bit colours and are
refused naming the file and the mode; every other mode (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr,
48-bit RGB PNGs, which Pillow reads as RGB) is converted by PIL.  ``load_image`` opens, fully
decodes and converts a file, or raises one DataError naming it.
"""
import numpy as np

from ..errors import DataError


def to_rgb(im, path: str):
    """An opened, decoded PIL image as 8-bit RGB (see the module docstring), or one DataError
    naming the file and the mode."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise DataError(f"{path}: a {mode} image with values outside 0..65535 "
                            f"({int(a.min())}..{int(a.max())}); save it with 8 or 16 bits per channel")
        grey = (a.astype(np.uint32) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")  # 2-D uint8: mode L
    if mode == "I" or mode.startswith("I;32"):
        raise DataError(f"{path}: a 32-bit integer image (PIL mode {mode}) has no one mapping to 8-bit "
                        f"colours; save it with 8 or 16 bits per channel")
    if mode == "F" or mode.startswith("F;"):
        raise DataError(f"{path}: a floating-point image (PIL mode {mode}) has no one mapping to 8-bit "
                        f"colours; save it with 8 or 16 bits per channel")
    return im.convert("RGB")


def load_image(path: str):
    """The image as 8-bit RGB PIL, fully decoded, or one DataError naming the file (high bit
    depths: see the module docstring)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            return to_rgb(im, path)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a decodable image ({e})") from None
