"""Flat parameters: views of one tensor during an epoch, independent tensors after it; same weights bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from fedcustomer.models.repayment import LogisticRegression, RepaymentMLP
from fedcustomer.privacy.dp.dpsgd import DPTrainer
from fedcustomer.privacy.dp.flat_params import FlatParameters
from fedcustomer.privacy.dp.momentum_sgd import MomentumSGD

torch.set_num_threads(1)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 3), nn.ReLU(), nn.Linear(3, 1))


def _storages(model: nn.Module) -> list[int]:
    return [p.untyped_storage().data_ptr() for p in model.parameters()]


def _owns_its_storage(p: torch.Tensor) -> bool:
    return p.storage_offset() == 0 and p.untyped_storage().nbytes() == p.numel() * p.element_size()


# -- FlatParameters ----------------------------------------------------------------------------
def test_bind_makes_the_same_parameters_views_of_one_flat_tensor_with_their_values() -> None:
    model = _model()
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    flat_params = FlatParameters(params)
    flat = flat_params.bind()
    assert [p is q for p, q in zip(model.parameters(), params)] == [True] * len(params)
    assert torch.equal(flat, torch.cat([v.reshape(-1) for v in values]))
    assert set(_storages(model)) == {flat.untyped_storage().data_ptr()}
    assert flat_params.intact()
    flat.add_(1.0)  # writing the flat tensor writes the parameters
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v + 1.0)


def test_release_gives_each_parameter_its_own_storage_and_keeps_its_values() -> None:
    model = _model()
    flat_params = FlatParameters(list(model.parameters()))
    flat = flat_params.bind()
    flat.mul_(2.0)
    expected = [p.detach().clone() for p in model.parameters()]
    flat_params.release()
    assert not flat_params.bound
    assert all(_owns_its_storage(p) for p in model.parameters())
    assert len(set(_storages(model))) == len(expected)
    flat.zero_()  # the old flat tensor no longer reaches the model
    for p, v in zip(model.parameters(), expected):
        assert torch.equal(p.detach(), v)
        assert p.requires_grad and isinstance(p, nn.Parameter)


def test_intact_notices_a_reassigned_parameter() -> None:
    model = _model()
    flat_params = FlatParameters(list(model.parameters()))
    flat_params.bind()
    model[0].bias.data = model[0].bias.data.clone()
    assert not flat_params.intact()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ([], "no parameters"),
        ([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))], "one dtype"),
    ],
)
def test_flat_parameters_refuse_what_cannot_be_one_tensor(params, match) -> None:
    with pytest.raises(ValueError, match=match):
        FlatParameters(params)


def test_flat_parameters_refuse_a_parameter_listed_twice() -> None:
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="twice"):
        FlatParameters([p, p])


# -- MomentumSGD on flat buffers ---------------------------------------------------------------
def _flat_grads(params: list[nn.Parameter]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    flat = torch.zeros(sum(p.numel() for p in params))
    views = [v.view(p.shape) for p, v in zip(params, torch.split(flat, [p.numel() for p in params]))]
    return flat, views


def _step_both(ours, opt, flat_grad, views, ref, ref_opt, X, y) -> None:
    """Same batch on both models; ours gets its gradient written into the flat views."""
    ref_opt.zero_grad()
    nn.functional.mse_loss(ref(X), y).backward()
    ref_opt.step()
    grads = torch.autograd.grad(nn.functional.mse_loss(ours(X), y), list(ours.parameters()))
    for view, g in zip(views, grads):
        view.copy_(g)
    for p, view in zip(ours.parameters(), views):
        p.grad = view
    opt.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_flat_steps_are_bit_identical_to_torch_sgd_over_several_steps(momentum: float) -> None:
    ours, ref = _model(), _model()
    params = list(ours.parameters())
    opt = MomentumSGD(params, lr=0.3, momentum=momentum)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=momentum)
    flat_grad, views = _flat_grads(params)
    flat_params = FlatParameters(params)
    flat_params.bind()
    assert opt.bind_flat(flat_params, flat_grad, views)
    gen = torch.Generator().manual_seed(1)
    for step in range(8):
        if step == 5:  # a learning-rate change is read at every step
            for group in (*opt.param_groups, *ref_opt.param_groups):
                group["lr"] = 0.1
        X, y = torch.randn(16, 7, generator=gen), torch.randn(16, 1, generator=gen)
        _step_both(ours, opt, flat_grad, views, ref, ref_opt, X, y)
        assert opt._flat is not None  # stayed on the flat path
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # Stepped with grad mode on: the parameters are still plain leaves, untouched by autograd.
    assert torch.is_grad_enabled()
    assert all(p.is_leaf and p.requires_grad and p.grad_fn is None for p in params)
    if momentum:  # the per-parameter state torch would read is the flat momentum's views
        for a, b in zip(params, ref.parameters()):
            assert torch.equal(opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"])


def test_binding_after_per_parameter_steps_carries_the_momentum_over_and_back() -> None:
    ours, ref = _model(), _model()
    params = list(ours.parameters())
    opt = MomentumSGD(params, lr=0.2, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    flat_grad, views = _flat_grads(params)
    flat_params = FlatParameters(params)
    gen = torch.Generator().manual_seed(3)
    for step in range(9):
        if step == 3:  # per-parameter momentum gathered into the flat buffer
            flat_params.bind()
            assert opt.bind_flat(flat_params, flat_grad, views)
        if step == 6:  # and handed back as per-parameter tensors
            opt.unbind_flat()
            flat_params.release()
        X, y = torch.randn(8, 7, generator=gen), torch.randn(8, 1, generator=gen)
        _step_both(ours, opt, flat_grad, views, ref, ref_opt, X, y)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert all(_owns_its_storage(opt.state[p]["momentum_buffer"]) for p in params)


def test_a_step_with_a_gradient_outside_the_flat_buffer_falls_back_and_stays_identical() -> None:
    ours, ref = _model(), _model()
    params = list(ours.parameters())
    opt = MomentumSGD(params, lr=0.3, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9)
    flat_grad, views = _flat_grads(params)
    flat_params = FlatParameters(params)
    flat_params.bind()
    assert opt.bind_flat(flat_params, flat_grad, views)
    gen = torch.Generator().manual_seed(4)
    for step in range(5):
        X, y = torch.randn(8, 7, generator=gen), torch.randn(8, 1, generator=gen)
        if step == 2:  # a plain backward: gradients are not the flat views
            ref_opt.zero_grad()
            nn.functional.mse_loss(ref(X), y).backward()
            ref_opt.step()
            opt.zero_grad()
            nn.functional.mse_loss(ours(X), y).backward()
            opt.step()
            assert opt._flat is None
        else:
            _step_both(ours, opt, flat_grad, views, ref, ref_opt, X, y)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_bind_flat_declines_other_parameters_and_partial_momentum() -> None:
    model = _model()
    params = list(model.parameters())
    flat_grad, views = _flat_grads(params)
    opt = MomentumSGD(params[:2], lr=0.1, momentum=0.9)
    assert not opt.bind_flat(FlatParameters(params), flat_grad, views)
    opt = MomentumSGD(params, lr=0.1, momentum=0.9)
    opt.state[params[0]]["momentum_buffer"] = torch.zeros_like(params[0])
    assert not opt.bind_flat(FlatParameters(params), flat_grad, views)
    assert opt._flat is None
    with pytest.raises(ValueError, match="layout"):
        opt.bind_flat(FlatParameters(params), flat_grad[:-1], views)


# -- the DP trainer ----------------------------------------------------------------------------
def _dp_trainer(model: nn.Module, flat: bool, **kw) -> DPTrainer:
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(300, 6, generator=gen)
    y = (torch.rand(300, generator=gen) < torch.sigmoid(X[:, 0])).float()
    args = dict(
        batch_size=32,
        lr=0.2,
        noise_multiplier=1.1,
        max_grad_norm=0.8,
        noise_generator=torch.Generator().manual_seed(6),
        sampling_generator=torch.Generator().manual_seed(7),
    )
    args.update(kw)
    trainer = DPTrainer(model, X, y, nn.BCEWithLogitsLoss(), **args)
    if not flat:
        trainer._flat_params = None  # the per-parameter optimizer step
    return trainer


def _fresh(arch: str) -> nn.Module:
    torch.manual_seed(11)
    return RepaymentMLP(6, hidden=(8, 4)) if arch == "mlp" else LogisticRegression(6)


@pytest.mark.parametrize("arch", ["mlp", "logreg"])
@pytest.mark.parametrize("proximal_mu", [0.0, 0.3])
def test_dp_epochs_on_flat_buffers_give_the_per_parameter_weights_bit_for_bit(arch, proximal_mu) -> None:
    flat, plain = (
        _dp_trainer(_fresh(arch), True, proximal_mu=proximal_mu),
        _dp_trainer(_fresh(arch), False, proximal_mu=proximal_mu),
    )
    flat_steps = []
    step = flat._base_optimizer._flat_step
    flat._base_optimizer._flat_step = lambda f: (flat_steps.append(1), step(f))[1]  # type: ignore[method-assign]
    for _ in range(3):  # momentum carried across epochs
        assert flat.train_epoch() == plain.train_epoch()
    assert len(flat_steps) == flat.steps_taken == 3 * flat.steps_per_epoch  # every step took the flat path
    for a, b in zip(flat.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(flat.model.parameters(), _fresh(arch).parameters()))


def test_after_an_epoch_the_model_shares_nothing_with_the_trainer() -> None:
    trainer = _dp_trainer(_fresh("mlp"), True)
    params = list(trainer.model.parameters())
    trainer.train_epoch()
    assert [p is q for p, q in zip(trainer.model.parameters(), params)] == [True] * len(params)
    assert all(_owns_its_storage(p) for p in params)
    assert len(set(_storages(trainer.model))) == len(params)
    clipper_buffer = trainer._clipper.flat_summed_grad.untyped_storage().data_ptr()
    assert clipper_buffer not in _storages(trainer.model)
    state = trainer.model.state_dict()
    assert all(_owns_its_storage(t) for t in state.values())
    saved = io.BytesIO()  # a saved parameter holds its own values only
    torch.save(state["net.0.bias"], saved)
    size_alone = io.BytesIO()
    torch.save(state["net.0.bias"].clone(), size_alone)
    assert len(saved.getvalue()) == len(size_alone.getvalue())


def test_weights_set_between_epochs_are_where_the_next_epoch_starts() -> None:
    flat, plain = _dp_trainer(_fresh("mlp"), True), _dp_trainer(_fresh("mlp"), False)
    for trainer in (flat, plain):
        trainer.train_epoch()
        trainer.model.load_state_dict(
            {k: torch.full_like(v, 0.05) for k, v in trainer.model.state_dict().items()}
        )
        trainer.train_epoch()
    for a, b in zip(flat.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)
    kept = [p.detach().clone() for p in flat.model.parameters()]
    for p in flat.model.parameters():  # the caller's edits after the job stay the caller's
        p.data.zero_()
    assert all(float(b.abs().sum()) == 0.0 for b in [p.detach() for p in flat.model.parameters()])
    assert any(float(k.abs().sum()) > 0 for k in kept)


def test_a_failed_epoch_leaves_normal_parameters_holding_the_steps_taken() -> None:
    def failing_after(calls: int):
        seen = {"n": 0}
        loss = nn.BCEWithLogitsLoss()

        def fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            seen["n"] += 1
            if seen["n"] > calls:
                raise RuntimeError("loss failed")
            return loss(out, target)

        fn.reduction = "mean"  # type: ignore[attr-defined]
        return fn

    results = []
    for use_flat in (True, False):
        trainer = _dp_trainer(_fresh("mlp"), use_flat)
        trainer.loss_fn = failing_after(4)
        with pytest.raises(RuntimeError, match="loss failed"):
            trainer.train_epoch()
        assert trainer.steps_taken == 4
        assert all(_owns_its_storage(p) for p in trainer.model.parameters())
        results.append([p.detach().clone() for p in trainer.model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)
