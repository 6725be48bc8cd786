"""PyTorch capture: recorded values, stream names, model state after capture, digits model."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from iua_widgets import IUA, StreamingIUA
from iua_widgets.models import digits
from iua_widgets.torch import ResponseBatch, Responses, responses

ATOL = 1e-8


@pytest.fixture(scope="module")
def digits_model() -> nn.Sequential:
    return digits.load_digits_cnn()


@pytest.fixture(scope="module")
def digits_test_loader() -> DataLoader:
    # 360 test images in batches of 50: seven full batches and one of 10.
    return digits.digits_loader(batch_size=50, split="test")


def manual_digits_responses(model: nn.Sequential, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the digits CNN one module at a time and keep every intermediate output."""
    outputs = {}
    value = images
    with torch.no_grad():
        for name, module in model.named_children():
            value = module(value)
            outputs[name] = value.numpy().copy()
    return outputs


def forward_hook_counts(model: nn.Module) -> dict[str, int]:
    return {name: len(module._forward_hooks) for name, module in model.named_modules()}


def assert_no_forward_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert len(module._forward_hooks) == 0, f"forward hook left on {name!r}"
        assert len(module._forward_hooks_with_kwargs) == 0, f"kwargs hook left on {name!r}"


def training_flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


# -- recorded values ----------------------------------------------------------


def test_capture_matches_manual_forward(digits_model, digits_test_loader):
    producer = responses(digits_model, digits_test_loader, layers=list(digits.LAYER_NAMES))
    batches = 0
    for fields, (images, _) in zip(producer, digits_test_loader, strict=True):
        expected = manual_digits_responses(digits_model, images)
        assert list(fields) == list(digits.LAYER_NAMES)
        for name in digits.LAYER_NAMES:
            assert isinstance(fields[name], np.ndarray)
            assert fields[name].dtype == np.float32
            np.testing.assert_array_equal(fields[name], expected[name], err_msg=name)
        batches += 1
    assert batches == len(digits_test_loader)


def test_introspect_matches_engine_on_manual_responses(digits_model, digits_test_loader):
    layers = ["conv1", "relu1", "relu2", "relu3", "fc2"]
    iua = IUA.introspect(responses(digits_model, digits_test_loader, layers=layers), atol=ATOL)

    manual = StreamingIUA(atol=ATOL)
    concatenated: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for images, _ in digits_test_loader:
        expected = manual_digits_responses(digits_model, images)
        manual.update({name: expected[name] for name in layers})
        for name in layers:
            concatenated[name].append(expected[name])

    assert iua.engine.inputs_seen == 360
    assert sorted(iua.results) == sorted(layers)
    for name in layers:
        got = iua.results[name]
        want = manual.results[name]
        assert got.mean_inactive == want.mean_inactive, name
        assert got.std_inactive == want.std_inactive, name
        np.testing.assert_array_equal(got.inactive, want.inactive, err_msg=name)
        np.testing.assert_array_equal(got.unit_inactive_count, want.unit_inactive_count)

        # Brute force: a unit is inactive on an input when |x| <= atol.
        everything = np.concatenate(concatenated[name]).astype(np.float64)
        inactive = np.abs(everything) <= ATOL
        np.testing.assert_array_equal(got.unit_inactive_count, inactive.sum(axis=0))
        per_input = inactive.reshape(len(everything), -1).sum(axis=1)
        np.testing.assert_array_equal(got.inactive, per_input)
    # The shipped model has dead units in relu3, so the comparison is not all zeros.
    assert iua.results["relu3"].dead_units > 0


def test_engine_consume_and_iteration_agree(digits_model, digits_test_loader):
    producer = responses(digits_model, digits_test_loader, layers=["relu1", "relu3"])
    consumed = StreamingIUA().consume(producer, batch_size=7)
    updated = StreamingIUA()
    for fields in producer:
        updated.update(fields)
    for name in ("relu1", "relu3"):
        np.testing.assert_array_equal(
            consumed.results[name].unit_inactive_count, updated.results[name].unit_inactive_count
        )
    assert consumed.inputs_seen == updated.inputs_seen == 360


