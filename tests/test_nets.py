"""The seed network is the notebook's CNN, minus its quirks; the strong network's options do what they say."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fashion_cnn.nets import SeedCNN, StrongCNN, ViewAverage, views


def notebook_forward(net: SeedCNN, x: torch.Tensor) -> torch.Tensor:
    """The notebook's forward pass, written as it was (eval mode: dropout off), with the same weights."""
    conv1, conv2 = net.features[0], net.features[3]
    fc1, fc2 = net.classifier[0], net.classifier[3]
    x = F.relu(F.max_pool2d(conv1(x), 2))
    x = F.relu(F.max_pool2d(conv2(x), 2))
    x = x.view(-1, 320)
    x = F.relu(fc1(x))
    return F.log_softmax(fc2(x), dim=1)


def test_shapes_and_parameter_count():
    net = SeedCNN()
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # conv1 10*(25+1) + conv2 20*(250+1) + fc1 50*(320+1) + fc2 10*(50+1)
    assert sum(p.numel() for p in net.parameters()) == 260 + 5020 + 16050 + 510


def test_same_function_as_the_notebook_returning_logits():
    torch.manual_seed(0)
    net = SeedCNN().eval()
    x = torch.randn(8, 1, 28, 28)
    logits = net(x)
    torch.testing.assert_close(F.log_softmax(logits, dim=1), notebook_forward(net, x))
    # log_softmax is idempotent, so the notebook's log_softmax before cross_entropy changed nothing
    labels = torch.arange(8) % 10
    torch.testing.assert_close(F.cross_entropy(logits, labels), F.cross_entropy(notebook_forward(net, x), labels))


def test_dropout_is_plain_elementwise_dropout_after_fc1():
    net = SeedCNN()
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and type(dropouts[0]) is nn.Dropout and dropouts[0].p == 0.5
    # what the notebook's Dropout2d did to its flat [B, 50] tensor: zero single elements, not whole rows
    torch.manual_seed(0)
    out = dropouts[0](torch.ones(64, 50))
    zeros = (out == 0).float()
    assert 0.4 < zeros.mean() < 0.6 and (zeros.sum(dim=1) < 50).all()


def test_strong_net_shapes_and_classifier_inputs():
    for pool, features in ((1, 128), (3, 128 * 9), (7, 128 * 49)):
        net = StrongCNN(widths=(16, 64, 128), pool=pool).eval()
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert net.classifier[-1].in_features == features



def test_strong_net_pool_7_hands_the_classifier_every_position():
    torch.manual_seed(0)
    net = StrongCNN(widths=(16, 64, 128), pool=7).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        stages = net.features[:-2](x)  # the last stage's map, before pooling and flattening
        assert stages.shape == (2, 128, 7, 7)
        torch.testing.assert_close(net.features(x), stages.flatten(1))  # 7x7 pooling of a 7x7 map: every cell kept


def test_strong_net_pool_must_fit_the_7x7_map():
    for pool in (0, 8):
        with pytest.raises(ValueError, match="does not conform"):
            StrongCNN(pool=pool)


def test_views_are_the_image_shifted_each_way_with_a_black_border_and_their_mirror_images():
    x = torch.randn(3, 1, 28, 28)
    plain, down, up, right, left, *mirrored = views(x, mirror=True, shift=2, fill=-0.5)
    assert torch.equal(plain, x) and len(mirrored) == 5
    assert torch.equal(down[..., 2:, :], x[..., :-2, :]) and (down[..., :2, :] == -0.5).all()
    assert torch.equal(up[..., :-2, :], x[..., 2:, :]) and (up[..., -2:, :] == -0.5).all()
    assert torch.equal(right[..., 2:], x[..., :-2]) and (right[..., :2] == -0.5).all()
    assert torch.equal(left[..., :-2], x[..., 2:]) and (left[..., -2:] == -0.5).all()
    assert all(torch.equal(m, v.flip(-1)) for m, v in zip(mirrored, (plain, down, up, right, left), strict=True))
    assert [v.data_ptr() for v in views(x, mirror=False, shift=0, fill=0.0)] == [x.data_ptr()]


def test_view_average_is_the_mean_of_the_networks_logits_over_the_views():
    torch.manual_seed(0)
    net = StrongCNN(widths=(4, 8, 8)).eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        mirror = ViewAverage(net)(x)
        both = ViewAverage(net, mirror=True, shift=1, fill=-1.0)(x)
        torch.testing.assert_close(mirror, (net(x) + net(x.flip(-1))) / 2)
        torch.testing.assert_close(both, torch.stack([net(v) for v in views(x, True, 1, -1.0)]).mean(0))
    assert not torch.allclose(both, mirror)


