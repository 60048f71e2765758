"""networks.lora's network_args as sd-scripts reads them: per-block ranks and alphas reach the exported file, per-block
learning rates and LoRA+ become the optimizer's groups, dim_from_weights continues a file of other ranks.

Every expected number comes from a formula or a literal table here, never from the code under test: the blocks of
a kohya module name are looked up in this file's own tables of sd-scripts' numbering (SD1: IN01.. = 1.., MID = 12,
OUT00.. = 13..; SDXL: input_blocks_N = 1 + N, middle_block_N = 10 + N, output_blocks_N = 13 + N)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.lora_files.export import build_metadata, kohya_state_dict, save_lora
from training.lora_files.importer import read_kohya
from training.lora_files.self_check import verify_lora
from training.models.families import FAMILIES
from training.models.loading import BaseModel
from training.plan.estimates import lora_size
from training.run.optim import make_optimizer
from training.run.prepare import add_networks

# The tiny SD1 UNet's blocks (two down blocks of two layers, two up blocks of three) in sd-scripts' numbering.
TINY_SD1_BLOCKS = {
    "down_blocks_0_attentions_0": 1, "down_blocks_0_resnets_0": 1, "down_blocks_0_attentions_1": 2,
    "down_blocks_0_resnets_1": 2, "down_blocks_0_downsamplers_0": 3, "down_blocks_1_resnets_0": 4,
    "down_blocks_1_resnets_1": 5, "mid_block": 12,
    "up_blocks_0_resnets_0": 13, "up_blocks_0_resnets_1": 14, "up_blocks_0_resnets_2": 15,
    "up_blocks_0_upsamplers_0": 15, "up_blocks_1_attentions_0": 16, "up_blocks_1_resnets_0": 16,
    "up_blocks_1_attentions_1": 17, "up_blocks_1_resnets_1": 17, "up_blocks_1_attentions_2": 18,
    "up_blocks_1_resnets_2": 18,
}
TINY_SD1_ATTENTION_BLOCKS = {1, 2, 12, 16, 17, 18}  # the blocks with a transformer: LoRA's modules without conv
SDXL_SGM = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")
SDXL_FIRST = {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}


def sd1_block(kohya_name: str) -> int:
    rest = kohya_name.removeprefix("lora_unet_")
    return next(block for prefix, block in TINY_SD1_BLOCKS.items() if rest.startswith(prefix + "_"))


def sdxl_block(kohya_name: str) -> int:
    kind, number = SDXL_SGM.match(kohya_name).groups()  # type: ignore[union-attr]
    return SDXL_FIRST[kind] + int(number)


def tiny_base(family: str) -> BaseModel:
    pipe = build_tiny_pipeline(family)
    second = (pipe.text_encoder_2, pipe.tokenizer_2) if family == "sdxl" else (None, None)
    return BaseModel(FAMILIES[family], pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
                     *second)


def randomise_up(groups: list[dict]) -> None:
    """Give every adapter a delta, so the self-check compares real values (a fresh lora_B is zero)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for group in groups:
            for p in group["params"]:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def file_modules(path) -> dict[str, tuple[int, float, bool]]:
    """{kohya module: (rank, alpha, is a 3x3 conv)} read from the file's own tensors."""
    tensors, _ = read_kohya(path)
    out = {}
    for key, down in tensors.items():
        if key.endswith(".lora_down.weight"):
            name = key.removesuffix(".lora_down.weight")
            conv3x3 = down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)
            out[name] = (int(down.shape[0]), float(tensors[f"{name}.alpha"]), conv3x3)
    return out


def export(cfg: TrainConfig, base: BaseModel, path):
    state = kohya_state_dict(base.unet, base.text_encoders, base.family)
    save_lora(path, state, build_metadata(cfg.model_dump(), base.family, {}, state_dict=state))
    return read_kohya(path)[1]


