"""Training-speed and memory benchmark on a full-size UNet with random weights (no download needed).

    python -m training.bench --batch 1 --steps 50                        # SD1.5, 512 px
    python -m training.bench --batch 8 --steps 50 --compile
    python -m training.bench --family sdxl --batch 1 --steps 20 --gradient-checkpointing --optimizer AdamW8bit
    python -m training.bench --network loha --steps 20                    # one network type
    python -m training.bench --networks all --steps 20                    # every type, one child process each
    python -m training.bench --overhead                                   # host overhead on the CPU proxy

Runs the same ``train_step`` as real training, on step parts from training's own builder (``build_step_parts``),
on batches shaped like cached latents and cached text-encoder outputs (random tensors of the real shapes: the
common setting, and SDXL's only one that fits small GPUs), with SDXL's size and crop keys so its time ids are built
as in training. UNet-only network as training injects it (``--network``: kohya's LoRA set by default; attention-only
LoRA, LoCon, LoHa, LoKr, DoRA). After warm-up steps it prints one JSON line: images/s, seconds per step, adapter
parameters, the LoRA file's size, peak GPU memory and the process's peak RSS. ``--networks`` runs each named type in
a child process of its own (so each RSS peak is its own) and adds a table with each step time relative to
attention-only LoRA. Numbers go to docs/benchmarks.md with the command that made them. The run
fails (exit 1, one line on stderr) on a non-finite loss, on adapters that received no gradient, and on running
out of GPU memory (``--memory-cap-gib`` emulates a smaller card).

``--overhead`` measures what a step costs the host instead: on the CPU proxy (SD1.5's exact UNet block topology at
tiny widths, one thread, so the step is almost all dispatch overhead; on a GPU the same proxy on the device) it prints
ms/step, ATen ops dispatched per step and host synchronisations per step for our step eager and compiled, beside a
minimal eager peft loop (and its compiled form) built in the same process on the same proxy, as the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
import typing
from typing import TYPE_CHECKING, Any

import torch

from training.contract.config import Optimizer, TrainConfig
from training.contract.network import LYCORIS
from training.models.families import SD1, SDXL, Family

if TYPE_CHECKING:
    from training.run.parts import StepParts

BENCH_FAMILIES = {"sd1": SD1, "sdxl": SDXL}
BASELINE = "attn-lora"
# network name -> the TrainConfig settings that choose it (conv ranks and alphas follow --rank, as LyCORIS's do)
NETWORKS: dict[str, dict[str, Any]] = {
    BASELINE: {"network_module": LYCORIS, "network_args": ["algo=lora", "preset=attn-only"]},
    "lora": {},
    "locon": {"conv_dim": 0},  # conv_dim: --rank, set in bench_config
    "loha": {"network_module": LYCORIS, "network_args": ["algo=loha", "preset=full"]},
    "lokr": {"network_module": LYCORIS, "network_args": ["algo=lokr", "preset=full", "factor=8"]},
    "dora": {"network_module": LYCORIS, "network_args": ["algo=locon", "preset=full", "dora_wd=True"]},
}
MODEL_NAMES = {"sd1": "SD1.5 UNet (random weights)", "sdxl": "SDXL UNet (random weights)"}
GIB = 2**30


class BenchFailure(Exception):
    """A benchmark run that must not be reported as a number (exit 1 with this one-line message)."""


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_unet(family: Family, device: torch.device, dtype: torch.dtype):
    """The family's full-size UNet from its bundled config, random weights created directly on ``device`` in the
    compute dtype: no float32 copy ever exists (SDXL's 2.57 B parameters would be 10 GB in float32)."""
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(family.config_dir / "unet"))
    with default_dtype(dtype), torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return unet.to(dtype)  # no-op unless a module made a tensor of its own dtype


def text_shapes(unet_config) -> tuple[int, int | None]:
    """(hidden size, pooled size or None) of the text conditioning this UNet takes: SDXL's ``text_time`` embedding
    reads the pooled vector and six time ids, each embedded to ``addition_time_embed_dim`` (2816 = 1280 + 6 * 256)."""
    hidden = unet_config.cross_attention_dim
    if unet_config.addition_embed_type != "text_time":
        return hidden, None
    return hidden, unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim


