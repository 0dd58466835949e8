"""``image_url`` parts -> image tensors: ``data:`` URLs always, local files only under an allowed folder.

Remote (http/https) URLs are refused: the server never fetches from the network on a client's behalf."""
from __future__ import annotations

import base64
import binascii
import io
import os

from lavis_lite.serve.errors import bad_request


def decode_image_url(url: str, param: str, allowed_dir: str | None, max_pixels: int):
    """The PIL image an ``image_url.url`` points to; a 400 ``ApiError`` naming ``param`` otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url must be a non-empty string", param)
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header or not header[5:].startswith("image/"):
            raise bad_request("image data URLs must look like data:image/<type>;base64,<data>", param, "invalid_image")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("the image data URL is not valid base64", param, "invalid_image") from None
        source, name = io.BytesIO(raw), "the data URL"
    elif url.startswith(("http://", "https://")):
        raise bad_request("remote image URLs are not fetched by this server; send a data: URL", param,
                          "invalid_image")
    else:
        path = url[len("file://"):] if url.startswith("file://") else url
        source = name = _allowed_path(path, param, allowed_dir)
    try:
        with Image.open(source) as img:
            if img.width * img.height > max_pixels:
                raise bad_request(f"the image in {name} has {img.width}x{img.height} pixels, more than the "
                                  f"server's limit of {max_pixels}", param, "image_too_large")
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise bad_request(f"{name} is not a readable image: {err}", param, "invalid_image") from None


def _allowed_path(path: str, param: str, allowed_dir: str | None) -> str:
    if allowed_dir is None:
        raise bad_request("local image paths are disabled on this server (start it with --allow-local-images DIR) "
                          "; send a data: URL", param, "invalid_image")
    real = os.path.realpath(path if os.path.isabs(path) else os.path.join(allowed_dir, path))
    root = os.path.realpath(allowed_dir)
    if os.path.commonpath([real, root]) != root:
        raise bad_request(f"image path {path!r} is outside the allowed folder", param, "invalid_image")
    if not os.path.isfile(real):
        raise bad_request(f"image file {path!r} does not exist in the allowed folder", param, "invalid_image")
    return real
