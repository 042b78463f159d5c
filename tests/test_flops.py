"""benchmarks/flops.py: its counts against hand counts of the layers, backward against forward, the training total
against per-step times steps, and the evaluation passes each config makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from benchmarks import flops

REPO = Path(__file__).resolve().parent.parent

# SeedCNN, per image, in multiply-adds (FlopCounterMode counts 2 FLOPs each, and leaves out biases, pooling, ReLU
# and dropout):
CONV1 = (10 * 24 * 24) * (1 * 5 * 5)  # 1 -> 10 channels, 5x5 on 28x28 -> 24x24: 5,760 outputs of 25 = 144,000
CONV2 = (20 * 8 * 8) * (10 * 5 * 5)  # pooled to 12x12, 10 -> 20 channels, 5x5 -> 8x8: 1,280 outputs of 250 = 320,000
FC1 = 320 * 50  # pooled to 4x4, flattened: 20 * 4 * 4 = 320 -> 50: 16,000
FC2 = 50 * 10  # 500
SEED_FORWARD = 2 * (CONV1 + CONV2 + FC1 + FC2)  # 961,000
# Backward: every layer's weight gradient costs its forward, and every layer's input gradient too, but the first
# convolution's: the images need no gradient, so torch does not compute it.
SEED_BACKWARD = 2 * (CONV1 + CONV2 + FC1 + FC2) + 2 * (CONV2 + FC1 + FC2)  # 1,634,000


def strong_forward(c1: int, c2: int, c3: int) -> tuple[int, int]:
    """StrongCNN's forward FLOPs per image at pool 7, and its first convolution's: 3x3 convolutions (padding 1)
    at 28x28, 14x14 and 7x7, then a linear layer on 7 * 7 * c3 features."""
    first = 2 * (c1 * 28 * 28) * (1 * 9)
    stages = (28 * 28 * (c1 * c1) + 14 * 14 * (c1 * c2 + c2 * c2) + 7 * 7 * (c2 * c3 + c3 * c3)) * 9
    return first + 2 * (stages + 7 * 7 * c3 * 10), first


def test_the_seed_networks_count_is_the_hand_count_of_its_layers():
    seed = flops.training_flops("seed")
    assert seed["forward_flops_per_image"] == SEED_FORWARD == 961_000
    assert seed["backward_flops_per_image"] == SEED_BACKWARD == 1_634_000
    assert seed["flops_per_image"] == 2_595_000 and seed["mflop_per_image"] == pytest.approx(2.595)
    assert seed["network"] == "SeedCNN" and seed["params"] == 21_840  # the README's 21.8 K
    assert seed["eval_forward_flops_per_image"] == SEED_FORWARD  # evaluation: forward only, no mirror in seed


def test_backward_counts_twice_forward_less_the_first_convolutions_input_gradient():
    seed = flops.training_flops("seed")
    assert seed["backward_flops_per_image"] == 2 * seed["forward_flops_per_image"] - 2 * CONV1
    strong = flops.training_flops("strong")
    forward, first = strong_forward(16, 64, 128)
    assert strong["forward_flops_per_image"] == forward == 43_703_296
    assert strong["backward_flops_per_image"] == 2 * forward - first
    assert 1.99 < strong["backward_flops_per_image"] / forward < 2  # the first convolution is 0.5% of strong's
    # the cross-check: about 131 MFLOP an image forward and backward, about 190 TFLOP for 24 epochs
    assert strong["flops_per_image"] == 130_884_096 and round(strong["training_tflop"], 1) == 188.5


def test_the_training_total_is_the_per_step_count_times_the_steps():
    # 10 whole batches of 64 an epoch: exactly 40 epochs of 10 steps
    even = flops.training_flops("seed", train_images=640)
    assert (even["steps_per_epoch"], even["steps"], even["last_batch"]) == (10, 400, 64)
    assert even["step_flops"] == 64 * 2_595_000 and even["training_flops"] == 400 * even["step_flops"]
    # one image more: an 11th step of 1 image an epoch (no drop_last), counted for what it holds
    odd = flops.training_flops("seed", train_images=641)
    assert (odd["steps_per_epoch"], odd["steps"], odd["last_batch"]) == (11, 440, 1)
    assert odd["training_flops"] == 40 * (10 * odd["step_flops"] + 2_595_000)
    # the shipped seed: 938 steps an epoch, the last of 60,000 - 937 * 64 = 32 images
    seed = flops.training_flops("seed")
    assert (seed["steps_per_epoch"], seed["last_batch"], seed["steps"]) == (938, 32, 40 * 938)
    assert seed["training_flops"] == 40 * (937 * seed["step_flops"] + 32 * 2_595_000) == 40 * 60_000 * 2_595_000


@pytest.mark.parametrize("config", ["fast", "tiny"])
def test_the_count_scales_with_the_batch_and_is_the_same_on_the_meta_device(config):
    values = flops.config_values(config)[1]
    cpu, meta = flops.build_model(values, "cpu"), flops.build_model(values, "meta")
    assert flops.step_flops(cpu, 2, "cpu") == flops.step_flops(meta, 2, "meta")
    (f2, s2), (f5, s5) = flops.step_flops(cpu, 2, "cpu"), flops.step_flops(cpu, 5, "cpu")
    assert (5 * f2, 5 * s2) == (2 * f5, 2 * s5) and s2 > f2 > 0


def test_evaluation_counts_each_pass_with_its_views():
    strong = flops.training_flops("strong")
    forward = strong["forward_flops_per_image"]
    ev = strong["evaluation"]
    # after every one of the 24 epochs the 10,000 test images, each with its mirror image
    assert ev["per_epoch"] == {"passes": 24, "images": 10_000, "views": 2, "flops": 24 * 10_000 * 2 * forward}
    # the final test: the image and 4 shifted ones (final_shift 1), and the mirror images of those 5
    assert ev["final_test"] == {"passes": 1, "images": 10_000, "views": 10, "flops": 10_000 * 10 * forward}
    # the pictures re-predict the test set after epochs 10, 20 and the last, 24 (seed.yaml: every 10 epochs)
    assert ev["pictures"] == {"passes": 3, "images": 10_000, "views": 2, "flops": 3 * 10_000 * 2 * forward}
    assert ev["sanity"]["flops"] == 0  # seed.yaml: num_sanity_val_steps 0
    assert strong["evaluation_flops"] == (24 * 2 + 10 + 3 * 2) * 10_000 * forward
    seed = flops.training_flops("seed")  # no mirror, no shifts; pictures after epochs 10, 20, 30, 40
    assert seed["evaluation_flops"] == (40 + 1 + 4) * 10_000 * SEED_FORWARD


def test_a_validation_split_is_evaluated_each_epoch_and_leaves_fewer_images_to_train(tmp_path):
    path = tmp_path / "val.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"max_epochs": 3, "num_sanity_val_steps": 1},
                                    "data": {"val_size": 5000, "batch_size": 100}}))
    counted = flops.training_flops(path)
    assert counted["config"] == "val" and counted["steps"] == 3 * 550
    assert counted["training_flops"] == 3 * 55_000 * 2_595_000
    ev = counted["evaluation"]
    assert ev["per_epoch"]["images"] == 15_000 and ev["final_test"]["images"] == 10_000
    assert ev["sanity"]["images"] == 2 * 250  # one batch of 250 from each of val and test
    assert ev["pictures"]["passes"] == 1  # the last epoch only


def test_a_study_file_counts_its_base_with_its_overrides():
    name, values = flops.config_values(REPO / "studies" / "strong12_repeats.yaml")
    assert name == "strong12" and values["trainer"]["max_epochs"] == 12 and values["model"]["final_shift"] == 0
    strong12, strong = flops.training_flops(REPO / "studies" / "strong12_repeats.yaml"), flops.training_flops("strong")
    assert strong12["training_flops"] * 2 == strong["training_flops"]


def test_settings_it_does_not_model_are_refused(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"max_steps": 100}}))
    with pytest.raises(ValueError, match="max_steps"):
        flops.training_flops(path)


def test_main_prints_the_table_and_writes_what_a_citation_needs(tmp_path, capsys):
    out = tmp_path / "flops.json"
    assert flops.main(["seed", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| config | network | params | MFLOP/image (fwd+bwd) | steps | training TFLOP |")
    assert re.fullmatch(r"\| `seed` \| SeedCNN \| 21,840 \| 2\.60 \| 37,520 \(40 x 938\) \| 6\.23 \| 0\.43 \| "
                        r"3\.3% \|", lines[2])
    record = json.loads(out.read_text())
    assert record["configs"]["seed"]["training_flops"] == 40 * 60_000 * 2_595_000 and record["reference"] == "strong"
    assert {"git_commit", "torch", "cpu", "cpu_flags"} <= set(record) and record["table"] == "\n".join(lines)