def bench_precision(requested: str) -> str:
    """Mixed precision as asked on a GPU. On the CPU: bf16 (autocast supports it, and it halves SDXL's weights),
    anything else becomes float32 ("no"), as before."""
    if torch.cuda.is_available() or requested == "bf16":
        return requested
    return "no"


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The run the benchmark stands for: a UNet-only network with cached latents and text-encoder outputs."""
    network = dict(NETWORKS[args.network])
    if "conv_dim" in network:
        network.update(conv_dim=args.rank, conv_alpha=args.rank / 2)
    return TrainConfig(network_dim=args.rank, network_alpha=args.rank / 2, train_batch_size=args.batch,
                       mixed_precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
                       network_train_unet_only=True, max_train_steps=args.steps + args.warmup,
                       optimizer_type=args.optimizer, torch_compile=args.compile, seed=0,
                       fp8_base=args.fp8_base, **network)


def cached_caption(unet_config, device: torch.device, dtype: torch.dtype) -> dict:
    """A text cache holding one caption's embeddings ("", what every benchmark batch asks for), random tensors of
    the shapes this UNet's text conditioning takes."""
    from training.models.conditioning import TextEmbeds

    hidden_dim, pooled_dim = text_shapes(unet_config)
    pooled = None if pooled_dim is None else torch.randn(pooled_dim, device=device, dtype=dtype)
    return {"": TextEmbeds(torch.randn(77, hidden_dim, device=device, dtype=dtype), pooled)}


def make_step_parts(cfg: TrainConfig, family: Family, unet, accelerator) -> StepParts:
    """The network on ``unet`` as ``training.run.prepare`` injects it for a UNet-only run, then the step's parts from
    training's own builder (no VAE, no text encoders: latents and text embeddings come cached)."""
    from diffusers import DDPMScheduler

    from training.networks.build import Ranks, add_network
    from training.run.prepare import build_step_parts, dtype_for

    dtype = dtype_for(accelerator.mixed_precision)
    params = add_network(unet, cfg.network, Ranks.of(cfg.network, cfg.network_dim, cfg.network_alpha), "unet",
                         cfg.network_dropout)
    for p in params:
        p.data = p.data.float()  # trainable adapter weights in float32, as training.run.prepare keeps them
    if cfg.fp8_base:
        from training.models.low_precision import store_in_fp8

        store_in_fp8(unet, dtype_for(accelerator.mixed_precision))
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    groups = [{"params": params, "lr": cfg.effective_unet_lr, "name": "unet"}]
    return build_step_parts(cfg, accelerator, unet, [], groups, cfg.max_train_steps,
                            noise_scheduler=DDPMScheduler.from_pretrained(str(family.config_dir / "scheduler")),
                            tokenizers=[], vae=None, text_cache=cached_caption(unet.config, accelerator.device, dtype),
                            weight_dtype=dtype)


def make_batch(parts: StepParts, args: argparse.Namespace, sdxl: bool) -> dict:
    """One bucket's batch as the dataloader yields it with cached latents (on the device) and, for SDXL, the
    (B, 2) long size/crop tensors collate makes on the host."""
    n, side = args.batch, args.resolution // 8
    batch = {"latents": torch.randn(n, 4, side, side, device=parts.accelerator.device), "caption": [""] * n,
             "path": [""] * n}
    if sdxl:
        size = torch.tensor([[args.resolution, args.resolution]] * n, dtype=torch.long)
        batch.update(original_size=size, crop_top_left=torch.zeros_like(size), target_size=size.clone())
    return batch


