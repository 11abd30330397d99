"""Determinism on the CPU: the same seed trains to bitwise-identical parameters whatever the
thread count (1, 2 or 3 threads; batches larger than the 16 fixed reduction slices, batch 1),
at every SIMD level the CPU has, and through the trainer itself. See README, "Determinism"."""
import io

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lenet5_fast import LeNet5, _C


def synthetic_digits(n: int, seed: int):
    """n random 32x32 'images' in the paper's input range and labels 0..9 (no data files needed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 1.275 - 0.1
    return x, torch.randint(0, 10, (n,), generator=g)


def train(threads: int, seed: int, variant: str, batch_size: int, steps: int):
    """SGD with momentum and weight decay over shuffled mini-batches; returns the parameters."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = LeNet5(variant)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        x, y = synthetic_digits(batch_size * steps, seed)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        for xb, yb in loader:
            opt.zero_grad()
            model.loss(model(xb), yb).backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(old)


def simd_levels():
    best = _C.simd_level()
    return sorted({0, best})


@pytest.fixture(params=simd_levels(), ids=lambda level: f"simd{level}")
def simd_level(request):
    _C.set_simd_level(request.param)
    yield request.param
    _C.set_simd_level(-1)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max |diff| {(a[k] - b[k]).abs().max().item():.3g})"


@pytest.mark.parametrize("variant,batch_size,steps", [("classic", 37, 6), ("classic", 1, 24), ("modern", 33, 4)])
def test_training_is_bitwise_identical_for_any_thread_count(simd_level, variant, batch_size, steps):
    runs = {t: train(t, 1234, variant, batch_size, steps) for t in (1, 2, 3)}
    assert_bitwise_equal(runs[1], runs[2])
    assert_bitwise_equal(runs[1], runs[3])
    # and the comparison has teeth: training moved the weights, and another seed differs
    torch.manual_seed(1234)
    init = LeNet5(variant).state_dict()
    assert not torch.equal(init["c1.weight"], runs[1]["c1.weight"])
    assert not torch.equal(train(2, 99, variant, batch_size, steps)["c1.weight"], runs[1]["c1.weight"])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "op-by-op"])
def test_the_trainer_is_bitwise_identical_for_any_thread_count(tmp_path, fused):
    """lenet5_fast.train as the CLI runs it: SDLM with its Gauss-Newton estimate, batch 1,
    distortions, 2 passes -- on the fused engine and op by op."""
    trainer = pytest.importorskip("lenet5_fast.train")
    from lenet5_fast.checkpoint import load_checkpoint, model_from_checkpoint

    data = (synthetic_digits(150 if fused else 50, 5), synthetic_digits(20, 6))
    runs = {}
    for threads in (1, 2, 3):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            cfg = trainer.TrainConfig(epochs=2, seed=7, distort=True, hessian_samples=20, fused=fused)
            trainer.train(cfg, None, tmp_path / f"t{threads}", log=lambda line: None,
                          progress_stream=io.StringIO(), data=data)
        finally:
            torch.set_num_threads(old)
        ck = load_checkpoint(tmp_path / f"t{threads}" / "checkpoint.pt")
        assert all(rec["fused"] == fused for rec in ck["meta"]["history"])
        runs[threads] = model_from_checkpoint(ck).state_dict()
    assert_bitwise_equal(runs[1], runs[2])
    assert_bitwise_equal(runs[1], runs[3])