def test_block_dims_give_each_block_its_rank_and_alpha_in_the_exported_file(tmp_path):
    dims = [i % 5 for i in range(25)]  # blocks 0, 5, 10, 15, 20 at rank 0: no linear module there
    alphas = [0.5 * (i + 1) for i in range(25)]
    alphas[1] = 0.0  # alpha 0 means alpha = rank, as networks.lora reads it
    conv_dims = [1 + i % 3 for i in range(25)]
    conv_alphas = [0.25 * (i + 2) for i in range(25)]
    cfg = TrainConfig(network_dim=4, network_alpha=2.0, network_args=[
        f"block_dims={csv(dims)}", f"block_alphas={csv(alphas)}", f"conv_block_dims={csv(conv_dims)}",
        f"conv_block_alphas={csv(conv_alphas)}"])
    base = tiny_base("sd1")
    randomise_up(add_networks(cfg, base))
    meta = export(cfg, base, tmp_path / "blocks.safetensors")

    report = verify_lora(tmp_path / "blocks.safetensors", base.family, base.unet, base.text_encoders)
    assert report.ok, report.problems
    modules = file_modules(tmp_path / "blocks.safetensors")
    unet = {name: m for name, m in modules.items() if name.startswith("lora_unet_")}
    for name, (rank, alpha, conv3x3) in unet.items():
        block = sd1_block(name)
        want = (conv_dims[block], conv_alphas[block]) if conv3x3 else (dims[block], alphas[block] or dims[block])
        assert (rank, alpha) == want, name
    linear_blocks = {sd1_block(n) for n, (_, _, conv) in unet.items() if not conv}
    assert linear_blocks == {b for b in set(TINY_SD1_BLOCKS.values()) if dims[b] > 0} - {3}  # a downsampler: conv only
    assert {sd1_block(n) for n, (_, _, conv) in unet.items() if conv} == set(TINY_SD1_BLOCKS.values())
    text = [m for name, m in modules.items() if name.startswith("lora_te_")]
    assert text and all(m[:2] == (4, 2.0) for m in text)  # block_dims are the UNet's only
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")  # network_dim/alpha, as kohya writes
    assert json.loads(meta["ss_network_args"])["block_dims"] == csv(dims)


def test_sdxl_block_dims_count_23_blocks_in_the_sgm_layout(tmp_path):
    dims = [1 + (i * 7) % 6 for i in range(23)]
    cfg = TrainConfig(network_dim=4, network_alpha=4.0, network_train_unet_only=True,
                      network_args=[f"block_dims={csv(dims)}"])
    base = tiny_base("sdxl")
    randomise_up(add_networks(cfg, base))
    export(cfg, base, tmp_path / "xl.safetensors")
    assert verify_lora(tmp_path / "xl.safetensors", base.family, base.unet, base.text_encoders).ok
    unet = file_modules(tmp_path / "xl.safetensors")
    assert len({sdxl_block(n) for n in unet}) >= 4
    for name, (rank, alpha, _) in unet.items():
        assert (rank, alpha) == (dims[sdxl_block(name)], 4.0), name

    sd1_length = cfg.model_copy(update={"network_args": [f"block_dims={csv([4] * 25)}"]})
    with pytest.raises(UserError, match="block_dims has 25 values, but an SDXL UNet has 23 blocks"):
        add_networks(sd1_length, tiny_base("sdxl"))


def test_block_lr_weights_give_each_block_its_learning_rate_and_zero_blocks_no_parameters():
    lr, te_lr = 1e-3, 2e-4
    cfg = TrainConfig(unet_lr=lr, text_encoder_lr=te_lr, network_dim=4, network_alpha=2.0, network_args=[
        "down_lr_weight=0.1,0.2,0,0.4,0.05,0.6", "mid_lr_weight=0.5", "up_lr_weight=linear+0.1",
        "block_lr_zero_threshold=0.1"])
    down = [0.1, 0.2, 0, 0.4, 0.05, 0.6] + [1.0] * 6  # padded with 1.0 to 12, as sd-scripts does
    down = [w if w > 0.1 else 0.0 for w in down]  # at or below the threshold: not trained
    up = [i / 11 + 0.1 for i in range(12)]  # "linear": 0 .. 1 over the 12 up blocks, plus 0.1
    weight = [*down, 0.5, *up]  # IN00..IN11, MID, OUT00..OUT11
    base = tiny_base("sd1")
    groups = add_networks(cfg, base)

    label = {b: (f"IN{b:02d}" if b < 12 else "MID" if b == 12 else f"OUT{b - 13:02d}") for b in range(25)}
    ids = {id(p): n for n, p in base.unet.named_parameters()}
    unet_groups = [g for g in groups if g["name"].startswith("unet")]
    for group in unet_groups:
        blocks = {sd1_block("lora_unet_" + ids[id(p)].replace(".", "_")) for p in group["params"]}
        assert len(blocks) == 1
        block = blocks.pop()
        assert group["name"] == f"unet_{label[block]}"
        assert group["lr"] == pytest.approx(lr * weight[block])
    trained_blocks = {sd1_block("lora_unet_" + ids[id(p)].replace(".", "_")) for g in unet_groups for p in g["params"]}
    assert trained_blocks == {b for b in TINY_SD1_ATTENTION_BLOCKS if weight[b] > 0} == {1, 12, 16, 17, 18}
    assert weight[2] == 0  # IN02, the tiny UNet's second attention: at weight 0 it has no adapter at all
    for name, p in base.unet.named_parameters():
        assert not (name.startswith("down_blocks.0.attentions.1.") and "lora_" in name)
        assert p.requires_grad == ("lora_" in name)  # nothing but the adapters trains
    assert [(g["name"], g["lr"]) for g in groups if not g["name"].startswith("unet")] == [("text_encoder", te_lr)]
    optimizer = make_optimizer(cfg, [{"params": g["params"], "lr": g["lr"]} for g in groups])
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]