def zero_adapters(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The adapter tensors that start at exactly zero (LoRA's up, one factor of LoHa and LoKr): they make a fresh
    network's delta zero, and one still zero after training got no gradient (a checkpointing or autocast bug would
    show here, not in the speed)."""
    return [p for p in params if not p.detach().any()]


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (GIB if sys.platform == "darwin" else 2**20), 2)


def measure(args: argparse.Namespace) -> dict:
    """Train args.steps steps after args.warmup and return the figures."""
    from training.run.loop import train_step
    from training.run.prepare import dtype_for

    if torch.cuda.is_available() and args.memory_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * GIB / total))
    from accelerate import Accelerator

    family = BENCH_FAMILIES[args.family]
    accelerator = Accelerator(mixed_precision=bench_precision(args.precision))
    unet = build_unet(family, accelerator.device, dtype_for(accelerator.mixed_precision))
    cfg = bench_config(args)
    parts = make_step_parts(cfg, family, unet, accelerator)
    started_at_zero = zero_adapters(parts.params)
    batch = make_batch(parts, args, sdxl=text_shapes(unet.config)[1] is not None)
    cuda = accelerator.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(args.warmup):
        train_step(parts, batch)
    sync()
    setup_peak = torch.cuda.max_memory_allocated() if cuda else 0  # model build, optimizer state, warm-up steps
    setup_reserved = torch.cuda.max_memory_reserved() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [train_step(parts, batch) for _ in range(args.steps)]
    sync()
    seconds = time.perf_counter() - start
    if not torch.isfinite(torch.stack(losses)).all():
        raise BenchFailure(f"non-finite loss in the benchmark: {[round(x, 4) for x in torch.stack(losses).tolist()]}")
    still_zero = len(zero_adapters(started_at_zero))
    if still_zero:
        raise BenchFailure(f"{still_zero} of {len(started_at_zero)} zero-initialised adapter tensors received no "
                           f"gradient: their weights never moved")
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model": MODEL_NAMES[args.family], "family": args.family, "resolution": args.resolution,
        "batch": args.batch, "precision": accelerator.mixed_precision, "rank": args.rank,
        "optimizer": args.optimizer, "compile": args.compile, "fp8_base": args.fp8_base,
        "gradient_checkpointing": args.gradient_checkpointing,
        "steps": args.steps, "warmup": args.warmup,
        "images_per_s": round(args.steps * args.batch / seconds, 2), "s_per_step": round(seconds / args.steps, 4),
        "loss": round(float(torch.stack(losses).float().mean()), 4), "network": args.network,
        "kind": cfg.network.kind, "lora_layers": adapter_layers(unet),
        "adapter_params": sum(p.numel() for p in parts.params), "file_mb": round(file_megabytes(cfg, args), 2),
        "peak_rss_gib": peak_rss_gib(),
        # timed window only (as before); then the whole run including build and warm-up, and the allocator's
        # reservations, which is what a card of that size must hold (plus the CUDA context, about 0.5 GiB)
        "peak_mem_gib": round(peak / GIB, 2) if cuda else None,
        "peak_mem_gib_run": round(max(peak, setup_peak) / GIB, 2) if cuda else None,
        "peak_reserved_gib_run": round(max(torch.cuda.max_memory_reserved(), setup_reserved) / GIB, 2)
        if cuda else None,
        "memory_cap_gib": args.memory_cap_gib if cuda else None,
    }


def adapter_layers(unet: torch.nn.Module) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in unet.modules())


def file_megabytes(cfg: TrainConfig, args: argparse.Namespace) -> float:
    """The LoRA file this network saves in fp16 (the estimate the UI shows: tensors exact, header estimated)."""
    from training.plan.estimates import lora_size

    return lora_size(cfg, args.family).megabytes


# --- --overhead: host cost per step on the CPU proxy
OVERHEAD_VARIANTS = ("ours-eager", "ours-compiled", "minimal-eager", "minimal-compiled")
PROXY_WIDTHS = [32, 32, 64, 64]  # SD1.5's four levels (320, 640, 1280, 1280) at a tenth of the width, or less
PROXY_TEXT_DIM = 32


def build_proxy_unet(device: torch.device):
    """SD1.5's UNet block for block (levels, layers per block, attention placement, heads) at tiny widths: on a CPU
    its step costs what SD1.5's costs the host on a GPU, dispatching the same ops, with almost no arithmetic."""
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(str(SD1.config_dir / "unet")))
    config.update(block_out_channels=PROXY_WIDTHS, norm_num_groups=8, cross_attention_dim=PROXY_TEXT_DIM,
                  sample_size=8)
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(config).to(device)


def adapted_module_names(unet: torch.nn.Module) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]


def minimal_step(unet: torch.nn.Module, targets: list[str], args: argparse.Namespace, compiled: bool):
    """The reference: the shortest correct eager LoRA loop (peft adapters on the same modules as ours, AdamW,
    epsilon MSE), written the way a tutorial writes it."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig, inject_adapter_in_model

    unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank / 2, target_modules=targets), unet)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_pretrained(str(SD1.config_dir / "scheduler"))
    model = torch.compile(unet) if compiled else unet
    device = next(unet.parameters()).device
    latents = torch.randn(args.batch, 4, 8, 8, device=device)
    hidden = torch.randn(args.batch, 77, PROXY_TEXT_DIM, device=device)

    def step() -> torch.Tensor:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), device=device)
        prediction = model(scheduler.add_noise(latents, noise, timesteps), timesteps,
                           encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer


def our_step(args: argparse.Namespace, compiled: bool):
    """Our ``train_step`` on step parts from training's own builder, on the proxy with cached latents."""
    from accelerate import Accelerator

    from training.run.loop import train_step

    accelerator = Accelerator(mixed_precision="no")
    unet = build_proxy_unet(accelerator.device)
    cfg = TrainConfig(network_dim=args.rank, network_alpha=args.rank / 2, train_batch_size=args.batch,
                      mixed_precision="no", network_train_unet_only=True, max_train_steps=10**6,
                      torch_compile=compiled, seed=0)
    parts = make_step_parts(cfg, SD1, unet, accelerator)
    batch = {"latents": torch.randn(args.batch, 4, 8, 8, device=accelerator.device), "caption": [""] * args.batch,
             "path": [""] * args.batch}
    return (lambda: train_step(parts, batch)), parts.optimizer, adapted_module_names(unet)


