"""The explanation itself: questions and targets, RISE and gradient attributions, checks and drawings.

    targets.py     Question and the explanation targets (directions in embedding space)
    presets.py     prompt template, CIFAR-100 and ImageNet class lists (data/)
    images.py      reading pictures safely, framing, the blur baseline
    masks.py       RISE masks; rise.py, the masked pass, estimators, stability, the pass cache
    gradients.py   Integrated Gradients and GradientSHAP (captum)
    explain.py     the top-level pipeline; compare.py, which caption where
    evaluate.py    insertion and deletion curves, pointing game
    render.py      overlays, colour bars, exports

Imports run one way: the engine imports models/ and errors, never a surface (cli/, batch/, web/).
"""
