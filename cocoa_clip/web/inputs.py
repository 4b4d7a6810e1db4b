"""Checking what the web app's widgets and HTTP API callers send, before the library sees it.

Every value from a browser or an API client is untrusted: each function here takes the raw value
and returns it checked (or raises gr.Error with one sentence to act on). Uploads must lie in
Gradio's upload folder, so that no caller can name a file on the server.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import gradio as gr
from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from gradio import utils as gradio_utils
from PIL import Image
from starlette.exceptions import HTTPException

import cocoa_clip as cc
from cocoa_clip.engine.auto import mask_count
from cocoa_clip.errors import shown

log = logging.getLogger("cocoa_clip.app")

# Limits, enforced by the widgets and checked again on the server (API callers bypass the widgets).
MAX_CAPTIONS = 32                 # captions per box
MAX_CAPTION_CHARS = 300           # per caption (CLIP reads 77 tokens; the library truncates and says so)
MAX_TEXT_CHARS = MAX_CAPTIONS * (MAX_CAPTION_CHARS + 1)
MAX_TEMPLATE_CHARS = 200
MAX_EXAMPLE_IMAGES = 8            # images per corpus or foil
MAX_SEED = 2 ** 31 - 1
MAX_UPLOAD = "20mb"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_SIDE = 2048                   # larger pictures are explained, and answered, at this size (aspect ratio kept)

@contextlib.contextmanager
def user_errors():
    """Turn the library's errors into gr.Error with the same sentence; log and hide anything else."""
    try:
        yield
    except gr.Error:
        raise
    except cc.CocoaError as error:
        raise gr.Error(str(error), print_exception=False) from error
    except MemoryError as error:
        raise gr.Error("The server ran out of memory; try fewer masks or a smaller picture.") from error
    except Exception as error:
        log.exception("explain failed")
        raise gr.Error("Something went wrong on the server while explaining; please try again.") from error


