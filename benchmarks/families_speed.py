"""CPU and wall seconds of one RISE run per model family: the same picture, question and masks through each adapter.

    python benchmarks/families_speed.py --masks 2000            # CPU
    python benchmarks/families_speed.py --masks 20000 --device cuda

Every model has random weights at the size of a real one (speed does not depend on the weight values)
and is written to disk in its library's own format, then loaded by name like real weights:
OpenAI CLIP ViT-B/32 (`clip`), open_clip ViT-B-32 (`open_clip:ViT-B-32 --weights`), transformers
CLIPModel (ViT-B/32 sizes) and SiglipModel (base, 16 px patches, 224 px) from `hf:DIR`, and a
torchvision ResNet-18 through `cc.wrap` (image corpus).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.models.random_models import _clip_tokenizer, _sentencepiece_tokenizer, write_checkpoint  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
QUESTION = cc.Question(corpus=["woman"], foil=["rocket"])


def builders(root: Path, device: str) -> dict[str, Callable[[], cc.Model]]:
    """How to build and load each family's model, by name (built only when its turn comes)."""
    import open_clip
    import torchvision
    import transformers

    def open_clip_model() -> cc.Model:
        torch.save(open_clip.create_model("ViT-B-32").state_dict(), root / "open_clip.pt")
        return cc.load("open_clip:ViT-B-32", weights=root / "open_clip.pt", device=device)

    def hf_model(kind: str) -> cc.Model:
        folder = root / kind
        folder.mkdir()
        if kind == "clip":
            transformers.CLIPModel(transformers.CLIPConfig()).save_pretrained(folder)
            transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(),
                                       tokenizer=_clip_tokenizer(folder)).save_pretrained(folder)
        else:
            transformers.SiglipModel(transformers.SiglipConfig()).save_pretrained(folder)
            transformers.SiglipProcessor(image_processor=transformers.SiglipImageProcessor(),
                                         tokenizer=_sentencepiece_tokenizer(folder)).save_pretrained(folder)
        return cc.load(f"hf:{folder}", device=device)

    def resnet() -> cc.Model:
        backbone = torchvision.models.resnet18().to(device)
        return cc.wrap(backbone, n_px=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    return {
        "clip ViT-B/32": lambda: cc.load(weights=write_checkpoint(root / "clip.pt", "ViT-B/32"), device=device),
        "open_clip ViT-B-32": open_clip_model,
        "hf CLIPModel B/32": lambda: hf_model("clip"),
        "hf SiglipModel B/16": lambda: hf_model("siglip"),
        "wrap ResNet-18": resnet,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=(), help="run only the families whose name contains one of these")
    args = parser.parse_args()
    image_question = cc.Question(corpus_images=[ASTRONAUT], foil_images=[cc.load_image(ASTRONAUT).rotate(90)])
    print(f"RISE, {args.masks} masks, {ASTRONAUT.name}, pad framing, device {args.device}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        for name, build in builders(Path(folder), args.device).items():
            if args.only and not any(part in name for part in args.only):
                continue
            torch.manual_seed(0)
            model = build()
            question = image_question if name.startswith("wrap") else QUESTION
            started, cpu = time.perf_counter(), time.process_time()
            answer = cc.explain(model, ASTRONAUT, question, masks=args.masks, cache=None)
            # CPU seconds (all threads) say the work done even on a machine shared with other jobs; wall seconds
            # are what a user waits on an idle machine.
            print(f"{name:22s} {model.n_px:4d} px  {answer.details['precision']:5s}  "
                  f"{time.process_time() - cpu:7.1f} CPU s  {time.perf_counter() - started:7.1f} wall s  "
                  f"(batch {answer.details['batch_size']})", flush=True)


if __name__ == "__main__":
    main()
