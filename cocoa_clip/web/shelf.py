"""The app's model choice (`--models A,B,C`): names offered in a dropdown, each loaded on first use,
at most `keep` of them in memory at once (the least recently used one is dropped).

Visitors see, and the API takes, each model's public name (words.public_name: no server folders);
the shelf maps it back to the name it loads.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..errors import CocoaError, SettingsError
from ..models.encoder import Model
from .words import public_name


class ModelShelf:
    """Models by public name, loaded on first use and kept at most `keep` at a time; safe across threads.

    The shelf holds the only reference the app keeps to each model, so a dropped model is freed
    (and loaded again if asked for again).

    >>> shelf = ModelShelf(["ViT-B/32", "hf:google/siglip-base-patch16-224"], load)  # doctest: +SKIP
    >>> shelf.get("hf:google/siglip-base-patch16-224")                               # doctest: +SKIP
    """

    def __init__(self, names: Sequence[str], load: Callable[[str], Model], keep: int = 2,
                 loaded: Model | None = None):
        sources = list(dict.fromkeys(names))
        self.names = [public_name(name) for name in sources]
        if len(set(self.names)) < len(self.names):
            twice = next(name for name in self.names if self.names.count(name) > 1)
            raise SettingsError(f"Two of --models would both show as {twice!r}; give them different file or "
                                "folder names.")
        self._sources = dict(zip(self.names, sources, strict=True))
        self.keep = max(1, keep)
        self._load = load
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._lock = threading.Lock()
        if loaded is not None:
            self._models[self.names[0]] = loaded

    def get(self, name: str) -> Model:
        """The model whose public name is `name`, loading it and dropping the least recently used if need be."""
        if name not in self.names:
            raise SettingsError(f"Unknown model {name!r}; choose one of {', '.join(self.names)}.")
        with self._lock:  # one load at a time: two visitors asking for a new model load it once
            if name not in self._models:
                while len(self._models) >= self.keep:
                    self._models.popitem(last=False)  # dropped before the next loads: never keep + 1 at once
                self._models[name] = self._load(self._sources[name])
            self._models.move_to_end(name)
            return self._models[name]

    def check(self) -> None:
        """Load every model once (the first one last, so it stays), so that a name that cannot be served is
        refused at start, all of them in one sentence, rather than on a visitor's first use."""
        failures = []
        for name in [*self.names[1:], self.names[0]]:
            try:
                self.get(name)
            except CocoaError as error:
                failures.append(f"{self._sources[name]} ({str(error).rstrip('.')})")
        if failures:
            raise SettingsError(f"--models: {len(failures)} of {len(self.names)} cannot be served: "
                                f"{'; '.join(failures)}.")

    @property
    def loaded(self) -> list[str]:
        """The public names in memory, least recently used first."""
        return list(self._models)
