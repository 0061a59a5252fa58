"""One run split over processes (torchrun) equals the run on one device: BatchNorm over the global batch
(fairard.distributed), checked with two gloo processes on CPU and a BatchNorm network."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fairard import train as T
from fairard.train import TrainConfig


def _config(root) -> TrainConfig:
    return TrainConfig(method="natural", student="resnet8", data_root=str(root), n_per_class=8, epochs=1,
                       batch_size=20, monitor_n=0, device="cpu", amp="off", seed=3)


def _rank(rank: int, world: int, port: int, root, out, sync: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if not sync:  # what torchrun gave before: every process normalised by its own share of the batch
        T.sync_batchnorm = lambda model: model
    T.init_distributed()
    T.train(_config(root), out, progress=False)
    torch.distributed.destroy_process_group()


def _split_run(root, out, sync: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, root, out, sync), nprocs=2, join=True)
    return torch.load(out / "final.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_batchnorm_network_as_one(synthetic_root, tmp_path):
    torch.set_num_threads(1)
    one = T.train(_config(synthetic_root), tmp_path / "one", progress=False).state_dict()
    assert any("running_var" in k for k in one)                      # a BatchNorm network
    synced = _split_run(synthetic_root, tmp_path / "two", sync=True)
    unsynced = _split_run(synthetic_root, tmp_path / "two-unsynced", sync=False)
    assert _max_diff(one, synced) < 1e-5                               # float summation order only
    assert _max_diff(one, unsynced) > 100 * _max_diff(one, synced)     # per-process statistics: another network
