"""Any PIL image to 8-bit RGB, scaling wide modes instead of clipping them.

PIL's own ``convert("RGB")`` clips 16-bit and 32-bit modes at 255, so a 16-bit grayscale PNG
(mode ``I;16``, values up to 65535) becomes almost entirely white. Here integer modes wider
than 8 bits are scaled from their 16-bit range, floating-point images from [0, 1] (or taken as
they are when they already lie in [0, 255] with integral values), and alpha is dropped after
the palette is resolved (a palette with a transparent entry keeps its colours).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Modes PIL decodes 16-bit files into (``I;16`` and its byte orders; ``I`` for 16-bit PNGs in
# recent Pillow versions).
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Returns ``image`` as an 8-bit RGB image.

    Args:
      image: a decoded PIL image of any mode.

    Returns:
      An ``RGB`` image of the same size.

    Raises:
      ValueError: for values that cannot be mapped to 8 bits without guessing (negative or
        above 65535 in integer modes, outside [0, 1] and not 8-bit integers in mode ``F``);
        the message names the mode and the range found.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image, dtype=np.int64)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise ValueError(
                f"mode {mode} image with values in [{low}, {high}]: expected 0..65535; "
                "convert it to 8-bit RGB first."
            )
        gray = np.round(values / 257.0).astype(np.uint8)  # 65535 -> 255, 32896 -> 128
        return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("mode F image with non-finite values; convert it to 8-bit first.")
        if 0.0 <= low and high <= 1.0:
            gray = np.round(values * 255.0)
        elif 0.0 <= low and high <= 255.0 and np.all(values == np.round(values)):
            gray = values
        else:
            raise ValueError(
                f"mode F image with values in [{low:g}, {high:g}]: expected [0, 1] (or 8-bit "
                "integers); convert it to 8-bit RGB first."
            )
        gray = gray.astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    if mode == "P" and "transparency" in image.info:
        # Through RGBA: PIL warns and may mis-map a transparent palette entry otherwise.
        return image.convert("RGBA").convert("RGB")
    if mode in ("LA", "La", "PA"):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")
