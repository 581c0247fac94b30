"""Grad-CAM element-wise, KPCA-CAM, Deep Feature Factorization and eigen smoothing on given
arrays, with the expected maps worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.methods import (DFF, KPCACAM, AblationCAM, EigenCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM,
                             LayerCAM, SiteData, XGradCAM)


def one_sample(*channels: list[list[float]]) -> np.ndarray:
    """``(1, h, w, C)`` from C spatial ``(h, w)`` grids."""
    return np.stack([np.asarray(ch, dtype=np.float32) for ch in channels], axis=-1)[None]


def test_gradcamelementwise_exact() -> None:
    A = one_sample([[1, 2], [3, 0]], [[2, 1], [1, 4]])
    G = one_sample([[1, -1], [-1, 5]], [[-1, 1], [0.5, -0.5]])
    # products, channel 0: [[1, -2], [-3, 0]]; channel 1: [[-2, 1], [0.5, -2]]
    # relu then sum: [[1 + 0, 0 + 1], [0 + 0.5, 0 + 0]]
    out = GradCAMElementWise()(SiteData(A, G))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[1.0, 1.0], [0.5, 0.0]]])
    # HiResCAM sums the signed products: [[-1, -1], [-2.5, -2]] -> all zero
    np.testing.assert_array_equal(HiResCAM()(SiteData(A, G)), np.zeros((1, 2, 2)))


def test_gradcamelementwise_batch_is_per_sample() -> None:
    rng = np.random.default_rng(0)
    A, G = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((2, 3, 3, 4))
    both = GradCAMElementWise()(SiteData(A, G))
    for n in range(2):
        np.testing.assert_array_equal(both[n], GradCAMElementWise()(SiteData(A[n : n + 1], G[n : n + 1]))[0])


def test_gradcamelementwise_needs_gradients() -> None:
    with pytest.raises(ValueError, match="needs gradients"):
        GradCAMElementWise()(SiteData(np.ones((1, 2, 2, 1))))


def test_kpcacam_exact_two_positions() -> None:
    # one channel, positions [3, 1]: centred [1, -1]; gamma = 1/C = 1, coef0 = 1
    # K = tanh(<x, y> + 1) = [[tanh 2, tanh 0], [tanh 0, tanh 2]]; centred: (tanh 2 / 2) [[1, -1], [-1, 1]]
    # top eigenvalue tanh 2, v = [1, -1] / sqrt 2: coordinates sqrt(tanh 2 / 2) [1, -1], the
    # position of the larger activation positive
    out = KPCACAM()(SiteData(np.array([[[[3.0], [1.0]]]])))
    np.testing.assert_allclose(out, [[[np.sqrt(np.tanh(2.0) / 2.0), 0.0]]], rtol=1e-6)
    # rbf: K = [[1, e^-4], [e^-4, 1]] (|x - y|^2 = 4): eigenvalue 1 - e^-4
    out = KPCACAM(kernel="rbf")(SiteData(np.array([[[[1.0], [3.0]]]])))
    np.testing.assert_allclose(out, [[[0.0, np.sqrt((1 - np.exp(-4.0)) / 2.0)]]], rtol=1e-6)


def test_kpcacam_linear_kernel_is_eigencam() -> None:
    A = np.random.default_rng(1).random((2, 4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(KPCACAM(kernel="linear")(SiteData(A)), EigenCAM()(SiteData(A)), atol=1e-5)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine"])
def test_kpcacam_is_scikit_learn_kernel_pca_up_to_sign(kernel: str) -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    A = np.random.default_rng(2).random((1, 5, 4, 7))
    flat = A[0].reshape(20, 7)
    centred = flat - flat.mean(axis=0)
    ref = decomposition.KernelPCA(n_components=1, kernel=kernel, gamma=0.3 if kernel != "cosine" else None,
                                  eigen_solver="dense").fit_transform(centred)[:, 0]
    proj = KPCACAM(kernel=kernel, gamma=0.3)(SiteData(A))[0].ravel()
    pos, neg = np.maximum(ref, 0), np.maximum(-ref, 0)
    best = min(np.abs(proj - pos).max(), np.abs(proj - neg).max())
    assert best < 1e-6


def test_kpcacam_constant_and_bad_settings() -> None:
    np.testing.assert_array_equal(KPCACAM()(SiteData(np.full((1, 3, 3, 2), 4.0))), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="kernel must be one of"):
        KPCACAM(kernel="laplace")
    with pytest.raises(ValueError, match="gamma must be a positive number"):
        KPCACAM(gamma=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        KPCACAM()(SiteData(np.full((1, 2, 2, 1), np.nan)))


def test_eigen_smooth_exact() -> None:
    A = one_sample([[3, 1], [1, 1]], [[0, 9], [9, 9]])
    G = one_sample([[1, 1], [1, 1]], [[0, 0], [0, 0]])
    # w = (1, 0): the weighted activations are channel 0 alone, [[3, 1], [1, 1]]; centred
    # [1.5, -.5, -.5, -.5], its own principal direction (one channel)
    np.testing.assert_array_equal(GradCAM()(SiteData(A, G)), [[[3.0, 1.0], [1.0, 1.0]]])
    np.testing.assert_allclose(GradCAM(eigen_smooth=True)(SiteData(A, G)), [[[1.5, 0.0], [0.0, 0.0]]], atol=1e-6)
    # element-wise: relu(G A) is channel 0 as well
    np.testing.assert_allclose(GradCAMElementWise(eigen_smooth=True)(SiteData(A, G)), [[[1.5, 0.0], [0.0, 0.0]]],
                               atol=1e-6)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, XGradCAM])
def test_eigen_smooth_is_eigencam_of_the_weighted_activations(cls: type) -> None:
    rng = np.random.default_rng(3)
    A, G = rng.random((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    w = cls().weights(A.astype(np.float32), G.astype(np.float32), SiteData(A, G))
    expected = EigenCAM()(SiteData(A * w[:, None, None, :]))
    np.testing.assert_allclose(cls(eigen_smooth=True)(SiteData(A, G)), expected, atol=1e-5)
    assert not np.allclose(cls()(SiteData(A, G)), expected, atol=1e-3)


def test_eigen_smooth_reaches_ablationcam_and_is_checked() -> None:
    assert AblationCAM(eigen_smooth=True).eigen_smooth
    with pytest.raises(TypeError, match="eigen_smooth must be True or False"):
        GradCAM(eigen_smooth="yes")


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A (1, 4, 4, 6), S (16, 2), F (2, 6))`` with ``A = S F`` exactly: concept 0 on the left
    half, concept 1 on the right, with varying strength; disjoint channel vectors."""
    rng = np.random.default_rng(seed)
    s = np.zeros((16, 2))
    left = np.tile([1, 1, 0, 0], 4).astype(bool)
    s[left, 0] = rng.uniform(0.5, 2.0, left.sum())
    s[~left, 1] = rng.uniform(0.5, 2.0, (~left).sum())
    f = np.array([[1.0, 2.0, 0.5, 0, 0, 0], [0, 0, 0, 3.0, 1.0, 1.0]])
    return (s @ f).reshape(1, 4, 4, 6), s, f


