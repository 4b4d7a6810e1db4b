#!/usr/bin/env python
"""Train the small demo CLIP on procedurally generated shape scenes.

The model is the ``clip`` package's own ``clip.model.CLIP`` (ViT image tower),
trained from scratch with a CLIP-style contrastive loss on (scene, caption)
pairs, and saved as an fp16 TorchScript archive that ``cocoa_clip.load`` and ``clip.load`` read.

Recipe (see ``--help`` for the knobs):

* data: a pool of seeded scenes from :func:`cocoa_clip.models.shapes.render_scene`
  (1-4 objects, 64 px), random horizontal/vertical flips;
* RISE-like occlusion: most training images have part of the scene replaced by
  its Gaussian-blurred copy through a random bilinear-upsampled grid mask (the
  same kind of mask and baseline that RISE uses at explanation time);
  an object counts as *visible* if >= ``--vis-hi`` of its pixels survive,
  *hidden* if < ``--vis-lo`` survive, and ambiguous in between;
* captions: each image is paired with one random visible object, worded with a
  random template (including "This is a photo of a {}" and plain "{}");
* loss: image->text cross-entropy over ALL 30 object names (so same-colour and
  same-shape hard negatives are always present; hidden objects are negatives,
  other visible/ambiguous objects of the image are left out) plus
  text->image cross-entropy over the batch (images that also show the object are
  left out); learnable temperature;
* optional (``--aux-weight``, off by default) auxiliary multi-label head (a
  linear layer on the image embedding, training only, not saved) predicting
  which of the 30 objects are visible.

Known limitation: this recipe learns COLOUR but not SHAPE.  The text embeddings
of "red circle" and "red square" end up identical (cosine ~1.0) and a linear
probe finds almost no shape information in the image embedding; the towers sit
at a saddle where neither encodes shape.  The aux head (one 2400-step CPU run)
did not break it.  The two-object benchmark still works because its two
objects always differ in colour; zero-shot accuracy over all 30 names is low.

Example::

    python scripts/train_shapes_demo.py --steps 2400 --out cocoa_clip/weights/shapes-demo.pt
    # on a slow/shared machine add e.g. --minutes 22 (time-based LR schedule, stops in time)
    python benchmarks/localization.py --scenes 50 --masks 1000 --methods rise --no-curves
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import clip  # noqa: E402
from clip.model import CLIP  # noqa: E402

from cocoa_clip.engine.images import blur  # noqa: E402
from cocoa_clip.engine.masks import sample_masks  # noqa: E402
from cocoa_clip.models.shapes import CLASS_NAMES, render_scene  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEMPLATES = (
    "This is a photo of a {}",
    "This is a photo of a {}.",
    "a photo of a {}",
    "a photo of a {}.",
    "{}",
    "a {}",
    "a picture of a {}.",
    "an image with a {}.",
    "there is a {} in the picture.",
    "a drawing of a {}",
)

MAX_OBJ = 4


def grid_masks(gen: torch.Generator, n: int, size: int, grid: int, p: float) -> torch.Tensor:
    """RISE masks ``(n, 1, size, size)`` in [0, 1], drawn by the library from a seed taken from ``gen``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return sample_masks(n, (size, size), grid=grid, p_keep=p, seed=seed).render(0, n)[:, None]


def build_pool(rng: np.random.Generator, n: int, size: int, **scene_kw):
    """Pre-render ``n`` scenes: images uint8 (n, H, W, 3), label maps int8 (n, H, W), classes int64 (n, MAX_OBJ)."""
    imgs = np.zeros((n, size, size, 3), np.uint8)
    labels = np.zeros((n, size, size), np.int8)
    classes = np.full((n, MAX_OBJ), -1, np.int64)
    for i in range(n):
        sc = render_scene(rng, size, **scene_kw)
        imgs[i] = np.asarray(sc.image)
        labels[i] = sc.label_map()
        for k, o in enumerate(sc.objects):
            classes[i, k] = o.class_index
    return torch.from_numpy(imgs), torch.from_numpy(labels), torch.from_numpy(classes)


