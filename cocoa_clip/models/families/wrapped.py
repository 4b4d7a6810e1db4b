"""Any PyTorch encoder as a model the whole library explains: `cocoa_clip.wrap`.

COCOA explains any representation (the paper's main experiments explain image-only encoders
such as SimCLR and MoCo, with image corpora and foils). Without a text side, questions use
corpus and foil images; captions are refused in a sentence.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...errors import SettingsError
from ..encoder import MEAN, STD, Model, Preprocessing

Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(eq=False, kw_only=True)
class WrappedModel(Model):
    """An image encoder (normalised (B, 3, n_px, n_px) -> (B, ...)), and optionally a tokenizer
    (captions -> (T, L) token tensor) with a text encoder (tokens -> (T, D))."""

    image_encoder: Encoder
    text_encoder: Encoder | None = None
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None
    scale: float | None = None
    family: str = "wrap"

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 0)) or len(self.token_ids(""))

    def encode_normalised(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(normalised).flatten(1)  # shape = [B, D]; feature maps become vectors

    def token_ids(self, text: str) -> tuple[int, ...]:
        return tuple(int(token) for token in self.tokenizer([text])[0])

    def _embed_captions(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.tokenizer(texts).to(self.device)).flatten(1)

    @property
    def logit_scale(self) -> float | None:
        return self.scale


def wrap(
    image_encoder: Encoder,
    *,
    n_px: int,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    text_encoder: Encoder | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    name: str | None = None,
    resize: str = "shortest",
    interpolation: str = "bicubic",
    logit_scale: float | None = None,
    precision: str = "fp32",
) -> WrappedModel:
    """Turn any PyTorch image encoder (a torchvision or timm backbone, a self-supervised ResNet, ...) into a model.

    image_encoder: normalised (B, 3, n_px, n_px) -> (B, D) (other output shapes are flattened), called in
    eval mode without gradients for RISE and with gradients for Integrated Gradients. mean, std: its
    input normalisation. resize, interpolation: its own preprocessing ("shortest" side and centre crop,
    or "squash"), what the "model" framing does. text_encoder with tokenizer (captions -> (T, L) tokens):
    captions as questions; without them, ask with corpus and foil images. logit_scale: the temperature
    of its zero-shot head, for the probability measure. The device is the encoder's.

    >>> import torchvision                                                    # doctest: +SKIP
    >>> resnet = torchvision.models.resnet18().eval()                         # doctest: +SKIP
    >>> model = wrap(resnet, n_px=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # doctest: +SKIP
    >>> explain(model, "dog.jpg", Question(corpus_images=["dog2.jpg"], foil_images=["cat.jpg"]))  # doctest: +SKIP
    """
    if not callable(image_encoder):
        raise SettingsError("wrap needs an image encoder: a module or function from pixels to embeddings.")
    if (text_encoder is None) != (tokenizer is None):
        raise SettingsError("wrap takes a text encoder and a tokenizer together, or neither.")
    if not (isinstance(n_px, int) and n_px >= 8):
        raise SettingsError(f"n_px is the side of the encoder's square input in pixels; got {n_px!r}.")
    if len(tuple(mean)) != 3 or len(tuple(std)) != 3:
        raise SettingsError("mean and std are three numbers each, one per RGB channel.")
    try:
        preprocessing = Preprocessing(n_px, tuple(map(float, mean)), tuple(map(float, std)), resize, interpolation)
    except ValueError as error:
        raise SettingsError(f"{error} Use resize 'shortest' or 'squash' and interpolation 'bicubic', 'bilinear' "
                            "or 'nearest'.") from error
    parameter = next(iter(image_encoder.parameters()), None) if isinstance(image_encoder, torch.nn.Module) else None
    for module in (image_encoder, text_encoder):
        if isinstance(module, torch.nn.Module):
            module.eval()
    return WrappedModel(image_encoder=image_encoder, text_encoder=text_encoder, tokenizer=tokenizer,
                        scale=logit_scale, name=name or type(image_encoder).__name__,
                        device=parameter.device if parameter is not None else torch.device("cpu"),
                        precision=precision, preprocessing=preprocessing)