def test_dff_recovers_a_planted_factorization() -> None:
    A, S, F = planted()
    raw, info = DFF(k=2).map_and_details(SiteData(A))
    assert info["reconstruction_error"][0] < 1e-4
    assert info["head"].startswith("no GlobalAveragePooling + Dense head")
    maps = info["concept_maps"][0].reshape(2, 16)
    # ordered by presence: the planted concept with the larger sum of |S_j| |F_j| comes first
    presence = S.sum(axis=0) * np.linalg.norm(F, axis=1)
    for j, planted_j in enumerate(np.argsort(-presence)):
        # the map is the planted one times |F_j| (concepts scaled to unit length)
        np.testing.assert_allclose(maps[j], S[:, planted_j] * np.linalg.norm(F[planted_j]), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(info["concepts"][0, j], F[planted_j] / np.linalg.norm(F[planted_j]), atol=1e-3)
    np.testing.assert_array_equal(raw[0], info["concept_maps"][0, 0])  # no head: the largest concept


def test_dff_shows_the_concept_of_the_explained_class() -> None:
    A, S, F = planted()
    kernel = np.zeros((6, 3))
    kernel[4, 1] = 1.0      # class 1 reads channel 4: concept 1 only
    kernel[0, 2] = 2.0      # class 2 reads channel 0: concept 0 only
    kernel[:, 0] = -1.0     # class 0 is against everything
    for cls, planted_j in ((1, 1), (2, 0)):
        raw, info = DFF(k=2).map_and_details(SiteData(A, head_weights=kernel[:, [cls]].T, head_kernel=kernel))
        j = int(info["chosen"][0])
        np.testing.assert_allclose(raw[0].ravel(), S[:, planted_j] * np.linalg.norm(F[planted_j]), rtol=1e-3, atol=1e-3)
        # share = mean_z S[z, j] * (F_j . W[:, c]): by hand for the planted concept
        want = S[:, planted_j].mean() * (F[planted_j] @ kernel[:, cls])
        np.testing.assert_allclose(info["class_shares"][0, j, cls], want, rtol=1e-3)
        assert info["top_classes"][0, j, 0] == cls and info["top_classes"][0, j, -1] == 0
        assert "head" not in info


def test_dff_is_deterministic_per_image_and_checks_its_input() -> None:
    rng = np.random.default_rng(4)
    A = rng.random((3, 5, 5, 8))
    both = DFF(k=3).map_and_details(SiteData(A))[1]["concept_maps"]
    np.testing.assert_array_equal(both[1:2], DFF(k=3).map_and_details(SiteData(A[1:2]))[1]["concept_maps"])
    np.testing.assert_array_equal(both, DFF(k=3).map_and_details(SiteData(A))[1]["concept_maps"])
    with pytest.raises(ValueError, match="k=9 concepts cannot be found"):
        DFF(k=9)(SiteData(rng.random((1, 2, 2, 8))))
    with pytest.raises(ValueError, match="NaN or inf"):
        DFF()(SiteData(np.full((1, 3, 3, 6), np.inf)))
    # negative activations are shifted per channel, not refused
    assert np.isfinite(DFF(k=2)(SiteData(A[:1] - 0.5))).all()


def _keras_net():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    out = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(a))
    return keras.Model(inp, out)


