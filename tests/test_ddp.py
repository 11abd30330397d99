"""Multi-process use: DistributedDataParallel (gloo, 2 spawned processes) over the paper's
LeNet-5 keeps both ranks' parameters identical and equal to one process training on both
ranks' data; and a process forked after the native thread pool ran gets a working pool of its
own instead of hanging on threads that fork() did not copy."""
import multiprocessing
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lenet5_fast import LeNet5, ops

WORLD, STEPS, BATCH = 2, 4, 8


def batches(rank: int):
    """Rank `rank`'s data: STEPS different mini-batches per rank."""
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.rand(BATCH, 1, 32, 32, generator=g) * 1.275 - 0.1, torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(STEPS)]


def train_step(model, opt, x, y):
    opt.zero_grad()
    model.loss(model(x), y).backward()
    opt.step()


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = LeNet5()
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        for x, y in batches(rank):
            opt.zero_grad()
            model.loss(ddp(x), y).backward()
            opt.step()
        mine = flat_params(model)
        gathered = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(gathered, mine)
        if rank == 0:
            torch.save(gathered, out_file)
        dist.barrier()  # neither rank tears gloo down while the other still talks
    finally:
        dist.destroy_process_group()
    # Two CI runs saw a rank abort after its work ("terminate called without an active exception",
    # SIGABRT; never in 40 runs by hand): gloo's worker threads can still hold tensors when the
    # interpreter finalizes (described in pytorch/pytorch#179291). Our kernels start no thread here
    # (one thread per rank). A rank that did its work leaves at once, without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_ddp_two_ranks_end_identical(tmp_path):
    out = tmp_path / "params.pt"
    mp.spawn(ddp_worker, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD, join=True)
    rank0, rank1 = torch.load(out)
    assert torch.equal(rank0, rank1), "the ranks' parameters diverged"

    # One process on both ranks' batches (the mean loss over 2 x 8 images = DDP's averaged
    # gradient) from rank 0's initial weights: the same training, up to summation order.
    torch.manual_seed(0)
    model = LeNet5()
    init = flat_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for (x0, y0), (x1, y1) in zip(batches(0), batches(1)):
        train_step(model, opt, torch.cat([x0, x1]), torch.cat([y0, y1]))
    assert not torch.equal(init, rank0), "training did not change the parameters"
    torch.testing.assert_close(rank0, flat_params(model), rtol=1e-4, atol=1e-5)


def conv_in_child(queue) -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(8, 3, 12, 12, generator=g), torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, generator=g)
    queue.put(ops.conv5x5(x, w, b, 1).numpy().tobytes())  # bytes: no shared-memory handover


def test_fork_after_the_thread_pool_ran_does_not_hang():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(8, 3, 12, 12, generator=g), torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, generator=g)
        want = ops.conv5x5(x, w, b, 1)  # the parent's pool now has a worker thread
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=conv_in_child, args=(queue,))
        child.start()
        try:
            got = queue.get(timeout=60)  # a child waiting on the parent's threads never answers
        finally:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        assert got == want.numpy().tobytes()
    finally:
        torch.set_num_threads(old)
