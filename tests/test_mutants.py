"""Tests written from the mutation-testing run (scripts/mutation.py, issue 24 item 8): each kills
mutants of model.py, layers.py, optim.py, codes.py or train.py that the module's own targeted
tests let survive. (Mutants of codes.py: tests/test_codes.py.)"""
import io

import pytest
import torch

import lenet5_fast as L
from lenet5_fast.model import check_input, format_summary, summary

# The paper's network, as its Table/figure 2 count it (independent of the code that builds it).
PAPER_SUMMARY = """\
LeNet-5 (classic), input 1x32x32
layer   kind                 maps    size   parameters   connections
C1      Convolution             6   28x28          156       122,304
S2      Subsampling             6   14x14           12         5,880
C3      SparseConvolution      16   10x10        1,516       151,600
S4      Subsampling            16     5x5           32         2,000
C5      Convolution           120     1x1       48,120        48,120
F6      FullConnection         84     1x1       10,164        10,164
output  EuclideanRBF           10     1x1            0           840
total                                           60,000       340,908"""


def test_summary_and_its_text_exactly():
    """The kinds, the input line and the table layout (mutants: kind of None, the input entry
    dropped, another key or header in format_summary)."""
    s = summary(L.LeNet5())
    assert s["input"] == "1x32x32" and s["variant"] == "classic"
    assert format_summary(s) == PAPER_SUMMARY
    assert summary(L.LeNet5(variant="modern"))["layers"][1]["kind"] == "MaxPool"


@pytest.mark.parametrize("bad", [0, -3, True, "32", 32.0])
def test_summary_refuses_a_bad_input_size(bad):
    with pytest.raises(ValueError, match="input_size must be an int >= 1"):
        summary(L.LeNet5(), bad)


def test_summary_names_the_layer_a_too_small_input_empties():
    with pytest.raises(ValueError, match=r"C3 would output 16x0x0 \(32x32 is the paper's\)"):
        summary(L.LeNet5(), 12)


def test_the_input_check_hints_at_padding_for_one_channel_only():
    with pytest.raises(ValueError, match=r"expects \[N, 1, 32, 32\] \(MNIST 28x28 must be padded by 2: "
                                         r"lenet5_fast.data.preprocess\), got shape \(2, 1, 28, 28\)"):
        check_input(L.LeNet5(), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError) as e:
        check_input(L.LeNet5(variant="modern", in_channels=3), torch.zeros(2, 3, 28, 28))
    assert "MNIST" not in str(e.value) and "[N, 3, 32, 32]" in str(e.value)


def test_the_keras_variants_pooling_is_the_plain_2x2_average():
    """S2 and S4 of the keras variant: fixed coefficient 1/4, bias 0, not trained."""
    m = L.LeNet5(variant="keras")
    x = torch.randn(3, m.s2.maps, 10, 10)
    assert m.s2.act == m.s4.act == 0  # no activation after the average
    torch.testing.assert_close(m.s2(x), torch.nn.functional.avg_pool2d(x, 2))
    assert not any(p is m.s2.coef for p in m.parameters())


@pytest.mark.parametrize("bad", [-1, True, 1.0, "2"])
def test_paper_eta_refuses_a_bad_pass_index_by_name(bad):
    from lenet5_fast.optim import paper_eta

    with pytest.raises(ValueError, match=f"paper_eta: pass index must be an int >= 0, got {bad!r}"):
        paper_eta(bad)


def test_from_pretrained_loads_the_weights_it_names():
    """(mutant: ``name and DEFAULT`` loaded the default for any name)"""
    from lenet5_fast import weights

    assert weights.DEFAULT != "paper"
    a, b = L.LeNet5.from_pretrained("paper"), weights.load("paper")
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    c = L.LeNet5.from_pretrained()
    assert not torch.equal(a.c1.weight, c.c1.weight)


def test_scaled_tanh_layer_refuses_a_non_tensor_by_name_and_describes_itself():
    layer = L.ScaledTanh()
    with pytest.raises(TypeError, match=r"ScaledTanh\(\) expects a tensor, got list"):
        layer([1.0, 2.0])
    assert layer.describe((6, 28, 28)) == dict(maps=6, size="", parameters=0, connections=0, out_shape=(6, 28, 28))
    assert layer.describe((84,))["maps"] == 1


@pytest.mark.parametrize("make,name", [(lambda: L.EuclideanRBF(0, 10), "EuclideanRBF: in_features"),
                                       (lambda: L.EuclideanRBF(84, 0), "EuclideanRBF: out_features"),
                                       (lambda: L.FullConnection(0, 10), "FullConnection: in_features"),
                                       (lambda: L.FullConnection(84, 0), "FullConnection: out_features"),
                                       (lambda: L.Subsampling(0), "Subsampling: maps")])
def test_layer_sizes_are_refused_by_layer_and_argument(make, name):
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1, got 0"):
        make()


def test_summary_of_the_modern_network_counts_max_pooling():
    """MaxPool has no parameters and 4 connections per output (mutants: other keys in describe)."""
    rows = {r["name"]: r for r in summary(L.LeNet5(variant="modern"))["layers"]}
    assert (rows["S2"]["parameters"], rows["S2"]["connections"], rows["S2"]["size"]) == (0, 6 * 14 * 14 * 4, "14x14")
    assert (rows["S4"]["maps"], rows["C5"]["size"]) == (16, "1x1")


@pytest.mark.parametrize("fused", [True, False])
def test_a_minibatch_pass_returns_the_sum_of_its_losses_and_its_errors(fused):
    """run_pass over 70 samples in batches of 32 (the last one 6), the weights held still (lr 0):
    the loss and error counts of all 70, and the progress bar's (mutants: only the last batch's
    loss; the bar given None samples or 100 / errors)."""
    from lenet5_fast import train as T

    model = L.LeNet5()
    x, y = torch.rand(70, 1, 32, 32) * 1.275 - 0.1, torch.randint(0, 10, (70,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = T.TrainConfig(optimizer="sgd", batch_size=32, fused=fused)
    bar = io.StringIO()
    loss, errors, _ = T.run_pass(model, opt, x, y, torch.arange(70), cfg,
                                 progress=T.Progress(70, "pass 1/1", stream=bar, interval=0.0))
    with torch.no_grad():
        out = model(x)
        ref = float(model.loss(out, y, reduction="sum"))
        wrong = int((model.scores(out).argmax(1) != y).sum())
    assert loss == pytest.approx(ref, rel=1e-5) and errors == wrong
    # the progress bar after each batch: samples so far, their mean loss and error
    lines = bar.getvalue().splitlines()
    assert [ln.split("| ")[1].split(" ")[0] for ln in lines] == ["32/70", "64/70", "70/70"]
    assert lines[-1].endswith(f"loss {loss / 70:.4f} err {100.0 * wrong / 70:.2f}%")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sgd_and_adam_take_torchs_fused_kernels_on_cpu(optimizer):
    """(the README's training speed depends on it; mutant: no device type matched, so the loop)"""
    from lenet5_fast import train as T

    opt = T.make_optimizer(L.LeNet5(), T.TrainConfig(optimizer=optimizer))
    assert opt.defaults["fused"] is True
