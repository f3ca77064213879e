"""Instrumentation for tests/test_multinode.py, not part of eossl.

The test launches the documented multi-node commands unchanged and puts this folder on the
launched processes' PYTHONPATH; Python imports ``sitecustomize`` at start-up. When
EOSSL_PROBE_DIR is set, the first import of ``eossl`` patches two places so that each rank
leaves a record in that folder: the keys of the samples its ShardStream read
(``keys-rank<R>.json``), and, at its first training step, its batch's views, its loss and the
initial weights (``rank<R>-step0.pt``; BatchNorm in eval mode for that step, as
tests/test_ddp.py does, because per-rank batch statistics differ from one process's by
design). Processes that never import eossl (torchrun's agent) are left alone.
"""

import importlib.abc
import importlib.util
import os
import sys

PROBE = os.environ.get("EOSSL_PROBE_DIR")


def _install() -> None:
    import atexit
    import json
    from pathlib import Path

    import torch

    from eossl.data import shards
    from eossl.methods.simclr import SimCLR

    read: dict = {"rank": None, "keys": []}
    sample = shards.ShardStream._sample

    def _sample(self, item, u):
        read["rank"] = (self.distributed or shards._rank_world())[0]
        read["keys"].append(item["key"])
        return sample(self, item, u)

    def _save_keys():
        if read["rank"] is not None:
            Path(PROBE, f"keys-rank{read['rank']}.json").write_text(json.dumps(read["keys"]))

    shards.ShardStream._sample = _sample
    atexit.register(_save_keys)
    step = SimCLR.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step:
            return step(self, batch, batch_idx)
        self.backbone.eval()
        self.projection_head.eval()
        init = {k: v.detach().clone() for k, v in self.state_dict().items()}
        views = []
        make_views = self.make_views
        self.make_views = lambda x: views.append(make_views(x)) or views[-1]
        try:
            loss = step(self, batch, batch_idx)
        finally:
            del self.make_views
        torch.save({"init": init, "hparams": dict(self.hparams), "views": views[0],
                    "loss": loss.detach(), "keys": read["keys"][:len(batch["image"])]},
                   Path(PROBE, f"rank{self.global_rank}-step0.pt"))
        return loss

    SimCLR.training_step = training_step


class _AfterEossl(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "eossl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def run(module):
            exec_module(module)
            _install()

        spec.loader.exec_module = run
        return spec


if PROBE:
    sys.meta_path.insert(0, _AfterEossl())