def test_lr_weight_presets_follow_sd_scripts_curves():
    from training.networks.blocks import lr_weights

    spec = TrainConfig(network_args=["down_lr_weight=cosine", "up_lr_weight=sine+0.5", "mid_lr_weight=0.25,,3,7"])
    weights = lr_weights(spec.network, sdxl=True)
    assert len(weights) == 23
    assert weights[1:10] == pytest.approx([math.sin(math.pi / 2 * (8 - i) / 8) for i in range(9)])  # 1 -> 0
    assert weights[10:13] == [0.25, 0.0, 3.0]  # an empty entry is 0; SDXL's middle has 3 blocks: 7 is dropped
    assert weights[13:22] == pytest.approx([math.sin(math.pi / 2 * i / 8) + 0.5 for i in range(9)])
    assert (weights[0], weights[22]) == (1.0, 1.0)  # the time embedding and the output layers


def test_loraplus_puts_the_up_matrices_in_their_own_groups_at_lr_times_ratio():
    lr, te_lr = 1e-3, 2e-4
    cfg = TrainConfig(unet_lr=lr, text_encoder_lr=te_lr, network_args=[
        "loraplus_lr_ratio=4", "loraplus_unet_lr_ratio=16", "mid_lr_weight=0.5"])
    base = tiny_base("sd1")
    groups = {g["name"]: g for g in add_networks(cfg, base)}
    names = {id(p): n for m in (base.unet, base.text_encoder) for n, p in m.named_parameters()}

    def up_only(group):
        return {".lora_B." in names[id(p)] for p in group["params"]}

    assert groups["unet_MID_plus"]["lr"] == pytest.approx(lr * 0.5 * 16)  # the UNet's own ratio wins
    assert groups["unet_MID"]["lr"] == pytest.approx(lr * 0.5)
    assert groups["unet_OUT04_plus"]["lr"] == pytest.approx(lr * 16)
    assert groups["text_encoder_plus"]["lr"] == pytest.approx(te_lr * 4)  # the common ratio
    assert groups["text_encoder"]["lr"] == te_lr
    for name, group in groups.items():
        assert up_only(group) == ({True} if name.endswith("_plus") else {False}), name


@pytest.fixture
def rank8_file(tmp_path):
    """A rank-8 LoRA (alpha 4) with random weights, every module, as another run saved it."""
    first = tiny_base("sd1")
    randomise_up(add_networks(TrainConfig(network_dim=8, network_alpha=4.0), first))
    path = tmp_path / "rank8.safetensors"
    save_file(kohya_state_dict(first.unet, first.text_encoders, first.family, torch.float32), str(path))
    return path, first


def test_dim_from_weights_continues_a_rank_8_file_when_network_dim_says_4(rank8_file):
    path, first = rank8_file
    cfg = TrainConfig(network_dim=4, network_alpha=1.0, network_weights=str(path), dim_from_weights=True)
    second = tiny_base("sd1")
    groups = add_networks(cfg, second)

    for model_a, model_b in ((first.unet, second.unet), (first.text_encoder, second.text_encoder)):
        lora_a = {n: p for n, p in model_a.named_parameters() if "lora_" in n}
        lora_b = {n: p for n, p in model_b.named_parameters() if "lora_" in n}
        assert lora_a.keys() == lora_b.keys() and lora_a
        assert all(torch.equal(lora_a[n], lora_b[n]) for n in lora_a)
        assert {min(p.shape[:2]) for p in lora_b.values()} == {8}
    layer = second.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.scaling["default"] == 4.0 / 8  # the file's alpha / rank, not network_alpha / network_dim
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for m in (second.unet, second.text_encoder) for n, p in m.named_parameters() if "lora_" in n)

    without = cfg.model_copy(update={"dim_from_weights": False})
    with pytest.raises(UserError, match=r"file r=8 .*set network_dim.* or dim_from_weights = true"):
        add_networks(without, tiny_base("sd1"))