def make_model(args) -> CLIP:
    return CLIP(
        embed_dim=args.embed_dim,
        image_resolution=args.size,
        vision_layers=args.vision_layers,
        vision_width=args.vision_width,
        vision_patch_size=args.patch,
        context_length=77,
        vocab_size=49408,
        transformer_width=args.text_width,
        transformer_heads=max(1, args.text_width // 64),
        transformer_layers=args.text_layers,
    )


def param_groups(model: torch.nn.Module, wd: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in n or n in ("logit_scale",) or "ln" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="cocoa_clip/weights/shapes-demo.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2400, help="optimizer steps (defines the LR schedule)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="wall-clock budget (0 = none).  If set, the LR schedule runs on "
                         "max(step / steps, elapsed / budget), so a slow machine still anneals and "
                         "saves in time (at the cost of bit-reproducibility)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--pool", type=int, default=16000, help="number of pre-rendered scenes")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-objects", type=int, default=MAX_OBJ, help=f"objects per scene, 1..{MAX_OBJ}")
    ap.add_argument("--min-frac", type=float, default=0.2, help="smallest object side / image side")
    ap.add_argument("--max-frac", type=float, default=0.4, help="largest object side / image side")
    # occlusion augmentation
    ap.add_argument("--p-clean", type=float, default=0.1, help="fraction of images left unoccluded")
    ap.add_argument("--keep-min", type=float, default=0.25)
    ap.add_argument("--keep-max", type=float, default=0.75)
    ap.add_argument("--grid-min", type=int, default=4)
    ap.add_argument("--grid-max", type=int, default=9)
    ap.add_argument("--vis-hi", type=float, default=0.6, help="visible if this fraction of the object is kept")
    ap.add_argument("--vis-lo", type=float, default=0.25, help="hidden if less than this fraction is kept")
    ap.add_argument("--aux-weight", type=float, default=0.0, help="weight of the auxiliary visible-object loss")
    ap.add_argument("--n-templates", type=int, default=3, help="templates encoded per step")
    # architecture
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--vision-width", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-width", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=64)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()

    print(f"rendering {args.pool} scenes ...", flush=True)
    imgs, labels, classes = build_pool(
        rng, args.pool, args.size, max_objects=args.max_objects, min_frac=args.min_frac, max_frac=args.max_frac
    )
    print(f"  done in {time.time() - t0:.0f}s", flush=True)

    n_cls = len(CLASS_NAMES)
    tokens = torch.stack([clip.tokenize([t.format(c) for c in CLASS_NAMES]) for t in TEMPLATES]).to(dev)  # [T, 30, 77]
    mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1)

    model = make_model(args).to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    without_tokens = (n_params - 49408 * args.text_width) / 1e6
    print(f"model: {n_params / 1e6:.2f}M params ({without_tokens:.2f}M without token embedding)")
    # auxiliary multi-label head on the image embedding (training only, not saved): which of the
    # 30 objects are visible.  Without it the two towers sit at a saddle where neither encodes
    # shape (the text embeddings of "red circle" and "red square" stay identical, so the image
    # tower gets no gradient to tell circles from squares, and vice versa); colour alone is learned.
    aux = torch.nn.Linear(args.embed_dim, n_cls).to(dev)
    groups = param_groups(model, args.wd)
    groups[0]["params"] += list(aux.parameters())
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, int(args.warmup * args.steps))

    def progress(step: int) -> float:
        q = step / args.steps
        if args.minutes > 0:
            q = max(q, (time.time() - t_train) / (args.minutes * 60))
        return q

    def lr_at(q: float) -> float:  # q: progress in [0, 1]; linear warmup then cosine decay
        w = warm / args.steps
        if q < w:
            return args.lr * max(q, 1 / args.steps) / w
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (q - w) / (1 - w))))

    B = args.batch
    ar = torch.arange(B, device=dev)
    stats = []
    t_train = time.time()
    for step in range(args.steps):
        q = progress(step)
        if q >= 1.0:
            print(f"time budget of {args.minutes} min used up at step {step}; stopping", flush=True)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(q)
        # ---- batch: images (B, 3, H, W) in [0, 1], labels (B, H, W), classes (B, MAX_OBJ)
        idx = torch.from_numpy(rng.integers(0, args.pool, B))
        x = imgs[idx].permute(0, 3, 1, 2).float().div(255)
        lab = labels[idx].long()
        cls = classes[idx]
        if rng.random() < 0.5:
            x, lab = x.flip(-1), lab.flip(-1)
        if rng.random() < 0.5:
            x, lab = x.flip(-2), lab.flip(-2)
        # ---- RISE-like occlusion with a blurred baseline
        grid = int(rng.integers(args.grid_min, args.grid_max + 1))
        p = float(rng.uniform(args.keep_min, args.keep_max))
        m = grid_masks(gen, B, args.size, grid, p)  # [B, 1, H, W]
        clean = torch.rand(B, generator=gen) < args.p_clean
        m[clean] = 1.0
        x = m * x + (1 - m) * blur(x, args.size)  # the RISE baseline, as cocoa_clip explains
        # ---- visibility of each object: fraction of its pixels kept, [B, MAX_OBJ]
        onehot = F.one_hot(lab + 1, MAX_OBJ + 1)[..., 1:].float()  # [B, H, W, MAX_OBJ]
        area = onehot.sum((1, 2))
        vis = (m[:, 0, :, :, None] * onehot).sum((1, 2)) / area.clamp(min=1)
        present = (cls >= 0) & (area > 0)
        # status per class [B, 30]: 0 absent/hidden (negative), 1 visible, 2 ambiguous
        status = torch.zeros(B, n_cls, dtype=torch.long)
        for k in range(MAX_OBJ):
            ok = present[:, k]
            s = torch.where(vis[:, k] >= args.vis_hi, 1, torch.where(vis[:, k] >= args.vis_lo, 2, 0))
            status[ok, cls[ok, k]] = torch.maximum(status[ok, cls[ok, k]], s[ok])
        visible = status == 1
        valid = visible.any(1)
        # target: a random visible object of each image (images with none are negatives only)
        score = torch.rand(B, n_cls, generator=gen) * visible
        target = score.argmax(1)
        # ---- text: a few templates per step, all 30 names each
        tsel = torch.from_numpy(rng.choice(len(TEMPLATES), args.n_templates, replace=False))
        tk = torch.randint(0, args.n_templates, (B,), generator=gen)  # template used by each image

        x = ((x.to(dev) - mean) / std)
        img_raw = model.encode_image(x)  # [B, D]
        img = F.normalize(img_raw, dim=-1)
        txt = F.normalize(model.encode_text(tokens[tsel.to(dev)].flatten(0, 1)), dim=-1)  # [K*30, D]
        txt = txt.view(args.n_templates, n_cls, -1)
        scale = model.logit_scale.exp().clamp(max=100)
        status, target, valid, tk = status.to(dev), target.to(dev), valid.to(dev), tk.to(dev)

        # image -> text over all 30 names (per-image template)
        logits_it = scale * torch.einsum("bd,bcd->bc", img, txt[tk])  # [B, 30]
        drop = (status > 0) & ~F.one_hot(target, n_cls).bool()
        logits_it = logits_it.masked_fill(drop, float("-inf"))
        loss_it = F.cross_entropy(logits_it[valid], target[valid])
        # text (target of image b) -> images of the batch
        tt = txt[tk, target]  # [B, D]
        logits_ti = scale * tt @ img.t()  # [B(text), B(image)]
        drop = (status[:, target].t() > 0) & ~torch.eye(B, dtype=torch.bool, device=dev)
        logits_ti = logits_ti.masked_fill(drop, float("-inf"))
        loss_ti = F.cross_entropy(logits_ti[valid], ar[valid])
        loss = 0.5 * (loss_it + loss_ti)
        if args.aux_weight > 0:  # visible -> 1, absent/hidden -> 0, ambiguous ignored
            la = F.binary_cross_entropy_with_logits(aux(img_raw), (status == 1).float(), reduction="none")
            loss = loss + args.aux_weight * (la * (status != 2)).sum(1).mean() / 4

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        acc = (logits_it[valid].argmax(1) == target[valid]).float().mean().item()
        stats.append((loss.item(), acc))
        elapsed = time.time() - t0
        if step % 50 == 0 or step == args.steps - 1:
            mean_loss, mean_accuracy = np.mean(stats, 0)
            stats = []
            print(
                f"step {step:5d}/{args.steps}  loss {mean_loss:.3f}  i2t-acc {mean_accuracy:.3f}  "
                f"T {1 / scale.item():.4f}  "
                f"lr {lr_at(q):.2e}  {elapsed / 60:.1f} min",
                flush=True,
            )

    save(model, args.out)
    print(f"total {(time.time() - t0) / 60:.1f} min", flush=True)


