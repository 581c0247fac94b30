"""The layer graph and the automatic layer choice: hand-built graphs and real architectures."""

from __future__ import annotations

import numpy as np
import pytest
import keras
from keras import layers as L

import camlens
from camlens.graph import GraphNode, LayerGraph, choose_layers, find_nodes, layer_report


def _graph(spec, outputs, inputs=("in",)):
    """spec: list of (name, kind, shape, [input names]) in run order."""
    nodes, ids = [], {}
    for i, name in enumerate(inputs):
        ids[name] = len(nodes)
        nodes.append(GraphNode(len(nodes), name, 0, "InputLayer", (8, 8, 3), [], True, i))
    for name, kind, shape, preds in spec:
        path, _, call = name.partition("#")
        ids[name] = len(nodes)
        nodes.append(GraphNode(len(nodes), path, int(call or 0), kind, shape, [ids[p] for p in preds]))
    return LayerGraph(nodes, [ids[n] for n in inputs], [ids[o] for o in outputs], list(outputs), list(inputs))


#: in -> a -> (b1, b2) -> cat -> gap -> out: b1 and b2 each see only part of the paths
BRANCHES = [
    ("a", "Conv2D", (8, 8, 4), ["in"]),
    ("b1", "Conv2D", (8, 8, 4), ["a"]),
    ("b2", "Conv2D", (8, 8, 4), ["a"]),
    ("cat", "Concatenate", (8, 8, 8), ["b1", "b2"]),
    ("gap", "GlobalAveragePooling2D", (8,), ["cat"]),
    ("out", "Dense", (2,), ["gap"]),
]


def test_branches_are_skipped_for_their_merge():
    g = _graph(BRANCHES, ["out"])
    choice = choose_layers(g)
    assert [n.path for n in choice.nodes] == ["cat"]
    report = layer_report(g)
    assert report.naive == "b2" and "b2 (#2), is not on every path" in report.notes[0]
    assert [r.path for r in report.candidates] == ["a", "cat"]


def test_pooling_prefers_its_producer_and_one_by_one_is_not_spatial():
    g = _graph(
        [
            ("conv", "Conv2D", (4, 4, 4), ["in"]),
            ("pool", "MaxPooling2D", (2, 2, 4), ["conv"]),
            ("squeeze", "Conv2D", (1, 1, 4), ["pool"]),
            ("out", "Dense", (2,), ["squeeze"]),
        ],
        ["out"],
    )
    choice = choose_layers(g)
    assert [n.path for n in choice.nodes] == ["conv"]
    assert "feeds the pooling layer pool" in choice.reason


def test_unknown_sizes_count_as_spatial_and_skip_connections_are_respected():
    g = _graph(
        [
            ("c1", "Conv2D", (None, None, 4), ["in"]),
            ("c2", "Conv2D", (None, None, 4), ["c1"]),
            ("add", "Add", (None, None, 4), ["c1", "c2"]),
            ("gap", "GlobalAveragePooling2D", (4,), ["add"]),
            ("out", "Dense", (2,), ["gap"]),
        ],
        ["out"],
    )
    assert [n.path for n in choose_layers(g).nodes] == ["add"]


def test_two_inputs_early_fusion_falls_back_to_all_inputs():
    g = _graph(
        [
            ("cat", "Concatenate", (8, 8, 6), ["a", "b"]),
            ("conv", "Conv2D", (8, 8, 4), ["cat"]),
            ("gap", "GlobalAveragePooling2D", (4,), ["conv"]),
            ("out", "Dense", (1,), ["gap"]),
        ],
        ["out"],
        inputs=("a", "b"),
    )
    choice = choose_layers(g)
    assert [n.path for n in choice.nodes] == ["conv"] and "all inputs together" in choice.reason


def test_find_nodes_names_paths_calls_and_suggestions():
    g = _graph(
        [
            ("enc/conv#0", "Conv2D", (8, 8, 4), ["in"]),
            ("enc/conv#1", "Conv2D", (8, 8, 4), ["enc/conv#0"]),
            ("out", "Dense", (2,), ["enc/conv#1"]),
        ],
        ["out"],
    )
    assert [n.call for n in find_nodes(g, "enc/conv")] == [0, 1]
    assert [n.call for n in find_nodes(g, "conv#1")] == [1]
    with pytest.raises(ValueError, match="Did you mean 'conv'"):
        find_nodes(g, "conx")
    with pytest.raises(ValueError, match="call #5 does not exist"):
        find_nodes(g, "conv#5")


