"""Temporary alias of :mod:`unetlab.ddp` (the DDP building blocks) for code not yet moved to
the new module name; Dask prediction lives in :mod:`unetlab.dask_predict`."""
from __future__ import annotations

from .ddp import (WorldInfo, all_reduce_mean, barrier, cleanup, init_distributed,  # noqa: F401
                  is_main, rank_seed, unwrap, world_info, wrap_ddp)