def test_inplace_relu_keeps_previous_layer():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(1, 3, kernel_size=3), relu=nn.ReLU(inplace=True))
    )
    images = torch.randn(4, 1, 6, 6)
    with torch.no_grad():
        expected_conv = model.conv(images).numpy().copy()

    (fields,) = list(responses(model, [images], layers=["conv", "relu"]))

    assert (fields["conv"] < 0).any()
    np.testing.assert_array_equal(fields["conv"], expected_conv)
    np.testing.assert_array_equal(fields["relu"], np.maximum(expected_conv, 0))


class SharedActivation(nn.Module):
    """Two linear layers that share one ReLU module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))


def test_repeated_module_gives_one_stream_per_call():
    torch.manual_seed(1)
    model = SharedActivation()
    batches = [torch.randn(6, 4), torch.randn(3, 4)]

    captured = list(responses(model, batches, layers=["act", "fc1"]))

    for fields, x in zip(captured, batches, strict=True):
        with torch.no_grad():
            first = torch.relu(model.fc1(x))
            second = torch.relu(model.fc2(first))
        assert set(fields) == {"act#0", "act#1", "fc1"}
        np.testing.assert_array_equal(fields["act#0"], first.numpy())
        np.testing.assert_array_equal(fields["act#1"], second.numpy())
        assert fields["act#1"].shape == (len(x), 3)


class FakeModelOutput(OrderedDict):
    """Mapping that, like a Hugging Face ModelOutput, omits fields that are None."""


Pair = namedtuple("Pair", ["main", "extra"])

STRUCTURES = {
    "tuple": lambda y: (y, y * 2),
    "list": lambda y: [y, -y],
    "namedtuple": lambda y: Pair(y, y + 1),
    "dict": lambda y: {"logits": y, "other": y * 0},
    "model_output": lambda y: FakeModelOutput(last_hidden_state=y, pooled=y.sum(dim=1)),
    "nested": lambda y: ((y, 1.0), "label"),
}


class Structured(nn.Module):
    """A linear layer whose output is wrapped in a tuple, mapping or similar."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.wrap = wrap

    def forward(self, x: torch.Tensor):
        return self.wrap(self.linear(x))