def refuse(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def upload_path(value: Any, what: str) -> str | None:
    """The server-side path of an upload.

    Gradio passes uploads as FileData dicts; their path must lie in Gradio's upload folder, so that an
    API caller cannot name a file on the server. Plain paths come from direct Python calls only
    (Gradio's data models refuse strings).
    """
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        path = value.get("path")
        if path is None:
            return None
        if not isinstance(path, str) or not in_folder(path, gradio_utils.get_upload_folder()):
            raise refuse(f"The {what} must be a file uploaded to this app.")
        return path
    if not isinstance(value, (str, os.PathLike)):
        raise refuse(f"The {what} must be an uploaded file; got {type(value).__name__}.")
    return os.fspath(value)


def in_folder(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def read_upload(value: Any, what: str) -> bytes | None:
    path = upload_path(value, what)
    if path is None:
        return None
    try:
        if os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise refuse(f"The {what} is larger than {MAX_UPLOAD}; send a smaller file.")
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise refuse(f"The {what} could not be read; upload it again.") from error


def picture(value: Any) -> tuple[Image.Image, str]:
    """The uploaded picture, checked from its header before decoding, then downscaled to MAX_SIDE;
    and a sentence saying so when it was (else "")."""
    data = read_upload(value, "image")
    if data is None:
        raise refuse("Upload an image first (PNG, JPEG, WebP, ...).")
    picture = cc.load_image(data)
    if max(picture.size) <= MAX_SIDE:
        return picture, ""
    width, height = picture.size
    picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return picture, (f"The picture is {width:,} x {height:,} px; this app explains pictures of at most "
                     f"{MAX_SIDE:,} px a side, so it was scaled down and the maps come at "
                     f"{picture.width:,} x {picture.height:,} px.")


def image_files(value: Any, where: str) -> list[bytes]:
    items = [] if value is None else value if isinstance(value, (list, tuple)) else [value]
    if len(items) > MAX_EXAMPLE_IMAGES:
        raise refuse(f"Give at most {MAX_EXAMPLE_IMAGES} {where} images; got {len(items)}.")
    images = []
    for index, item in enumerate(items, 1):
        data = read_upload(item, f"{where} image {index}")
        if data is None:
            continue
        try:
            cc.load_image(data)
        except cc.CocoaError as error:
            raise refuse(f"{where.capitalize()} image {index}: {error}") from error
        images.append(data)
    return images


def captions(value: Any, where: str) -> list[str]:
    """Captions from a text box, one per line, blank lines skipped."""
    if value is None:
        return []
    if not isinstance(value, str):
        raise refuse(f"The {where} must be text, one caption per line; got {type(value).__name__}.")
    if len(value) > MAX_TEXT_CHARS:
        raise refuse(f"The {where} is too long: at most {MAX_CAPTIONS} captions of {MAX_CAPTION_CHARS} characters.")
    captions = [line for line in value.splitlines() if line.strip()]
    if len(captions) > MAX_CAPTIONS:
        raise refuse(f"Give at most {MAX_CAPTIONS} {where} captions; got {len(captions)}.")
    for index, caption in enumerate(captions, 1):
        if len(caption) > MAX_CAPTION_CHARS:
            raise refuse(f"{where.capitalize()} caption {index} is longer than {MAX_CAPTION_CHARS} characters.")
    return captions


def template(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return cc.DEFAULT_TEMPLATE
    if not isinstance(value, str):
        raise refuse(f"The template must be text with {{}} where the caption goes; got {type(value).__name__}.")
    if len(value) > MAX_TEMPLATE_CHARS:
        raise refuse(f"The template is longer than {MAX_TEMPLATE_CHARS} characters.")
    return value


def choice(value: Any, what: str, choices: Any) -> str:
    if not isinstance(value, str) or value not in choices:
        raise refuse(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")
    return value


def preset(value: Any) -> str | None:
    """The foil preset's name, or None for "none"."""
    value = choice(value, "foil preset", ["none", *cc.FOIL_PRESETS])
    return None if value == "none" else value


def flag(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise refuse(f"The {what} option must be true or false; got {value!r}.")
    return value


def whole(value: Any, what: str, low: int, high: int, default: int) -> int:
    """A whole number in [low, high]; None gives the default; 3.0 counts as 3 (sliders send floats)."""
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise refuse(f"The {what} must be a whole number from {low:,} to {high:,}; got {shown(value)}.")
    return value


def masks(value: Any, device: str, high: int) -> int | str:
    """RISE's mask count from the box or an API call, as the library reads it (engine.auto.mask_count: "auto"
    for 0 or "auto", the device's default for None, else a whole number from 1 to `high`); its sentence if not."""
    try:
        return mask_count(value, device, high)
    except cc.SettingsError as error:
        raise refuse(str(error)) from error


def number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise refuse(f"The {what} must be a number from {low} to {high}; got {value!r}.")
    return float(value)


# What Gradio says when it refuses a request's inputs before the app's code runs, and what we say instead.
GRADIO_REFUSALS = (
    ("not uploaded by a user", "Files must be uploaded to this app first (gradio_client's handle_file does it); "
                               "paths on the server are refused."),
    ("for ImageData", "The image must be a file uploaded to this app (gradio_client's handle_file), "
                      "not a path or another value."),
    ("for ListFiles", "Corpus and foil images must be a list of files uploaded to this app "
                      "(gradio_client's handle_file)."),
    ("for FileData", "Each file must be one uploaded to this app (gradio_client's handle_file)."),
    ("failed validation", "The app fetches no addresses: upload the file itself (gradio_client's handle_file)."),
    ("receive enough input values", "Some inputs are missing: send every parameter the endpoint lists "
                                    "(the app's 'Use via API' page shows them)."),
    ("not in the list of choices", "A choice is not one the app offers: send one of the values the endpoint "
                                   "lists (the app's 'Use via API' page shows them)."),
)


async def gradio_refusal(request: Request, error: HTTPException) -> Response:
    """FastAPI's handler for HTTP errors: Gradio's refusals of a request's inputs become one of our
    sentences (as a validation error, which both gradio_client and the browser show) and one log line."""
    detail = error.detail if isinstance(error.detail, str) else ""
    sentence = next((ours for theirs, ours in GRADIO_REFUSALS if theirs in detail), None)
    if error.status_code != 400 or sentence is None:
        return await http_exception_handler(request, error)
    log.warning("refused a request's inputs: %s", detail.splitlines()[0] if detail else "")
    return JSONResponse({"detail": [{"__type__": "validate", "is_valid": False, "message": sentence,
                                     "parameter_name": "inputs"}]}, status_code=422)