@pytest.mark.parametrize("method", ["gradcamelementwise", "kpcacam", "dff"])
def test_keras_batch_is_its_images_one_by_one(method: str) -> None:
    import camlens

    model = _keras_net()
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype(np.float32)
    both = camlens.explain(model, x, method, target=[1, 2], layer="conv")
    assert both.raw_maps[0].shape == (2, 8, 8) and np.isfinite(both.maps[0]).all()
    for n, cls in enumerate([1, 2]):
        one = camlens.explain(model, x[n : n + 1], method, target=cls, layer="conv")
        np.testing.assert_allclose(one.raw_maps[0][0], both.raw_maps[0][n], rtol=1e-4, atol=1e-6)


def test_keras_dff_details_rank_the_classes_by_the_head() -> None:
    import camlens

    model = _keras_net()
    x = np.random.default_rng(6).standard_normal((2, 8, 8, 3)).astype(np.float32)
    exp = camlens.explain(model, x, DFF(k=3), target=[1, 3], layer="conv")
    info = exp.details[0]
    kernel = model.get_layer("head").get_weights()[0]
    assert info["concept_maps"].shape == (2, 3, 8, 8) and info["class_shares"].shape == (2, 3, 4)
    for n, cls in enumerate([1, 3]):
        presence = info["concept_maps"][n].reshape(3, -1).mean(axis=1)
        np.testing.assert_allclose(info["class_shares"][n], presence[:, None] * (info["concepts"][n] @ kernel),
                                   rtol=1e-4, atol=1e-6)
        assert info["chosen"][n] == np.argmax(info["class_shares"][n, :, cls])
        np.testing.assert_array_equal(exp.raw_maps[0][n], info["concept_maps"][n, info["chosen"][n]])
    # a target that is no class: the largest concept, and the reason in details
    lone = camlens.explain(model, x, DFF(k=2), target=lambda y: y[:, 0] - y[:, 1], layer="conv")
    assert "no class ranking" in lone.details[0]["head"] and (lone.details[0]["chosen"] == 0).all()