def test_identity_init_starts_each_convolution_as_the_identity_on_its_inputs():
    torch.manual_seed(0)
    net = StrongCNN(widths=(4, 8, 8), identity_init=True).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    for conv in convs:
        w = conv.weight
        n = w.shape[1]
        torch.testing.assert_close(w[:n], torch.nn.init.dirac_(torch.empty_like(w[:n])))
        if w.shape[0] > n:  # the other filters keep their random init
            assert (w[n:] != 0).float().mean() > 0.9
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(convs[1](x)[:, :4], x)  # 4 -> 4 channels: the input passes through
    torch.manual_seed(0)
    plain = StrongCNN(widths=(4, 8, 8))
    assert not torch.equal(plain.features[0][0].weight, convs[0].weight)


def test_channel_dropout_drops_whole_channels_of_the_final_map_in_training_only():
    torch.manual_seed(0)
    net = StrongCNN(widths=(4, 8, 8), pool=7, dropout=0.0, channel_dropout=0.5)
    plain = StrongCNN(widths=(4, 8, 8), pool=7, dropout=0.0)
    assert list(net.state_dict()) == list(plain.state_dict())  # checkpoints of either load into the other
    features = net.features.train()(torch.randn(16, 1, 28, 28)).view(16, 8, 49)
    dropped = (features == 0).all(-1)  # a dropped channel is zero at all 49 positions
    assert 0.3 < dropped.float().mean() < 0.7
    net.eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(net(x), net(x))  # no dropout in evaluation


def test_whitening_layer_decorrelates_patches_and_stays_frozen(small_dm):
    import lightning as L

    from fashion_cnn.module import FashionClassifier

    torch.manual_seed(0)
    net = StrongCNN(widths=(4, 8, 8), whiten=True)
    images = small_dm.normalize(small_dm.train_set.images)
    net.init_from_data(images)
    conv = net.features[0][0]
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, conv.weight)[:, :9]  # the 9 components, inside the image
    flat = out.permute(0, 2, 3, 1).reshape(-1, 9)
    covariance = flat.T @ flat / len(flat)
    torch.testing.assert_close(covariance, torch.diag(covariance.diagonal()), atol=1e-3, rtol=0)  # decorrelated
    assert ((covariance.diagonal() > 0.5) & (covariance.diagonal() <= 1.0)).all()  # unit variance, less eps' share
    torch.testing.assert_close(conv.weight[9:], -conv.weight[:9])

    model = FashionClassifier(net=StrongCNN(widths=(4, 8, 8), whiten=True), lr=0.1, momentum=0.9)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=small_dm)  # fit sets the filters from the training images, then keeps them
    torch.testing.assert_close(model.net.features[0][0].weight, conv.weight)
    assert not torch.equal(model.net.features[0][0].bias, torch.zeros(18))  # the bias learns


def test_whitening_is_set_once_and_only_for_networks_that_ask_for_it(small_dm):
    import lightning as L
    from torch.utils.data import DataLoader

    from fashion_cnn.errors import FashionCNNError
    from fashion_cnn.module import FashionClassifier

    def fit(model, **data) -> None:
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(model, **data)

    torch.manual_seed(0)
    model = FashionClassifier(net=StrongCNN(widths=(4, 8, 8), whiten=True), lr=0.1, momentum=0.9)
    fit(model, datamodule=small_dm)
    conv = model.net.features[0][0]
    weight, bias = conv.weight.clone(), conv.bias.clone()
    assert model.net.whitened and "net.whitened" in model.state_dict()  # checkpoints keep it set
    assert not torch.equal(bias, torch.zeros(18))  # learned
    model.setup("fit")  # what a second fit of the same model does first: the filters stay, the bias is not reset
    assert torch.equal(conv.weight, weight) and torch.equal(conv.bias, bias)

    images = small_dm.normalize(small_dm.train_set.images)
    loader = DataLoader(list(zip(images, small_dm.train_set.labels, strict=True)), batch_size=64)
    fit(FashionClassifier(net=StrongCNN(widths=(4, 8, 8))), train_dataloaders=loader)  # no datamodule needed
    with pytest.raises(FashionCNNError, match=r"^a network with whiten needs the training images"):
        fit(FashionClassifier(net=StrongCNN(widths=(4, 8, 8), whiten=True)), train_dataloaders=loader)