class Holder(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.block(x)
        return x


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_structured_output_uses_first_tensor(kind):
    torch.manual_seed(2)
    model = Holder(Structured(STRUCTURES[kind]))
    x = torch.randn(5, 3)

    (fields,) = list(responses(model, [x], layers=["block"]))

    with torch.no_grad():
        expected = model.block.linear(x).numpy()
    np.testing.assert_array_equal(fields["block"], expected)


@pytest.mark.parametrize("output", [None, (), {}, ("label", 3)])
def test_output_without_tensor_names_layer(output):
    model = Holder(Structured(lambda y: output))
    producer = responses(model, [torch.zeros(2, 3)], layers=["block"])
    with pytest.raises(TypeError, match="Layer 'block' returned"):
        list(producer)
    assert_no_forward_hooks(model)


# -- model state after capture ------------------------------------------------


class TrainingProbe(nn.Module):
    """Identity that records the training flag it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def batchnorm_model() -> nn.Sequential:
    torch.manual_seed(3)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 2, kernel_size=3),
            bn=nn.BatchNorm2d(2),
            relu=nn.ReLU(),
            probe=TrainingProbe(),
            drop=nn.Dropout(0.5),
            flat=nn.Flatten(),
        )
    )
    # Non-default running statistics, so a reset would show as well as an update.
    model.bn.running_mean.fill_(0.25)
    model.bn.running_var.fill_(2.0)
    model.bn.num_batches_tracked.fill_(7)
    model.train()
    model.relu.eval()  # mixed flags: each submodule must get its own back
    return model


def test_training_flags_and_batchnorm_restored():
    model = batchnorm_model()
    flags = training_flags(model)
    buffers = {key: value.clone() for key, value in model.bn.named_buffers()}
    batches = [torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)]

    captured = list(responses(model, batches, layers=["bn", "drop"]))

    assert training_flags(model) == flags
    for key, value in model.bn.named_buffers():
        assert torch.equal(value, buffers[key]), key
    assert model.probe.seen == [False, False]
    assert torch.is_grad_enabled()

    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        for fields, x in zip(captured, batches, strict=True):
            np.testing.assert_array_equal(fields["drop"], reference(x).numpy().reshape(4, 2, 3, 3))
            np.testing.assert_array_equal(fields["bn"], reference.bn(reference.conv(x)).numpy())


def test_hooks_removed_after_success(digits_model, digits_test_loader):
    producer = responses(digits_model, digits_test_loader, layers=list(digits.LAYER_NAMES))
    iterator = iter(producer)
    next(iterator)
    # Between batches the model carries no hooks, even with the iteration unfinished.
    assert_no_forward_hooks(digits_model)
    for _ in iterator:
        pass
    assert_no_forward_hooks(digits_model)


def test_existing_user_hook_kept():
    model = batchnorm_model()
    calls = []
    handle = model.relu.register_forward_hook(lambda module, args, output: calls.append(1))
    before = forward_hook_counts(model)

    list(responses(model, [torch.randn(2, 1, 5, 5)], layers=["relu", "bn"]))

    assert forward_hook_counts(model) == before
    assert model.relu._forward_hooks.keys() == {handle.id}
    assert calls == [1]
    handle.remove()


class FailingOnCall(nn.Module):
    """Identity that raises ``error`` on call number ``fail_on`` (counting from 0)."""

    def __init__(self, error: BaseException, fail_on: int) -> None:
        super().__init__()
        self.error = error
        self.fail_on = fail_on
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self.calls
        self.calls += 1
        if call == self.fail_on:
            raise self.error
        return x


def failing_model(error: BaseException) -> nn.Sequential:
    model = nn.Sequential(
        OrderedDict(fc=nn.Linear(3, 3), relu=nn.ReLU(), fail=FailingOnCall(error, fail_on=1))
    )
    model.train()
    return model


@pytest.mark.parametrize("error", [ValueError("broken forward"), KeyboardInterrupt()])
def test_hooks_removed_after_error_in_forward(error):
    model = failing_model(error)
    flags = training_flags(model)
    producer = responses(model, [torch.randn(2, 3), torch.randn(2, 3)], layers=["fc", "relu"])

    seen = []
    with pytest.raises(type(error)):
        for fields in producer:
            seen.append(fields)

    assert len(seen) == 1
    assert_no_forward_hooks(model)
    assert training_flags(model) == flags


def test_hooks_removed_after_interrupt_in_introspect():
    model = failing_model(KeyboardInterrupt())
    flags = training_flags(model)
    producer = responses(model, [torch.randn(2, 3)] * 3, layers=["relu"])
    with pytest.raises(KeyboardInterrupt):
        IUA.introspect(producer)
    assert_no_forward_hooks(model)
    assert training_flags(model) == flags


def test_hooks_removed_after_interrupt_in_data():
    model = failing_model(ValueError("never raised"))
    model.fail.fail_on = -1
    flags = training_flags(model)

    def interrupted_batches():
        yield torch.randn(2, 3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(responses(model, interrupted_batches(), layers=["fc", "relu"]))
    assert_no_forward_hooks(model)
    assert training_flags(model) == flags


def test_hooks_removed_after_interrupt_in_consumer():
    model = failing_model(ValueError("never raised"))
    model.fail.fail_on = -1
    flags = training_flags(model)
    iterator = iter(responses(model, [torch.randn(2, 3)] * 3, layers=["fc", "relu"]))

    with pytest.raises(KeyboardInterrupt):
        for _ in iterator:
            raise KeyboardInterrupt

    # The suspended generator is still alive, and the model must not depend on its cleanup.
    assert iterator.gi_frame is not None
    assert_no_forward_hooks(model)
    assert training_flags(model) == flags


class Bypass(nn.Module):
    """A model whose ``skip`` module is registered but never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.skip = nn.ReLU()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def test_bypassed_layer_reported_by_name():
    model = Bypass()
    producer = responses(model, [torch.randn(2, 3)], layers=["act", "skip"])
    with pytest.raises(RuntimeError, match=r"'skip' did not run in the forward pass of batch 0"):
        list(producer)
    assert_no_forward_hooks(model)


class VaryingCalls(nn.Module):
    """Calls ``act`` once more on each batch than on the one before."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        for _ in range(self.batches):
            x = self.act(x)
        return x


def test_changing_call_count_raises():
    producer = responses(VaryingCalls(), [torch.randn(2, 3)] * 2, layers=["act"])
    with pytest.raises(RuntimeError, match=r"'act' ran 2 times on batch 1 but 1 on batch 0"):
        list(producer)


# -- layer selection ----------------------------------------------------------


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.gelu = nn.GELU()
        self.silu = nn.SiLU()
        self.tanh = nn.Tanh()
        self.relu = nn.ReLU()
        self.relu6 = nn.ReLU6()
        self.hardsigmoid = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        x = self.relu6(self.relu(self.tanh(self.silu(self.gelu(x)))))
        return self.hardsigmoid(x)


def test_non_relu_warning_emitted_once():
    model = Activations()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = [nn.GELU, nn.SiLU, "tanh", "relu"]
        producer = responses(model, [torch.randn(2, 3)] * 3, layers=layers)
        list(producer)
        IUA.introspect(producer)

    assert len(caught) == 1
    message = str(caught[0].message)
    assert "within atol of zero" in message
    assert "not 'dead'" in message or "rather than dead" in message
    for name in ("'gelu'", "'silu'", "'tanh'"):
        assert name in message
    assert "'relu'" not in message
    assert caught[0].filename == __file__


def test_relu_selection_does_not_warn():
    model = Activations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(responses(model, [torch.randn(2, 3)], layers=["relu", "relu6", "hardsigmoid", "fc"]))


def test_unknown_layer_lists_close_matches(digits_model):
    with pytest.raises(ValueError, match="Unknown layer 'relu'") as info:
        responses(digits_model, [], layers=["relu"])
    for name in ("'relu1'", "'relu2'", "'relu3'"):
        assert name in str(info.value)

    with pytest.raises(ValueError, match="Known names: 'conv1'"):
        responses(digits_model, [], layers=["zzzz"])


def test_type_selects_every_instance(digits_model, digits_test_loader):
    relus = responses(digits_model, digits_test_loader, layers=nn.ReLU)
    assert list(relus.layers) == ["relu1", "relu2", "relu3"]
    assert list(responses(digits_model, digits_test_loader).layers) == ["relu1", "relu2", "relu3"]

    mixed = responses(digits_model, digits_test_loader, layers=[nn.Conv2d, "fc1", "conv1"])
    assert list(mixed.layers) == ["conv1", "conv2", "fc1"]
    fields = next(iter(mixed))
    assert set(fields) == {"conv1", "conv2", "fc1"}


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        (nn.LSTM, ValueError, "no submodule of type LSTM"),
        ([3], TypeError, "module name"),
        ([], ValueError, "layers is empty"),
    ],
)
def test_invalid_layer_selection(digits_model, layers, error, match):
    with pytest.raises(error, match=match):
        responses(digits_model, [], layers=layers)


def test_aliases_of_shared_module_rejected():
    model = nn.Module()
    model.first = nn.ReLU()
    model.second = model.first
    with pytest.raises(ValueError, match="'first' and 'second' are the same module"):
        responses(model, [], layers=["first", "second"])


# -- producer forms and inputs -------------------------------------------------


def test_callable_form_keeps_loader_batching(digits_model, digits_test_loader):
    producer = responses(digits_model, digits_test_loader, layers=["relu3"])
    items = list(producer(batch_size=7))
    assert all(isinstance(item, ResponseBatch) for item in items)
    assert [len(item.fields["relu3"]) for item in items] == [50] * 7 + [10]
    for item, fields in zip(items, producer, strict=True):
        np.testing.assert_array_equal(item.fields["relu3"], fields["relu3"])


def test_tensor_output_without_numpy(digits_model, digits_test_loader):
    tensors = list(responses(digits_model, digits_test_loader, layers=["relu2"], as_numpy=False))
    arrays = list(responses(digits_model, digits_test_loader, layers=["relu2"]))
    for tensor_fields, array_fields in zip(tensors, arrays, strict=True):
        tensor = tensor_fields["relu2"]
        assert isinstance(tensor, torch.Tensor)
        assert tensor.device == torch.device("cpu")
        assert not tensor.requires_grad
        np.testing.assert_array_equal(tensor.numpy(), array_fields["relu2"])

    from_tensors = IUA.introspect(
        responses(digits_model, digits_test_loader, layers=["relu2"], as_numpy=False)
    )
    from_arrays = IUA.introspect(responses(digits_model, digits_test_loader, layers=["relu2"]))
    np.testing.assert_array_equal(
        from_tensors.results["relu2"].unit_inactive_count,
        from_arrays.results["relu2"].unit_inactive_count,
    )


def test_bfloat16_becomes_exact_float32():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU()).to(torch.bfloat16)
    x = torch.randn(5, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model[0](x)

    (arrays,) = list(responses(model, [x], layers=["0"]))
    (tensors,) = list(responses(model, [x], layers=["0"], as_numpy=False))

    assert arrays["0"].dtype == np.float32
    np.testing.assert_array_equal(arrays["0"], expected.float().numpy())
    assert tensors["0"].dtype == torch.bfloat16
    assert torch.equal(tensors["0"], expected)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(3, 2)
        self.right = nn.Linear(4, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.left(a) + self.right(b)


def test_input_forms():
    torch.manual_seed(5)
    model = TwoInputs()
    a, b, target = torch.randn(3, 3), torch.randn(3, 4), torch.zeros(3)
    with torch.no_grad():
        expected = model.right(b).numpy()

    forms = [{"a": a, "b": b}, ((a, b), target), [[a, b], target], ({"a": a, "b": b}, target)]
    for batch in forms:
        (fields,) = list(responses(model, [batch], layers=["right"]))
        np.testing.assert_array_equal(fields["right"], expected)

    single = nn.Sequential(nn.Linear(3, 2))
    loader = DataLoader(TensorDataset(a), batch_size=2)
    captured = list(responses(single, loader, layers=["0"]))
    assert [len(fields["0"]) for fields in captured] == [2, 1]
    (from_numpy,) = list(responses(single, [a.numpy()], layers=["0"]))
    with torch.no_grad():
        np.testing.assert_array_equal(from_numpy["0"], single(a).numpy())


def test_single_tensor_data_rejected():
    with pytest.raises(TypeError, match="single array"):
        responses(nn.Sequential(nn.ReLU()), torch.zeros(4, 3), layers=["0"])


def test_expected_inputs(digits_test_loader):
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    assert responses(model, digits_test_loader, layers=["1"]).expected_inputs == 360
    dropping = DataLoader(digits.digits_dataset("test"), batch_size=50, drop_last=True)
    assert responses(model, dropping, layers=["1"]).expected_inputs == 350
    batches = [torch.zeros(3, 2), torch.zeros(4, 2)]
    assert responses(model, batches, layers=["1"]).expected_inputs == 7
    assert responses(model, iter(batches), layers=["1"]).expected_inputs is None


def test_repr_names_layers(digits_model):
    producer = responses(digits_model, [], layers=["relu1"])
    assert isinstance(producer, Responses)
    assert "relu1" in repr(producer)


def test_import_without_torch_names_extra():
    for module in ("iua_widgets.torch", "iua_widgets.models.digits"):
        code = f"import sys; sys.modules['torch'] = None; import {module}"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert result.returncode != 0, module
        assert "ImportError" in result.stderr, module
        assert 'pip install "iua-widgets[torch]"' in result.stderr, module


# -- the shipped digits model -------------------------------------------------


def test_digits_loader_splits():
    images, labels = digits.digits_arrays("all")
    from sklearn.datasets import load_digits

    reference = load_digits()
    np.testing.assert_array_equal(images[:, 0], (reference.images / 16).astype(np.float32))
    np.testing.assert_array_equal(labels, reference.target)

    sizes = {}
    for split in digits.SPLITS:
        loader = digits.digits_loader(batch_size=64, split=split)
        batches = list(loader)
        x = torch.cat([batch[0] for batch in batches])
        y = torch.cat([batch[1] for batch in batches])
        assert x.dtype == torch.float32
        assert tuple(x.shape[1:]) == (1, 8, 8)
        assert float(x.min()) == 0.0
        assert float(x.max()) == 1.0
        again = torch.cat([batch[0] for batch in digits.digits_loader(64, split)])
        assert torch.equal(x, again)
        sizes[split] = len(y)
        if split == "test":
            np.testing.assert_array_equal(x.numpy(), images[::5])
    assert sizes == {"train": 1437, "test": 360, "all": 1797}

    with pytest.raises(ValueError, match="split must be one of"):
        digits.digits_loader(split="validation")


def test_digits_layer_names():
    model = digits.build_digits_cnn()
    assert tuple(name for name, _ in model.named_children()) == digits.LAYER_NAMES


def test_shipped_weights_accuracy(digits_model):
    correct = total = 0
    with torch.no_grad():
        for images, labels in digits.digits_loader(batch_size=128, split="test"):
            correct += int((digits_model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    assert total == 360
    assert correct / total > 0.9


def test_shipped_weights_load_without_pickle(monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickling is not allowed when loading the shipped weights")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    model = digits.load_digits_cnn()
    assert not model.training

    untrained = digits.build_digits_cnn()
    for key, value in untrained.state_dict().items():
        loaded = model.state_dict()[key]
        assert loaded.shape == value.shape, key
        assert loaded.dtype == torch.float32, key
        assert not torch.equal(loaded, value), key


def test_weights_round_trip_through_npz(tmp_path):
    torch.manual_seed(6)
    model = digits.build_digits_cnn()
    path = tmp_path / "weights.npz"
    digits.save_state_dict(model, path)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(model.state_dict())
    loaded = digits.load_digits_cnn(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_device_argument_and_parameterless_model():
    x = torch.randn(3, 4)
    parameterless = nn.Sequential(nn.ReLU())
    producer = responses(parameterless, [x], layers=["0"])
    assert producer.device == torch.device("cpu")
    (fields,) = list(responses(parameterless, [x], layers=["0"], device="cpu"))
    np.testing.assert_array_equal(fields["0"], torch.relu(x).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_responses(digits_model, digits_test_loader):
    model = copy.deepcopy(digits_model).to("cuda")
    tensors = list(responses(model, digits_test_loader, layers=["relu2"], as_numpy=False))
    arrays = list(responses(model, digits_test_loader, layers=["relu2"]))
    on_cpu = list(responses(digits_model, digits_test_loader, layers=["relu2"]))
    for tensor_fields, array_fields, cpu_fields in zip(tensors, arrays, on_cpu, strict=True):
        assert tensor_fields["relu2"].device.type == "cuda"
        np.testing.assert_array_equal(tensor_fields["relu2"].cpu().numpy(), array_fields["relu2"])
        np.testing.assert_allclose(array_fields["relu2"], cpu_fields["relu2"], atol=1e-5)
