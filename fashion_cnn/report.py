"""Learning curves of a run next to the notebook's: ``python -m fashion_cnn.report [--run lightning_logs/version_N]``.

Reads the run's per-epoch ``test/loss`` and ``test/acc`` from its TensorBoard event files and draws them with the
numbers the original notebook printed, into ``learning_curves.png`` in the run's directory (or ``--out``; the
README's is ``docs/learning_curves.png``), and writes the numbers it drew beside it (``learning_curves.json``), so a
figure quoted from it can be traced to a file and a command.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from fashion_cnn.checkpoints import net_name
from fashion_cnn.commands import CommandError, cannot_write, parser, run
from fashion_cnn.figures import learning_curves_figure, save
from fashion_cnn.runs import EVENTS, newest_run, other_loggers, run_config, run_scalars

PROG = "python -m fashion_cnn.report"

# The original notebook's output, as printed by it: (epoch, test loss, test accuracy %). Its log is cut off at
# epoch 19, so the table ends at epoch 18. It normalised with MNIST's mean/std (0.1307/0.3081).
NOTEBOOK = (
    (1, 0.5917, 77.55), (2, 0.5129, 81.52), (3, 0.4656, 82.85), (4, 0.4242, 84.46), (5, 0.4015, 85.53),
    (6, 0.3918, 86.09), (7, 0.3887, 86.18), (8, 0.3786, 86.28), (9, 0.3564, 87.09), (10, 0.3504, 87.36),
    (11, 0.3531, 87.45), (12, 0.3448, 87.60), (13, 0.3369, 88.01), (14, 0.3364, 87.47), (15, 0.3248, 88.40),
    (16, 0.3200, 88.16), (17, 0.3189, 88.36), (18, 0.3190, 88.48),
)
NOTEBOOK_LABEL = "notebook's printed log (epochs 1-18)"


def logged_test_curves(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """(epochs, test losses, test accuracies in 0..1) logged by a run, one point per evaluated epoch."""
    if run_dir.is_dir() and not any(run_dir.glob(EVENTS)) and (others := other_loggers(run_config(run_dir))):
        raise CommandError(f"{run_dir}: no TensorBoard event files: it was logged with {', '.join(others)}, and report "
                           f"reads TensorBoard events; train with fit's default logger, TensorBoardLogger")
    if not run_dir.is_dir() or not any(run_dir.glob(EVENTS)):
        raise CommandError(f"{run_dir}: no TensorBoard event files ({EVENTS}); give --run a lightning_logs/version_N "
                           f"directory of a training run")
    logged = run_scalars(run_dir)
    tags = set(logged)
    if not {"test/acc", "test/loss"} <= tags and "val/acc" in tags:
        raise CommandError(f"{run_dir}: the run never read the test set (data.test: false, a model-selection run), "
                           f"and report draws test curves beside the notebook's; compare such runs with "
                           f"`python -m fashion_cnn.compare`, or read their val/* curves in TensorBoard")
    if not {"test/acc", "test/loss"} <= tags:
        raise CommandError(f"{run_dir}: the run logged no test/acc and test/loss; train it with "
                           f"`python -m fashion_cnn.fit` (it evaluates on the test set every epoch)")
    # Steps are global steps; the `epoch` scalar logged at the same step says which epoch (0-based) it was.
    epoch_at = {e.step: int(e.value) + 1 for e in logged.get("epoch", [])}
    acc, loss = logged["test/acc"], logged["test/loss"]
    epochs = [epoch_at.get(e.step, i + 1) for i, e in enumerate(acc)]
    return epochs, [e.value for e in loss], [e.value for e in acc]


def network(run_dir: Path) -> str:
    """The run's network class, from its config.yaml (SeedCNN, the notebook's, when it has none)."""
    net = (run_config(run_dir).get("model") or {}).get("net")
    return net_name(net if isinstance(net, dict) else None).rsplit(".", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    """``python -m fashion_cnn.report``: its exit status (:mod:`fashion_cnn.commands` lists them)."""
    p = parser(PROG, "Draw a run's test loss/accuracy per epoch next to the notebook's logged numbers.")
    p.add_argument("--run", default=None, help="a run directory (default: the newest version_N in --logs_dir)")
    p.add_argument("--logs_dir", default="lightning_logs", help="where to look for the newest run")
    p.add_argument("--out", default=None,
                   help="the PNG to write, a JSON file of the curves beside it (default: learning_curves.png in the "
                        "run's directory; the README's picture is docs/learning_curves.png)")
    args = p.parse_args(argv)
    if args.out is not None and Path(args.out).suffix.lower() != ".png":
        p.error(f"--out {args.out}: give a .png file name (the curves' JSON file is written beside it)")

    def body() -> int:
        run_dir = Path(args.run) if args.run else newest_run(args.logs_dir, holding=EVENTS)
        out_path = Path(args.out) if args.out else run_dir / "learning_curves.png"
        epochs, loss, acc = logged_test_curves(run_dir)
        top = max(range(len(acc)), key=acc.__getitem__)
        fig = learning_curves_figure(
            epochs, loss, acc, f"this run ({run_dir.name})", NOTEBOOK, NOTEBOOK_LABEL,
            f"FashionMNIST {network(run_dir)}: test set after every epoch ({run_dir.name}, {len(epochs)} epochs)")
        curves = {"run": str(run_dir), "command": " ".join([PROG, *(argv or sys.argv[1:])]),
                  "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "epochs": epochs, "test_loss": loss, "test_acc": acc}
        try:
            out = save(fig, out_path)
            out.with_suffix(".json").write_text(json.dumps(curves, indent=2) + "\n")
        except OSError as err:
            raise cannot_write(out_path, err, "--out") from None
        print(f"{run_dir}: {len(epochs)} epochs, last test accuracy {100 * acc[-1]:.2f}% (loss {loss[-1]:.4f}; "
              f"highest {100 * acc[top]:.2f}% at epoch {epochs[top]}, an optimistic pick by test accuracy); notebook "
              f"at epoch {NOTEBOOK[-1][0]}: {NOTEBOOK[-1][2]:.2f}% (loss {NOTEBOOK[-1][1]:.4f})")
        print(f"wrote {out} and {out.with_suffix('.json').name}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
