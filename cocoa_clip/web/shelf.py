"""The app's model choice (`--models A,B,C`): names offered in a dropdown, each loaded on first use,
at most `keep` of them in memory at once (the least recently used one is dropped)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..errors import SettingsError
from ..models.encoder import Model


class ModelShelf:
    """Models by name, loaded on first use and kept at most `keep` at a time; safe across threads.

    >>> shelf = ModelShelf(["ViT-B/32", "hf:google/siglip-base-patch16-224"], load)  # doctest: +SKIP
    >>> shelf.get("hf:google/siglip-base-patch16-224")                               # doctest: +SKIP
    """

    def __init__(self, names: Sequence[str], load: Callable[[str], Model], keep: int = 2,
                 loaded: Model | None = None):
        self.names = list(dict.fromkeys(names))
        self.keep = max(1, keep)
        self._load = load
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._lock = threading.Lock()
        if loaded is not None:
            self._models[self.names[0]] = loaded

    def get(self, name: str) -> Model:
        """The model called `name` (one of `names`), loading it and dropping the least recently used if need be."""
        if name not in self.names:
            raise SettingsError(f"Unknown model {name!r}; choose one of {', '.join(self.names)}.")
        with self._lock:  # one load at a time: two visitors asking for a new model load it once
            if name not in self._models:
                while len(self._models) >= self.keep:
                    self._models.popitem(last=False)
                self._models[name] = self._load(name)
            self._models.move_to_end(name)
            return self._models[name]

    @property
    def loaded(self) -> list[str]:
        """The names in memory, least recently used first."""
        return list(self._models)