EXPECTED = {
    "VGG16": "block5_conv3",  # the Keras Grad-CAM example's choice
    "ResNet50": "conv5_block3_out",
    "InceptionV3": "mixed10",  # not conv2d_94-like branch convolutions
    "Xception": "block14_sepconv2_act",
    "MobileNetV2": "out_relu",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keras_applications(name):
    model = getattr(keras.applications, name)(weights=None)
    report = camlens.layers(model)
    assert report.chosen == [EXPECTED[name]]
    assert EXPECTED[name] in str(report)
    if name == "InceptionV3":
        assert report.naive is not None and report.naive != "mixed10"
        assert any("not on every path" in n for n in report.notes)


def test_inception_v3_names_the_last_convolution_by_its_model_layers_index():
    # seed 004: "the last convolutional layer ... conv2d_94 (idx 299)" (Keras 2 counted names from
    # 1; Keras 3 calls the same layer conv2d_93). Names come from a global counter: start afresh.
    keras.utils.clear_session()
    model = keras.applications.InceptionV3(weights=None)
    assert model.layers[299].name == "conv2d_93" and model.layers[310].name == "mixed10"
    report = camlens.layers(model)
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == camlens.graph.ORDER_KERAS
    assert lines[1].split() == ["#", "layer", "type", "output", "calls", "on", "every", "path"]
    assert "299  conv2d_93 " in text and "310  mixed10 " in text
    assert report.naive == "conv2d_93" and report.index_of("conv2d_93") == "299"
    assert report.last_graph_conv == "conv2d_85" and report.index_of("conv2d_85") == "294"
    assert report.chosen == ["mixed10"] and "chosen: mixed10 (#310)" in lines
    assert report.notes == [
        "note: the last convolution by index, conv2d_93 (model.layers[299]), and the last one in "
        "graph order, conv2d_85 (model.layers[294]), are not on every path to the output (each is "
        "one branch that a later layer merges), so either would explain only part of the "
        "evidence; mixed10 (model.layers[310]) is on every path, the deepest such spatial layer."
    ]
    # the # column is what layer=<int> takes
    from camlens._explain import _resolve_layer
    from camlens.adapters import adapt
    nodes, _ = _resolve_layer(adapt(model).graph(), model, 299, [0])
    assert [n.path for n in nodes] == ["conv2d_93"]


def test_layer_index_column_nested_keras_and_torch():
    enc = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="c1"),
                            L.Conv2D(4, 3, name="c2")], name="encoder")
    a, b = keras.Input((16, 16, 3)), keras.Input((16, 16, 3))
    feats = L.Concatenate(name="cat")([enc(a), enc(b)])
    model = keras.Model([a, b], L.Dense(1, name="out")(L.GlobalAveragePooling2D(name="gap")(feats)))
    report = camlens.layers(model)
    assert [(r.index, r.path) for r in report.rows] == [
        ("2/0", "encoder/c1"), ("2/1", "encoder/c2"), ("3", "cat"), ("4", "gap"), ("5", "out")]
    assert "chosen: encoder/c2 (#2/1), encoder/c2#1 (#2/1)" in str(report).splitlines()

    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    report = camlens.layers(net, input_shape=(1, 3, 16, 16))
    assert str(report).splitlines()[0] == camlens.graph.ORDER_TORCH
    assert [r.index for r in report.rows] == ["0", "1", "2", "3", "4", "5"]


def test_layer_report_without_a_model_numbers_rows_in_graph_order():
    g = _graph(BRANCHES, ["out"])
    report = layer_report(g)
    assert [r.index for r in report.rows] == ["0", "1", "2", "3", "4", "5"]
    assert report.notes == [
        "note: the last convolution in graph order, b2 (#2), is not on every path to the output "
        "(it is one branch), so it would explain only part of the evidence."
    ]
    # an index that differs from graph order (Keras sorts model.layers by depth)
    order = ("X", {"a": "1", "b1": "3", "b2": "2", "cat": "4", "gap": "5", "out": "6"})
    report = layer_report(g, order=order)
    assert report.naive == "b1" and report.last_graph_conv == "b2"
    assert report.notes[0].startswith("note: the last convolution by index, b1 (#3), and the last "
                                      "one in graph order, b2 (#2), are not on every path")


def test_inception_explain_uses_mixed10_while_it_is_spatial():
    model = keras.applications.InceptionV3(weights=None, input_shape=(139, 139, 3), classes=3)
    x = np.random.default_rng(0).random((1, 139, 139, 3)).astype("float32")
    exp = camlens.explain(model, x, target=camlens.targets.Logit(0))
    assert exp.sites[0].layer == "mixed10" and exp.sites[0].shape == (3, 3, 2048)
    assert exp.maps[0].shape == (1, 139, 139)
    # at 75 px mixed10 is 1x1, no map at all: the choice moves up to the last spatial block
    small = keras.applications.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=3)
    assert camlens.layers(small).chosen == ["mixed7"]