def test_eigen_smooth_exact_on_hirescam_and_layercam() -> None:
    A = one_sample([[3, 1], [1, 1]], [[0, 9], [9, 9]])
    G = one_sample([[1, 1], [1, 1]], [[-1, -1], [-1, -1]])
    # HiResCAM: G A = ([[3, 1], [1, 1]], -[[0, 9], [9, 9]]); their sum [[3, -8], [-8, -8]] is
    # what the projection is oriented by. The products' centred rows are (1.5, -6.75) and
    # (-.5, 2.25) x 3: rank one along (1.5, -6.75) -> projection +-|row| = sqrt(1.5^2 + 6.75^2)
    # on the top-left, negative (zeroed by relu) elsewhere, oriented to the sum's top-left peak
    top = float(np.hypot(1.5, 6.75))
    np.testing.assert_allclose(HiResCAM(eigen_smooth=True)(SiteData(A, G)), [[[top, 0.0], [0.0, 0.0]]],
                               atol=1e-6)
    np.testing.assert_array_equal(HiResCAM()(SiteData(A, G)), [[[3.0, 0.0], [0.0, 0.0]]])
    # LayerCAM: relu(G) drops channel 1, leaving [[3, 1], [1, 1]], as Grad-CAM's above
    np.testing.assert_allclose(LayerCAM(eigen_smooth=True)(SiteData(A, G)), [[[1.5, 0.0], [0.0, 0.0]]],
                               atol=1e-6)


@pytest.mark.parametrize("cls", [HiResCAM, LayerCAM])
def test_eigen_smooth_of_position_weighted_cams(cls: type) -> None:
    rng = np.random.default_rng(3)
    A, G = rng.random((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    products = A * (G if cls is HiResCAM else np.maximum(G, 0))
    np.testing.assert_allclose(cls(eigen_smooth=True)(SiteData(A, G)), EigenCAM()(SiteData(products)), atol=1e-5)
    with pytest.raises(TypeError, match=f"{cls.name}: eigen_smooth must be True or False"):
        cls(eigen_smooth=1)


def test_eigen_smooth_of_scorecam_and_its_variants() -> None:
    from camlens.methods import FastScoreCAM, ISCAM, SSCAM, ScoreCAM
    from camlens.methods.scorecam import normalised_masks

    rng = np.random.default_rng(5)
    A = rng.random((1, 3, 3, 4))
    x = rng.random((1, 3, 3, 1))
    data = SiteData(A, images=x, score=lambda n, batch: batch.reshape(len(batch), -1) @ np.arange(9.0))
    # the softmax weights of the scores, then Eigen-CAM of the weighted activations
    s = np.array([(x[0, :, :, 0] * m).ravel() @ np.arange(9.0)
                  for m in normalised_masks(A[0].astype(np.float32), np.arange(4), (3, 3))])
    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    expected = EigenCAM()(SiteData(A * w))
    np.testing.assert_allclose(ScoreCAM(eigen_smooth=True)(data), expected, atol=1e-5)
    np.testing.assert_allclose(FastScoreCAM(k=4, eigen_smooth=True)(data), expected, atol=1e-5)
    np.testing.assert_allclose(ISCAM(n_steps=1, eigen_smooth=True)(data), expected, atol=1e-5)
    np.testing.assert_allclose(SSCAM(n_samples=1, sigma=0.0, eigen_smooth=True)(data), expected, atol=1e-5)
    assert not np.allclose(ScoreCAM()(data), expected, atol=1e-3)


def test_eigen_smooth_of_smooth_gradcampp_and_finercam() -> None:
    from camlens.methods import FinerCAM, SmoothGradCAMPlusPlus

    rng = np.random.default_rng(4)
    A, G = rng.random((1, 3, 4, 5)), rng.standard_normal((1, 3, 4, 5))
    capture = lambda n, batch: (A.repeat(len(batch), 0), G.repeat(len(batch), 0))  # noqa: E731
    data = SiteData(A, G, images=np.zeros((1, 3, 4, 3)), capture=capture)
    want = GradCAMPlusPlus(eigen_smooth=True)(data)  # sigma=0: the same G on every copy
    np.testing.assert_allclose(SmoothGradCAMPlusPlus(sigma=0.0, eigen_smooth=True)(data), want, atol=1e-5)
    np.testing.assert_allclose(FinerCAM(base="layercam", eigen_smooth=True)(data),
                               LayerCAM(eigen_smooth=True)(data), atol=0)
    assert not np.allclose(FinerCAM(base="layercam")(data), LayerCAM(eigen_smooth=True)(data), atol=1e-3)
