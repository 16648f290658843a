"""
One RFM fit on two processes
============================

A data-parallel fit of :class:`~skdnc.RFMClassifier` on a
:mod:`torch.distributed` process group (see :ref:`scaling`). Every rank runs this
same script on the same data; the ranks split the rows of every kernel product
and the AGOP points, and all of them end with the same model, which is the model
one process fits (up to rounding).

This script is not run when the documentation is built (it starts processes).
Run it on one machine as it is, which spawns two Gloo processes on the loopback
address::

    python examples/rfm/distributed_fit.py

or under ``torchrun``, which starts the processes and sets up the group::

    torchrun --standalone --nproc-per-node 2 examples/rfm/distributed_fit.py
"""

import os
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdnc import RFMClassifier


def fit_on_this_rank():
    """What every rank runs once the process group exists."""
    rank, size = dist.get_rank(), dist.get_world_size()
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X / 16, y, stratify=y, random_state=0
    )
    # distributed="auto" (the default) uses the process group; the solver is
    # conjugate gradients, each rank holding half of the kernel matrix's rows.
    clf = RFMClassifier(max_iter=2, solver="cg", dtype="float64", random_state=0)
    tic = time.perf_counter()
    clf.fit(X_train, y_train)
    seconds = time.perf_counter() - tic
    accuracy = clf.score(X_test, y_test)  # prediction is split too: every rank calls
    print(
        f"rank {rank} of {size}: fit in {seconds:.1f} s, test accuracy "
        f"{accuracy:.4f}, trace of M_ {np.trace(clf.M_):.6f}",
        flush=True,
    )
    return clf


def _spawned(rank, port, size):
    torch.set_num_threads(1)  # one core per process
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
    )
    try:
        fit_on_this_rank()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        try:
            fit_on_this_rank()
        finally:
            dist.destroy_process_group()
    else:
        with socket.socket() as s:  # a free port on the loopback address
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_spawned, args=(port, 2), nprocs=2, start_method="spawn")