def save(model: CLIP, path: str) -> None:
    """Save the fp16 weights so that ``clip.load(path, device="cpu")`` reads them; verify it.

    ``clip.load`` first tries ``torch.jit.load`` on the open file and only then
    ``torch.load`` on the *same* file object, which (with current torch) is
    already at its end, so a plain ``torch.save``d state dict fails with
    ``EOFError``.  We therefore store a traced TorchScript archive of the model
    (as OpenAI did); ``clip.load(..., jit=False)`` takes its ``state_dict()``
    (plain CLIP keys, fp16 values) and rebuilds the model with ``build_model``.
    ``torch.jit.load(path).state_dict()`` gives the plain state dict too.
    """
    model = model.float().cpu().eval()
    res = model.visual.input_resolution
    img = torch.zeros(1, 3, res, res)
    txt = clip.tokenize(["a red circle"])
    with torch.no_grad():  # the trace shares parameters with its module: trace a copy
        traced = torch.jit.trace(copy.deepcopy(model), (img, txt), check_trace=False)
    traced = traced.half()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    traced.save(path)
    loaded, _ = clip.load(path, device="cpu")
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        err = (F.normalize(loaded.encode_image(x), dim=-1) - F.normalize(model.encode_image(x), dim=-1)).abs().max()
    print(f"saved {path}: {os.path.getsize(path) / 2**20:.2f} MiB; clip.load OK "
          f"(input_resolution {loaded.visual.input_resolution}, fp16 max embedding error {err:.1e})", flush=True)


if __name__ == "__main__":
    main()
