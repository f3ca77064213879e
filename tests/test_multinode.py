"""Two nodes on one machine: docs/scale.md's torchrun and SLURM commands, read from the page
and run as they stand (only the addresses, the recipe and the corpus filled in), as two nodes
of one process each, rendezvous on 127.0.0.1, gloo, a shard corpus as data.

Each "node" runs in its own working folder, as two machines with their own disks would, so
``--out runs/two-nodes`` (relative) shows which node wrote what. ``srun`` is played by this
test (it starts one task per node with the SLURM variables srun sets, as Lightning reads them);
``torchrun`` and ``eossl`` are started as ``python -m torch.distributed.run`` and ``python -m
eossl.cli``, the same programs. tests/launch_probe/sitecustomize.py (on the launched processes'
PYTHONPATH) records what each rank read and computed, so the test can check:

- the two ranks read disjoint samples of the corpus (and the same number);
- the loss the two ranks optimise together (the mean of their losses, negatives gathered from
  both) equals the SimCLR loss of one process on the union of their first batches, with the
  same weights and views (BatchNorm in eval mode for that step, as tests/test_ddp.py does);
- the checkpoint is written once: by rank 0, on node 0; node 1 writes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eossl.data import shards

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "launch_probe"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def documented_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in docs/scale.md."""
    text = (ROOT / "docs" / "scale.md").read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```bash\n(.*?)```", text, re.S)
    assert m, f"docs/scale.md has no block marked {marker!r}"
    return m.group(1)


def command(text: str, values: dict) -> list[str]:
    """A shell command from the docs: continuation lines joined, comments dropped, $NAMES
    replaced; ``torchrun`` / ``eossl`` as ``python -m`` of the same programs."""
    line = re.sub(r"\\\n", " ", text).split("#")[0]
    for k, v in values.items():
        line = line.replace(f"${k}", str(v))
    assert "$" not in line, line
    args = shlex.split(line)
    program = {"torchrun": ["-m", "torch.distributed.run"], "eossl": ["-m", "eossl.cli"]}
    return [sys.executable, *program[args[0]], *args[1:]]


@pytest.fixture(scope="module")
def corpus(brandenburg, tmp_path_factory):
    out = tmp_path_factory.mktemp("nodes") / "bb"
    shards.pack(shards.scene_chips(brandenburg, 64), out, brandenburg.bands, nodata=0.0,
                chunk_bytes="1MB")
    return out


def _launch(launcher: str, corpus: Path, tmp_path: Path) -> tuple[list[Path], Path]:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "simclr", "seed": 3,
        "data": {"batch_size": 8, "crop_size": 32, "shuffle_window": 64},
        "trainer": {"max_steps": 2, "accelerator": "cpu", "checkpoint_every_n_steps": 1}}))
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))
           and k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE",
                         "EOSSL_RUN_DIR")}
    env.update(PYTHONPATH=os.pathsep.join([str(PROBE), str(ROOT / "src"),
                                           env.get("PYTHONPATH", "")]),
               EOSSL_PROBE_DIR=str(probe), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    port = _free_port()
    values = {"RECIPE": recipe, "CORPUS": corpus}
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    procs = []
    if launcher == "torchrun":
        block = documented_block("tests/test_multinode.py: torchrun")
        for rank, cwd in enumerate(nodes):
            cwd.mkdir()
            cmd = command(block, {**values, "NODE_RANK": rank, "MASTER_ADDR": "127.0.0.1"})
            cmd[cmd.index("--master-port") + 1] = str(port)  # 29500 may be taken here
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    else:
        script = documented_block("tests/test_multinode.py: slurm")
        sbatch = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", script))
        n_nodes, per_node = int(sbatch["nodes"]), int(sbatch["ntasks-per-node"])
        assert (n_nodes, per_node) == (2, 1)
        srun = script[script.index("\nsrun ") + len("\nsrun "):]
        for rank, cwd in enumerate(nodes):  # what srun does: one task per node here
            cwd.mkdir()
            task_env = {**env, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": sbatch["job-name"],
                        "SLURM_NNODES": str(n_nodes), "SLURM_NTASKS_PER_NODE": str(per_node),
                        "SLURM_NTASKS": str(n_nodes * per_node), "SLURM_PROCID": str(rank),
                        "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank),
                        "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}
            procs.append(subprocess.Popen(command(srun, values), cwd=cwd, env=task_env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return nodes, probe


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_nodes_read_disjoint_samples_share_one_loss_and_write_once(corpus, tmp_path,
                                                                        launcher):
    from lightly.loss import NTXentLoss

    from eossl.methods import get_method

    nodes, probe = _launch(launcher, corpus, tmp_path)

    # the checkpoint is written once: rank 0 on node 0; node 1 has no run folder at all
    run = nodes[0] / "runs" / "two-nodes"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["last.ckpt", "step000001.ckpt", "step000002.ckpt"]
    assert not (nodes[1] / "runs").exists() and not list(nodes[1].iterdir())

    # disjoint samples: everything each rank read (its batches and the one prefetched)
    keys = [json.loads((probe / f"keys-rank{r}.json").read_text()) for r in range(2)]
    c = shards.ShardCorpus(corpus)
    corpus_keys = {c[i]["key"] for i in range(len(c))}
    assert len(keys[0]) == len(keys[1]) >= 2 * 8
    assert not set(keys[0]) & set(keys[1]) and set(keys[0]) | set(keys[1]) <= corpus_keys

    # one loss: the mean of the ranks' losses is one process's loss on the union batch
    ranks = [torch.load(probe / f"rank{r}-step0.pt", weights_only=False) for r in range(2)]
    assert [r["keys"] for r in ranks] == [k[:8] for k in keys]
    for a, b in zip(ranks[0]["init"].values(), ranks[1]["init"].values()):
        assert torch.equal(a, b)  # DDP started both ranks from the same weights
    hp = ranks[0]["hparams"]
    model = get_method("simclr")(**hp)
    model.load_state_dict(ranks[0]["init"])
    model.eval()
    with torch.no_grad():
        z0, z1 = (model.projection_head(model.backbone(torch.cat([r["views"][v] for r in ranks])))
                  for v in (0, 1))
        single = NTXentLoss(temperature=hp["temperature"])(z0, z1)
    gathered = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(gathered, single, atol=1e-5, rtol=1e-5)
    # and it is not what either rank would compute alone (the negatives were gathered)
    with torch.no_grad():
        alone = NTXentLoss(temperature=hp["temperature"])(
            *(model.projection_head(model.backbone(ranks[0]["views"][v])) for v in (0, 1)))
    assert abs(float(alone) - float(ranks[0]["loss"])) > 1e-3
