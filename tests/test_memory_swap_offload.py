"""Block swapping and activation offload on the tiny FLUX transformer: the same gradients, and the
weights really stream (a block used while it is out of the device would compute with poison)."""

from __future__ import annotations

import math

import pytest
import torch

from loratui.lora.inject import inject_lora
from loratui.memory.block_swap import BlockSwap
from loratui.memory.blocks import transformer_blocks
from loratui.memory.offload import enable_offloaded_checkpointing
from loratui.memory.stored import block_linears, store_linear

torch.set_num_threads(1)


class PoisonedSwap(BlockSwap):
    """Host copies filled with poison; blocks arrive from a clean copy. Also records what is loaded at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clean = [[h.clone() for h in host] for host in self.host]
        for host in self.host:
            for h in host:
                h.fill_(float("nan") if h.is_floating_point() else 77)
        self.most_loaded = 0
        self.events: list[tuple[str, int]] = []

    def _upload(self, i: int) -> list[torch.Tensor]:
        self.events.append(("upload", i))
        return [c.clone() for c in self.clean[i]]

    def _issue(self, i: int) -> None:
        super()._issue(i)
        self.most_loaded = max(self.most_loaded, len(self.loaded | set(self.pending)))


def tiny_flux(precision: str | None):
    from diffusers import FluxTransformer2DModel

    from loratui.models.builtin import ensure_builtin

    model = FluxTransformer2DModel.from_pretrained(str(ensure_builtin("tiny-flux")), subfolder="transformer")
    model.requires_grad_(False)
    if precision:
        for block in transformer_blocks(model):
            for lin in list(block_linears(block)):
                store_linear(lin, precision)
    net = inject_lora(model, component="unet", family="flux", preset="all", rank=4, alpha=4,
                      generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # non-zero up factors, so every block's LoRA and input gradients are exercised
        gen = torch.Generator().manual_seed(2)
        for name, p in net.named_parameters():
            if "lora_up" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, net


def step(model, net) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    c = model.config
    out = model(hidden_states=torch.randn(2, 16, c.in_channels, generator=g),
                encoder_hidden_states=torch.randn(2, 5, c.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(2, c.pooled_projection_dim, generator=g),
                timestep=torch.tensor([0.3, 0.7]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
                guidance=torch.tensor([1.0, 1.0]), return_dict=False)[0]
    loss = out.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def checkpointing(model, mode: str) -> None:
    if mode == "checkpoint":
        model.enable_gradient_checkpointing()
    elif mode == "offload":
        enable_offloaded_checkpointing(model)


@pytest.mark.parametrize("mode, precision, count", [
    ("plain", None, 3), ("checkpoint", None, 4), ("offload", None, 2), ("plain", "int8", 4),
    ("checkpoint", "int4", 3),
])
def test_block_swap_gives_the_same_gradients_and_streams_every_swapped_block(mode: str, precision: str | None,
                                                                            count: int) -> None:
    model, net = tiny_flux(precision)
    checkpointing(model, mode)
    ref_loss, ref_grads = step(model, net)

    model, net = tiny_flux(precision)
    checkpointing(model, mode)
    swap = PoisonedSwap(transformer_blocks(model), count, "cpu")
    loss, grads = step(model, net)
    # Bit for bit: a block computed with its host copy would have put NaN in here.
    assert torch.equal(loss, ref_loss) and torch.isfinite(loss)
    assert set(grads) == set(ref_grads) and all(torch.equal(grads[k], ref_grads[k]) for k in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
    # Every swapped block was brought in for the forward and again for the backward (the last one stays
    # for the backward that starts with it), and never more than two were on the device (or arriving) at once.
    uploads = [i for kind, i in swap.events if kind == "upload"]
    assert sorted(set(uploads)) == list(range(count))
    assert len(uploads) == 2 * count - 1
    assert swap.most_loaded == 2  # one computing, the next one arriving
    # After the step the device holds at most the first swapped block and its frozen tensors only there.
    swap.release_all()
    assert not swap.loaded


def test_lora_factors_of_swapped_blocks_stay_with_the_optimizer() -> None:
    model, net = tiny_flux(None)
    blocks = transformer_blocks(model)
    factors = {id(p) for p in net.parameters()}
    swap = BlockSwap(blocks, 2, "cpu")
    held = {id(h) for host in swap.host for h in host}
    for block in blocks[-2:]:
        for p in block.parameters():
            if id(p) in factors:
                assert p.requires_grad and id(p) not in held
            else:
                assert not p.requires_grad
    assert swap.host_bytes > 0


def test_activation_offload_sends_each_checkpointed_input_to_the_host_and_changes_nothing() -> None:
    model, net = tiny_flux(None)
    model.enable_gradient_checkpointing()
    ref_loss, ref_grads = step(model, net)

    model, net = tiny_flux(None)
    func = enable_offloaded_checkpointing(model)
    loss, grads = step(model, net)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)
    # Two double and two single blocks, batch 2: each sends at least its image tokens (2 × 16 × 32 floats).
    assert func.offloaded_bytes >= 4 * 2 * 16 * 32 * 4


def test_activation_offload_still_trains_the_first_block_when_its_inputs_need_no_gradient() -> None:
    model, net = tiny_flux(None)
    enable_offloaded_checkpointing(model)
    _, grads = step(model, net)
    first = [g for name, g in grads.items() if name.startswith("lora_unet_transformer_blocks_0_")]
    assert first and all(g.abs().sum() > 0 for g in first)


def test_a_sampling_pass_between_steps_leaves_no_extra_block_on_the_device() -> None:
    model, net = tiny_flux(None)
    ref_loss, ref_grads = step(model, net)

    model, net = tiny_flux(None)
    swap = PoisonedSwap(transformer_blocks(model), 3, "cpu")
    with torch.no_grad():  # what sampling does between optimizer steps
        step_inputs_forward(model)
    assert swap.loaded == {2}  # the last block stays after a forward
    swap.most_loaded = 0
    loss, grads = step(model, net)
    assert torch.equal(loss, ref_loss) and all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)
    assert swap.most_loaded == 2


def step_inputs_forward(model) -> None:
    g = torch.Generator().manual_seed(5)
    c = model.config
    model(hidden_states=torch.randn(1, 16, c.in_channels, generator=g),
          encoder_hidden_states=torch.randn(1, 5, c.joint_attention_dim, generator=g),
          pooled_projections=torch.randn(1, c.pooled_projection_dim, generator=g), timestep=torch.tensor([0.5]),
          img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([1.0]), return_dict=False)


# -- other transformer families: nothing here is FLUX-specific ---------------------------------------


def wrap_block_linears(model, seed: int = 3) -> list[torch.nn.Parameter]:
    """A rank-2 LoRA with non-zero up factors around every Linear inside the blocks; its parameters."""
    from loratui.lora.layer import LoRAModule

    gen = torch.Generator().manual_seed(seed)
    params = []
    for block in transformer_blocks(model):
        for name, module in list(block.named_modules()):
            if type(module) is not torch.nn.Linear and not isinstance(module, torch.nn.Linear):
                continue
            parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
            lora = LoRAModule(module, 2, 2.0, generator=gen)
            with torch.no_grad():
                lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen) * 0.05)
            setattr(parent, name.rpartition(".")[2], lora)
            params += list(lora.lora_parameters())
    return params


def other_family(name: str):
    from diffusers import QwenImageTransformer2DModel, ZImageTransformer2DModel

    torch.manual_seed(0)
    if name == "qwen-image":
        model = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=3,
                                            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                            axes_dims_rope=(4, 6, 6))
    else:
        model = ZImageTransformer2DModel(in_channels=16, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
                                         n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
    model.requires_grad_(False)
    return model, wrap_block_linears(model)


def other_step(name: str, model, params) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    if name == "qwen-image":
        out = model(hidden_states=torch.randn(2, 16, 64, generator=g),
                    encoder_hidden_states=torch.randn(2, 5, 32, generator=g), timestep=torch.tensor([0.3, 0.7]),
                    img_shapes=[(1, 4, 4)] * 2, return_dict=False)[0]
    else:
        x = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]
        cap = [torch.randn(5, 32, generator=g) for _ in range(2)]
        out = torch.stack(model(x, torch.tensor([0.3, 0.7]), cap, return_dict=False)[0])
    loss = out.square().mean()
    loss.backward()
    # The last block's text stream feeds nothing, so its factors get no gradient at all.
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("name", ["qwen-image", "z-image"])
@pytest.mark.parametrize("mode", ["checkpoint", "offload"])
def test_swap_and_offload_are_exact_on_qwen_image_and_z_image(name: str, mode: str) -> None:
    model, params = other_family(name)
    model.enable_gradient_checkpointing()
    ref_loss, ref_grads = other_step(name, model, params)

    model, params = other_family(name)
    checkpointing(model, mode)
    blocks = transformer_blocks(model)
    for block in blocks:
        for layer in list(block_linears(block)):
            store_linear(layer, "bf16")  # stored bf16 on a float32 model: not exact, so compare below
    swap = PoisonedSwap(blocks, len(blocks) - 1, "cpu")
    loss, grads = other_step(name, model, params)
    assert torch.isfinite(loss) and math.isclose(float(loss), float(ref_loss), rel_tol=2e-2)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) == sum(bool(g.abs().sum() > 0) for g in ref_grads) > 0
    assert swap.most_loaded == 2


# -- the CUDA protocol, with stand-ins for torch.cuda --------------------------------------------------


class FakeStream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_event(self, event) -> None:
        self.log.append(("wait", self.name, event.number))


class FakeEvent:
    count = 0

    def __init__(self, log: list, current) -> None:
        FakeEvent.count += 1
        self.number, self.log, self.current = FakeEvent.count, log, current

    def record(self, stream) -> None:
        self.log.append(("record", stream.name, self.number))


def test_on_cuda_each_block_is_copied_on_the_side_stream_and_waited_for_before_it_computes(monkeypatch) -> None:
    import contextlib

    log: list[tuple] = []
    compute = FakeStream("compute", log)
    current = [compute]

    @contextlib.contextmanager
    def stream(s):
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    model, net = tiny_flux(None)
    model.enable_gradient_checkpointing()
    ref_loss, ref_grads = step(model, net)
    model, net = tiny_flux(None)  # built before torch.cuda is replaced: diffusers' imports read it
    model.enable_gradient_checkpointing()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream("side", log))
    monkeypatch.setattr(torch.cuda, "Event", lambda: FakeEvent(log, current))
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: (log.append(("pin",)), self.clone())[1])
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: log.append(("keep", id(self), s.name)))

    class Logged(PoisonedSwap):
        def _upload(self, i):
            tensors = super()._upload(i)
            log.append(("upload", i, current[-1].name, [id(t) for t in tensors]))
            return tensors

    blocks = transformer_blocks(model)
    swap = Logged(blocks, 3, "cpu", streams=True)
    assert sum(1 for entry in log if entry == ("pin",)) == sum(len(h) for h in swap.host)
    for i, block in enumerate(swap.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: log.append(("compute", i)))
    loss, grads = step(model, net)
    assert torch.equal(loss, ref_loss) and all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)

    uploads = [(n, e) for n, e in enumerate(log) if e[0] == "upload"]
    assert uploads and all(e[2] == "side" for _, e in uploads)  # never on the compute stream
    for n, (_, i, _, ids) in uploads:
        event = next(e for e in log[n:] if e[0] == "record")
        assert event[1] == "side"  # the event marks the end of this block's copies on the side stream
        # Before block i next computes, the compute stream waits on that very event and keeps its tensors.
        computes = [m for m, e in enumerate(log) if e == ("compute", i) and m > n]
        assert computes, f"block {i} never computed after its upload"
        between = log[n:computes[0]]
        assert ("wait", "compute", event[2]) in between
        kept = {e[1] for e in between if e[0] == "keep" and e[2] == "compute"}
        assert set(ids) <= kept
