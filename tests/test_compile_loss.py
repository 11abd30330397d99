"""The loss compiles with the network as one graph (issue 24 item 4): ``map_loss``'s check of
the target classes guarded on data (``int(target.min())``), which ``fullgraph=True`` refused."""
import pytest
import torch

from lenet5_fast import LeNet5


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_loss_of_the_model_compiles_fullgraph_forward_and_backward(variant):
    torch.manual_seed(0)
    model = LeNet5(variant=variant)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    step = torch.compile(lambda x, y: model.loss(model(x), y), fullgraph=True)
    loss = step(x, y)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = model.loss(model(x), y)
    want.backward()
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-5, atol=1e-5)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_a_bad_target_is_still_an_error_when_compiled_and_eagerly():
    model = LeNet5()
    x = torch.randn(4, 1, 32, 32)
    with pytest.raises(ValueError, match="0..9"):
        model.loss(model(x), torch.tensor([0, 1, 2, 10]))
    step = torch.compile(lambda x, y: model.loss(model(x), y), fullgraph=True)
    with pytest.raises(RuntimeError):
        step(x, torch.tensor([0, 1, 2, 10]))