def test_dim_from_weights_keeps_a_per_block_locon_file_s_ranks(tmp_path):
    dims, conv_dims = [1 + i % 3 for i in range(25)], [2 + i % 2 for i in range(25)]
    first = tiny_base("sd1")
    randomise_up(add_networks(TrainConfig(network_dim=4, network_train_unet_only=True, network_args=[
        f"block_dims={csv(dims)}", f"conv_block_dims={csv(conv_dims)}"]), first))
    path = tmp_path / "blocks.safetensors"
    save_file(kohya_state_dict(first.unet, [], first.family, torch.float32), str(path))
    cfg = TrainConfig(network_dim=4, network_weights=str(path), dim_from_weights=True)
    with pytest.raises(UserError, match="has no modules for text encoder 1: set network_train_unet_only = true"):
        add_networks(cfg, tiny_base("sd1"))
    second = tiny_base("sd1")
    add_networks(cfg.model_copy(update={"network_train_unet_only": True}), second)
    adapters = {n.removesuffix(".lora_A.default.weight"): p for n, p in second.unet.named_parameters()
                if n.endswith("lora_A.default.weight")}
    assert len(adapters) == len(file_modules(path))
    for name, down in adapters.items():
        block = sd1_block("lora_unet_" + name.replace(".", "_"))
        conv3x3 = down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)
        assert down.shape[0] == (conv_dims[block] if conv3x3 else dims[block]), name
    export(cfg, second, tmp_path / "continued.safetensors")  # the metadata states the LoCon the file is
    assert verify_lora(tmp_path / "continued.safetensors", second.family, second.unet, second.text_encoders).ok


def test_config_needs_network_weights_for_dim_from_weights():
    with pytest.raises(ValueError, match="dim_from_weights = true reads the ranks from network_weights"):
        TrainConfig(dim_from_weights=True)


def test_size_estimate_follows_per_block_ranks():
    """LoRA's values are linear in each module's rank: the estimate at per-block ranks is the sum, over blocks, of
    the block's rank times the estimate of that block alone at rank 1."""
    def unet_values(dims: list[int]) -> int:
        cfg = TrainConfig(network_train_unet_only=True, network_args=[f"block_dims={csv(dims)}"])
        return lora_size(cfg, "sd1").values

    dims = [(3 * i) % 7 for i in range(25)]
    one_hot = [unet_values([1 if b == block else 0 for b in range(25)]) for block in range(25)]
    assert unet_values(dims) == sum(d * v for d, v in zip(dims, one_hot, strict=True))
    # SD1.5's blocks without a transformer: IN00, the downsamplers' (IN03, IN06, IN09), the last down block's
    # resnets (IN10, IN11) and the first up block, which has none (OUT00-OUT02)
    assert [b for b in range(25) if one_hot[b] == 0] == [0, 3, 6, 9, 10, 11, 13, 14, 15]
    assert unet_values([16] * 25) == lora_size(TrainConfig(network_dim=16, network_train_unet_only=True), "sd1").values


def test_a_run_trains_per_block_ranks_and_rates(tmp_path, tiny_sd1, dataset_dir):
    """One tiny in-process run: the step events report each group's lr (base x block weight x LoRA+ ratio), and
    the LoRA it saves holds the per-block ranks and passes the export self-check."""
    from training.contract.events import read_events
    from training.run.runner import run

    lr, dims = 1e-3, [2 + i % 3 for i in range(25)]
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(tiny_sd1), train_data_dir=str(dataset_dir), output_dir=str(tmp_path / "run"),
        output_name="blocks", resolution="64", min_bucket_reso=64, max_bucket_reso=128, network_dim=4,
        network_alpha=2.0, learning_rate=lr, lr_scheduler="constant", mixed_precision="no", seed=5,
        network_train_unet_only=True, validation_every_n_steps=0, max_train_steps=2,
        network_args=[f"block_dims={csv(dims)}", "mid_lr_weight=0.5", "down_lr_weight=zeros+0.25",
                      "loraplus_lr_ratio=8"])
    assert run(cfg) == "done"

    events = read_events(tmp_path / "run")
    steps = [e for e in events if e["event"] == "step"]
    assert steps and steps[-1]["lr"] == pytest.approx({
        "unet_IN01": lr * 0.25, "unet_IN01_plus": lr * 0.25 * 8, "unet_IN02": lr * 0.25,
        "unet_IN02_plus": lr * 0.25 * 8, "unet_MID": lr * 0.5, "unet_MID_plus": lr * 0.5 * 8,
        **{f"unet_OUT{n:02d}{plus}": lr * (8 if plus else 1) for n in (3, 4, 5) for plus in ("", "_plus")}})
    checkpoint = [e for e in events if e["event"] == "checkpoint"][-1]
    assert checkpoint["check_result"]["ok"], checkpoint["check"]
    modules = file_modules(tmp_path / "run" / "blocks.safetensors")
    assert {sd1_block(n) for n in modules} == TINY_SD1_ATTENTION_BLOCKS
    assert all(rank == dims[sd1_block(name)] for name, (rank, _, _) in modules.items())
