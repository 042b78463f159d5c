"""Milliseconds per training step of a config's network against the same network with other options, side by side.

    python -m benchmarks.net_step --config strong --option whiten=true [--option identity_init=true ...]
    python -m benchmarks.net_step --config strong --precision 32-true --precision bf16-mixed
    python -m benchmarks.net_step --config strong --compile

Each ``--option`` is one variant: the config's ``model.net`` with that init argument changed; each ``--precision`` one
more: the config's network in that precision (bf16-mixed runs emulated on a CPU without native bfloat16);
``--compile`` one more: the config's network compiled (``torch.compile``, as ``model.compile`` does; compiling happens
in the warm-up round, and its seconds are printed). The steps are the config's (batch size, precision as fit would
train in it on this CPU, memory format; SGD with Nesterov momentum) on random inputs, since a step's cost does not
depend on the pixels, without Lightning, data loading or evaluation: what the network itself costs. The variants take
turns, ``--steps`` steps each per round; the figure is the median over ``--rounds`` rounds after a warm-up, and a
ratio is the median of the per-round ratios, so a slow spell on a shared machine scales both sides.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import yaml

from fashion_cnn.checkpoints import build_net
from fashion_cnn.commands import positive
from fashion_cnn.config import CONFIG_DIR, precision_for_this_cpu
from fashion_cnn.study_file import fit_values, with_overrides


def config_values(name: str) -> dict:
    """A shipped config's values, read on top of seed.yaml as fit reads them."""
    return fit_values(CONFIG_DIR / f"{name}.yaml")


def stepper(net_config: dict, batch: int, bf16: bool, channels_last: bool,
            compiled: bool = False) -> Callable[[], None]:
    """A function that runs one training step of the network ``net_config`` builds (compiled in place, as
    ``model.compile`` does it, with ``compiled``)."""
    torch.manual_seed(0)
    net = build_net(net_config)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory)
    if compiled:
        net.compile()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x, y = torch.randn(batch, 1, 28, 28).contiguous(memory_format=memory), torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.net_step``: time the variants in turns and print their milliseconds per step."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.net_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="strong", help="a shipped config with a model.net (default: strong)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a variant: the network with this init argument (repeatable)")
    parser.add_argument("--precision", action="append", default=[], choices=["32-true", "bf16-mixed"],
                        help="a variant: the config's network in this precision (repeatable)")
    parser.add_argument("--compile", action="store_true", help="a variant: the config's network, torch.compile'd")
    parser.add_argument("--steps", type=positive, default=30, help="steps per variant per round")
    parser.add_argument("--rounds", type=positive, default=6, help="rounds after the warm-up round")
    args = parser.parse_args(argv)
    values = config_values(args.config)
    net, trainer = values["model"]["net"], values.get("trainer", {})
    # what fit would train in here: bfloat16 only where this CPU has it (config.precision_for_this_cpu)
    precision = precision_for_this_cpu(trainer.get("precision", "32-true"), "cpu")
    bf16 = precision == "bf16-mixed"
    variants: dict[str, tuple[dict, bool, bool]] = {"config": (net, bf16, False)}
    for option in args.option:
        name, _, value = option.partition("=")
        if not name or not value:
            parser.error(f"--option {option}: give NAME=VALUE, e.g. whiten=true")
        variants[option] = (with_overrides(net, {f"init_args.{name}": yaml.safe_load(value)}), bf16, False)
    for other in args.precision:
        variants[f"precision={other}"] = (net, other == "bf16-mixed", False)
    if args.compile:
        variants["compile"] = (net, bf16, True)
    batch, channels_last = values["data"]["batch_size"], values["model"].get("channels_last", False)
    steps = {name: stepper(config, batch, autocast, channels_last, compiled)
             for name, (config, autocast, compiled) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    warm_up: dict[str, float] = {}
    for round_ in range(args.rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if round_:  # the first round warms up (and compiles)
                times[name].append(1000 * (time.perf_counter() - start) / args.steps)
            else:
                warm_up[name] = time.perf_counter() - start
    print(f"{args.config}: batch {values['data']['batch_size']}, precision {precision}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps")
    for name, ms in times.items():
        ratio = statistics.median(a / b for a, b in zip(ms, times["config"], strict=True))
        print(f"  {name:<24} {statistics.median(ms):7.1f} ms/step   {ratio:.3f}x the config's network"
              + (f"   (warm-up round with compiling: {warm_up[name]:.1f} s)" if name == "compile" else ""))


if __name__ == "__main__":
    main()