def time_steps(step, args: argparse.Namespace) -> float:
    """Milliseconds per step: the median over ``args.rounds`` rounds of ``args.steps`` steps (a shared machine is
    noisy), the device drained once per round."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    rounds = []
    for _ in range(args.rounds):
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        rounds.append((time.perf_counter() - start) * 1000 / args.steps)
    return sorted(rounds)[len(rounds) // 2]


def count_step(step, optimizer, steps: int = 3) -> tuple[float, float]:
    """(ATen ops dispatched, host syncs) per step, over a few steps after warm-up (see training.run.overhead)."""
    from training.run.overhead import StepCounter, dispatched_ops, optimizer_step_counters

    ops = dispatched_ops(step, steps)  # first: after a dispatch mode, dynamo runs the compiled frame eagerly
    counter = StepCounter(ignored=optimizer_step_counters(optimizer))
    with counter:
        for _ in range(steps):
            step()
    return ops, counter.syncs / steps


def proxy_targets(args: argparse.Namespace) -> list[str]:
    """The modules our network adapts on the proxy: the minimal loop adapts the same ones."""
    from training.networks.build import Ranks, add_network

    unet = build_proxy_unet(torch.device("cpu"))
    cfg = TrainConfig(network_dim=args.rank, network_alpha=args.rank / 2, network_train_unet_only=True)
    add_network(unet, cfg.network, Ranks.of(cfg.network, cfg.network_dim, cfg.network_alpha), "unet", 0.0)
    return adapted_module_names(unet)


def measure_variant(args: argparse.Namespace, variant: str) -> dict:
    torch.set_num_threads(1)
    who, mode = variant.split("-")
    if who == "ours":
        step, optimizer, _ = our_step(args, mode == "compiled")
    else:
        unet = build_proxy_unet(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        step, optimizer = minimal_step(unet, proxy_targets(args), args, mode == "compiled")
    for _ in range(args.warmup):
        step()
    ms = time_steps(step, args)
    ops, syncs = count_step(step, optimizer)
    return {"variant": variant, "ms_per_step": round(ms, 1), "ops_per_step": round(ops),
            "host_syncs_per_step": round(syncs, 2), "batch": args.batch, "threads": 1,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def measure_overhead(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Each variant in a child process of its own: compiled code, dynamo's caches and the allocator of one never
    touch another's numbers."""
    if len(args.variants) == 1:
        result = measure_variant(args, args.variants[0])
        print(json.dumps(result), flush=True)
        return [result]
    results = []
    for variant in args.variants:
        child = subprocess.run([sys.executable, "-m", "training.bench", *overhead_child_args(argv), "--variants",
                                variant], capture_output=True, text=True)
        if child.returncode != 0:
            line = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            sys.exit(f"training.bench: {variant}: {line}")
        results.append(json.loads([ln for ln in child.stdout.splitlines() if ln.startswith("{")][-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


def overhead_child_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--variants":
            skip = True
        elif not arg.startswith("--variants="):
            out.append(arg)
    return out


def overhead_table(results: list[dict]) -> str:
    lines = ["| step | ms/step | ATen ops/step | host syncs/step |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['ops_per_step']:,} | {r['host_syncs_per_step']:g} |"
              for r in results]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.bench", description=__doc__.split("\n")[0],
        epilog="Prints one JSON line (images/s, s/step, peak GPU memory). Exit status 1 with one line on stderr for "
               "a non-finite loss, LoRA layers that got no gradient, or running out of GPU memory; 2 for bad "
               "arguments.")
    parser.add_argument("--family", choices=sorted(BENCH_FAMILIES), default="sd1",
                        help="full-size UNet to build (default %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="images per step (default %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them (default %(default)s)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="pixels, a multiple of 64 (default: the family's, 512 / 1024)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank, alpha is half of it (default %(default)s)")
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="bf16",
                        help="mixed precision (default %(default)s); without a CUDA GPU fp16 runs as no (float32)")
    parser.add_argument("--optimizer", choices=typing.get_args(Optimizer), default="AdamW",
                        help="(default %(default)s)")
    parser.add_argument("--compile", action="store_true", help="compile the UNet with torch.compile")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--fp8-base", action="store_true",
                        help="frozen UNet Linear/Conv weights stored in float8, upcast per layer (fp8_base)")
    parser.add_argument("--network", choices=sorted(NETWORKS), default="lora",
                        help="network type: kohya's LoRA set (default), attn-lora (attention only, the baseline), "
                             "locon (+ 3x3 convs at --rank), loha, lokr (factor 8), dora (LyCORIS full preset)")
    parser.add_argument("--networks", default=None, metavar="NAMES",
                        help="comma-separated network types, or 'all': each measured in its own child process, then "
                             "a table relative to attn-lora")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="let the CUDA allocator use at most this many GiB, as on a smaller card (CUDA only)")
    parser.add_argument("--overhead", action="store_true",
                        help="host overhead on the CPU proxy (SD1.5 topology, tiny widths, one thread): ms/step, ops "
                             "and host syncs per step, ours and a minimal peft loop, eager and compiled")
    parser.add_argument("--variants", default=",".join(OVERHEAD_VARIANTS),
                        help="with --overhead: which steps, comma-separated (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="with --overhead: timed rounds, median taken")
    args = parser.parse_args(argv)
    if args.overhead:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not args.variants or any(v not in OVERHEAD_VARIANTS for v in args.variants):
            parser.error(f"--variants: choose from {', '.join(OVERHEAD_VARIANTS)}")
    args.resolution = args.resolution or BENCH_FAMILIES[args.family].default_resolution
    if args.resolution % 64 or args.resolution < 64:
        parser.error(f"--resolution {args.resolution}: use a multiple of 64 (latents are 1/8 of it, and the UNet "
                     "halves them up to 3 times)")
    if args.networks is not None:
        names = list(NETWORKS) if args.networks == "all" else [n.strip() for n in args.networks.split(",") if n]
        unknown = [n for n in names if n not in NETWORKS]
        if unknown or not names:
            parser.error(f"--networks {args.networks}: use 'all' or names from {', '.join(NETWORKS)}")
        args.networks = [BASELINE] + [n for n in names if n != BASELINE]
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.rank < 1:
        parser.error("--batch, --steps and --rank must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    from training.__main__ import quiet_libraries
    from training.contract.errors import UserError

    quiet_libraries()
    args = parse_args(argv)
    if args.networks:
        compare_networks(args, sys.argv[1:] if argv is None else argv)
        return
    if args.overhead:
        print(overhead_table(measure_overhead(args, sys.argv[1:] if argv is None else argv)))
        return
    try:
        result = measure(args)
    except (BenchFailure, UserError) as err:
        sys.exit(f"training.bench: {err}")
    except torch.cuda.OutOfMemoryError:
        cap = f" under --memory-cap-gib {args.memory_cap_gib}" if args.memory_cap_gib else ""
        sys.exit(f"training.bench: out of GPU memory{cap} ({args.family}, {args.resolution} px, batch {args.batch}); "
                 "try --gradient-checkpointing, a smaller --batch or --optimizer AdamW8bit")
    print(json.dumps(result))


def child_args(argv: list[str], network: str) -> list[str]:
    """The command line for one network's child: the same options, --networks replaced by --network."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--networks", "--network"):
            skip = True
        elif not arg.startswith(("--networks=", "--network=")):
            out.append(arg)
    return [*out, "--network", network]


def compare_networks(args: argparse.Namespace, argv: list[str]) -> None:
    """Each network in a child process; its JSON line as it comes, then a Markdown table of the comparison."""
    results = []
    for name in args.networks:
        child = subprocess.run([sys.executable, "-m", "training.bench", *child_args(argv, name)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            line = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            sys.exit(f"training.bench: {name}: {line}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(comparison_table(results))


def comparison_table(results: list[dict]) -> str:
    base = results[0]["s_per_step"]
    lines = ["| network | kind | adapter layers | parameters | file MB (fp16) | s/step | vs attn-only LoRA | "
             "peak RSS GiB | peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gpu = "n/a" if r.get("peak_mem_gib_run") is None else f"{r['peak_mem_gib_run']:.2f}"
        lines.append(f"| {r['network']} | {r['kind']} | {r['lora_layers']} | {r['adapter_params']:,} | "
                     f"{r['file_mb']:.1f} | {r['s_per_step']:.3f} | {r['s_per_step'] / base:.2f}x | "
                     f"{r['peak_rss_gib']:.2f} | {gpu} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