# ---------------------------------------------------------------------------- vision transformers


def _vit_spec(tokens=17, mixer="MultiHeadAttention", head=("GetItem", "matmul")):
    """Patch conv -> tokens -> two pre-norm blocks -> final norm -> class token slice or pooling
    (``head[0]``) -> an optional projection of that vector (``head[1]``, like CLIP's ``x @ proj``)
    -> Dense."""
    spec = [
        ("patch", "Conv2D", (4, 4, 8), ["in"]),
        ("to_tokens", "Reshape", (16, 8), ["patch"]),
        ("cls", "ClassToken", (tokens, 8), ["to_tokens"]),
    ]
    prev = "cls"
    for b in range(2):
        spec += [
            (f"b{b}_norm1", "LayerNormalization", (tokens, 8), [prev]),
            (f"b{b}_attn", mixer, (tokens, 8), [f"b{b}_norm1", f"b{b}_norm1"]),
            (f"b{b}_add1", "Add", (tokens, 8), [prev, f"b{b}_attn"]),
            (f"b{b}_norm2", "LayerNormalization", (tokens, 8), [f"b{b}_add1"]),
            (f"b{b}_mlp", "Dense", (tokens, 8), [f"b{b}_norm2"]),
            (f"b{b}_add2", "Add", (tokens, 8), [f"b{b}_add1", f"b{b}_mlp"]),
        ]
        prev = f"b{b}_add2"
    spec += [("norm", "LayerNormalization", (tokens, 8), [prev]), ("read", head[0], (8,), ["norm"])]
    last = "read"
    if head[1]:
        spec.append(("proj", head[1], (8,), ["read"]))
        last = "proj"
    return _graph(spec + [("out", "Dense", (3,), [last])], ["out"])


def test_token_grid_of_token_shaped_nodes():
    def node(shape):
        return GraphNode(1, "x", 0, "Dense", shape, [0])

    assert node((197, 768)).token_grid == (14, 14, 1)
    assert node((196, 768)).token_grid == (14, 14, 0)
    assert node((12, 8)).token_grid is None and node((2, 8)).token_grid is None
    assert node((None, 8)).token_grid is None and node((14, 14, 8)).token_grid is None


def test_vit_auto_layer_is_the_input_of_the_last_attention():
    g = _vit_spec()
    choice = choose_layers(g)
    # not "norm", the deepest token layer on every path: only the class token reaches the head
    # from it; a product of the class vector ("proj") mixes no tokens
    assert [n.path for n in choice.nodes] == ["b1_norm1"]
    assert "17x8 tokens = 1 extra + 4x4 patches" in choice.reason
    assert "the input of b1_attn (MultiHeadAttention), the last layer that mixes tokens" in choice.reason
    report = layer_report(g)
    rows = {r.path: r for r in report.rows}
    assert rows["b1_norm1"].chosen and rows["b1_norm1"].spatial and not rows["b1_norm1"].dominates
    # torch.fx view of timm attention: the mixer is a matmul of per-head tensors
    assert [n.path for n in choose_layers(_vit_spec(mixer="matmul")).nodes] == ["b1_norm1"]


def test_vit_with_pooled_tokens_uses_the_final_norm():
    g = _vit_spec(tokens=16, head=("GlobalAveragePooling1D", None))
    choice = choose_layers(g)
    assert [n.path for n in choice.nodes] == ["norm"]
    assert "4x4 patches): the deepest token layer" in choice.reason
    assert "read (GlobalAveragePooling1D) pools its tokens" in choice.reason


def test_vit_without_a_known_token_mixer_keeps_the_spatial_rule():
    # a mixer camlens cannot recognise: no token layer is trusted, the patch conv dominates
    assert [n.path for n in choose_layers(_vit_spec(mixer="MyMixer")).nodes] == ["patch"]


def test_token_grid_for_register_tokens():
    g = _vit_spec(tokens=20)  # class token + 3 registers + 4x4 patches: 20 and 19 not squares
    # the model shows the grid: the 4x4 patch map upstream, flattened into the last 16 tokens
    shown = choose_layers(g)
    assert [n.path for n in shown.nodes] == ["b1_norm1"]
    assert "20x8 tokens = 4 extra + 4x4 patches" in shown.reason
    choice = choose_layers(g, token_grid=(4, 4))
    assert [n.path for n in choice.nodes] == ["b1_norm1"]
    assert "20x8 tokens = 4 extra + 4x4 patches" in choice.reason
    with pytest.raises(ValueError, match=r"token_grid must be \(grid_height, grid_width\)"):
        choose_layers(g, token_grid=(4, -1))
