"""What every fodl LightningModule shares."""

from __future__ import annotations

from typing import Any

import lightning as L

# Attributes Lightning writes around every hook call (about 30 times per training step). They
# hold strings / None, never parameters, buffers or modules, so nn.Module's bookkeeping in
# __setattr__ (three registries and metaclass isinstance checks, ~2 us a write) has nothing to
# do for them.
_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name"})


class FodlModule(L.LightningModule):
    """``LightningModule`` whose per-hook bookkeeping writes are plain attribute writes.

    Lightning sets ``_current_fx_name`` before and after each hook it dispatches; through
    ``nn.Module.__setattr__`` that cost ~70 us per optimizer step of the book's MLP (whose
    whole step takes ~2.5 ms on a 2-core CPU). Everything else goes through ``nn.Module``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
