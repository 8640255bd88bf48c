"""The structure between modules: no import cycles, the config read in one layer, a light CLI,
and the library verbs on the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import detkit

PACKAGE = Path(detkit.__file__).resolve().parent
# the composition root: the only modules that may read a Config
CONFIG_READERS = {"detkit.config", "detkit.config.build", "detkit.api"}
# the layers, lowest first (docs/architecture.md); ``detkit`` is the lazy package root
LAYERS = [
    ("detkit", "detkit.core"),
    ("detkit.boxes",),
    ("detkit.data",),
    ("detkit.models",),
    ("detkit.eval",),
    ("detkit.inference",),
    ("detkit.engine",),
    ("detkit.config", "detkit.config.build"),
    ("detkit.api",),
    ("detkit.cli",),
]
UPWARD_ALLOWED = {
    ("detkit.inference.predict", "detkit.config.build"),
    ("detkit.inference.export", "detkit.config.build"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imported(module: str, path: Path, node: ast.AST, known: dict[str, Path]) -> list[str]:
    """The detkit modules one import statement names (``from pkg import sub`` -> ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([base] if base else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(typing: bool = False) -> dict[str, set[str]]:
    """detkit module -> the detkit modules it imports anywhere (functions included; imports
    under ``if TYPE_CHECKING:`` only when ``typing``: they never run)."""
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}

    def walk(module: str, path: Path, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                not typing
                and isinstance(child, ast.If)
                and "TYPE_CHECKING" in ast.unparse(child.test)
            ):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                graph[module].update(_imported(module, path, child, known))
            walk(module, path, child)

    for module, path in known.items():
        walk(module, path, ast.parse(path.read_text(encoding="utf-8")))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan).

    Example:
        >>> cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
        [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle_not_even_through_typing_imports():
    graph = import_graph(typing=True)
    assert len(graph) > 50 and "detkit.config.build" in graph["detkit.inference.predict"]  # real
    assert "detkit.data.types" in graph["detkit.core.protocols"]  # typing edges are in it
    assert cycles(graph) == []


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest package prefix of ``module``."""
    best = (-1, -1)
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "detkit" and module.startswith(name + ".")):
                best = max(best, (len(name), i))
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The (importer, imported) pairs where the imported module sits in a higher layer."""
    return {(m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)}


def test_no_module_imports_a_higher_layer():
    """docs/architecture.md's layer order, lowest first; a module imports its own layer and
    those below. The one exception: ``Detector.from_checkpoint`` composes a model from a
    checkpoint's config through the composition root (imported inside the method)."""
    assert upward_imports(import_graph()) == UPWARD_ALLOWED
    # the check is real: an engine module importing the CLI would be caught
    assert upward_imports({"detkit.engine.trainer": {"detkit.cli"}, "detkit.cli": set()})


def test_the_top_level_is_a_map():
    """At most 12 entries, and no module name used for two things: the CLI's modules are named
    after the verbs they parse, and the per-architecture / per-format modules (``yolo``, ``ssd``,
    ``coco``, ``voc``) recur in each layer by design."""
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 12, entries
    stems: dict[str, list[str]] = {}
    for module in _modules():
        stem = module.rpartition(".")[2].rstrip("s")
        if module.startswith("detkit.cli.") or stem in ("yolo", "ssd", "coco", "voc", "detkit"):
            continue
        stems.setdefault(stem, []).append(module)
    assert {k: v for k, v in stems.items() if len(v) > 1} == {}


def test_only_the_composition_root_and_the_cli_read_the_config():
    readers = {
        module
        for module, imports in import_graph().items()
        if "detkit.config" in imports and not module.startswith("detkit.cli")
    }
    assert readers <= CONFIG_READERS, readers - CONFIG_READERS
    for module, path in _modules().items():
        if module in CONFIG_READERS or module.startswith("detkit.cli"):
            continue
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        assert not names & {"Config", "cfg"}, module


def test_cli_help_imports_no_heavy_module():
    """``detkit --help`` parses every verb's arguments without torch, numpy or OpenCV."""
    code = (
        "import sys\n"
        "from detkit.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'numpy', 'cv2', 'albumentations', 'pycocotools', 'matplotlib', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-c", "from detkit.cli import main; main(['--help'])"],
        capture_output=True,
        text=True,
    )
    assert help_text.returncode == 0 and "infer" in help_text.stdout


def test_prediction_starts_without_torchvision_or_dynamo():
    """NMS and the version check run without importing torchvision, whose ops module imports
    ``torch._dynamo`` (a second of every inference process's start-up)."""
    code = (
        "import sys, torch\n"
        "from detkit.boxes import batched_nms\n"
        "from detkit.core.versions import check_versions\n"
        "import detkit.inference.predict\n"
        "boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])\n"
        "keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3), 0.5)\n"
        "print(keep.tolist(), check_versions(), 'torchvision' in sys.modules,\n"
        "      'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[0, 2] [] False False"


@pytest.mark.parametrize(
    ("verb", "function"),
    [
        ("train", "detkit.api.train"),
        ("resume", "detkit.api.resume"),
        ("evaluate", "detkit.api.evaluate"),
        ("check_data", "detkit.api.check_data"),
        ("convert", "detkit.api.convert"),
        ("infer", "detkit.inference.run.infer"),
        ("export", "detkit.inference.export.export_checkpoint"),
    ],
)
def test_the_library_verbs_are_functions_on_the_package(verb, function):
    import importlib

    module, _, name = function.rpartition(".")
    importlib.import_module(module)  # importing a submodule must not shadow the verb
    got = getattr(detkit, verb)
    assert callable(got) and got is getattr(importlib.import_module(module), name)
    assert got.__doc__


@pytest.mark.parametrize("config", ["yolo_tiny", "yolo_n", "ssdlite320"])
def test_the_models_keep_the_detection_model_contract(config):
    from detkit.config import load_config
    from detkit.config.build import build_model
    from detkit.core.protocols import DetectionModel

    model = build_model(load_config(overrides=[f"model={config}"]).model, 3)
    assert isinstance(model, DetectionModel)
    assert not isinstance(object(), DetectionModel)  # the check is real


def test_every_reader_keeps_the_detection_split_contract(tiny_formats):
    from detkit.config import load_config
    from detkit.config.build import build_dataset
    from detkit.core.protocols import DetectionSplit

    shapes = "class_names=[circle,square,triangle,star]"
    cases = {
        "coco": ["data.format=coco", f"root={tiny_formats['coco']}"],
        "voc": ["data=voc", f"root={tiny_formats['voc']}", "voc_val=[val]", shapes],
        "yolo": ["data=yolo", f"root={tiny_formats['yolo']}"],
    }
    for fmt, overrides in cases.items():
        split = build_dataset(load_config(overrides=overrides).data, "val")
        assert isinstance(split, DetectionSplit), fmt
        assert len(split) == len(split.image_ids) > 0 and split.load(0).image.ndim == 3


# each CLI verb -> the one library verb it calls
LIBRARY_VERBS = [
    *(f"detkit.api.{name}" for name in ("train", "resume", "resume_or_start", "train_config")),
    *(f"detkit.api.{name}" for name in ("evaluate", "check_data", "convert", "anchors")),
    "detkit.api.model_summary",
    "detkit.inference.run.infer",
    "detkit.inference.export.export_checkpoint",
    "detkit.inference.export.export_checked",
    "detkit.inference.predict.Detector.explain",
    "detkit.inference.predict.Detector.predict",
]
CLI_VERBS = {
    "train": (  # --resume auto: no run there yet, so it starts one (resume_or_start inside)
        "detkit.api.train",
        "train --resume auto {data} epochs=1 img_size=64 batch=4 workers=0 quiet=true "
        "project={tmp}/runs name=r plots=false",
    ),
    "evaluate": ("detkit.api.evaluate", "eval --weights {w} --no-plots"),
    "infer": ("detkit.inference.run.infer", "infer {image} --weights {w}"),
    "explain": ("detkit.inference.predict.Detector.explain", "explain {image} --weights {w}"),
    "export": ("detkit.inference.export.export_checked", "export --weights {w} --no-check"),
    "summary": ("detkit.api.model_summary", "summary yolo_n --img-size 64"),
    "anchors": ("detkit.api.anchors", "anchors --per-level 1 {data}"),
    "convert": ("detkit.api.convert", "convert {yolo} {tmp}/out --from yolo --to coco"),
    "check_data": ("detkit.api.check_data", "check-data {data}"),
}


@pytest.mark.parametrize("verb", sorted(CLI_VERBS))
def test_every_cli_verb_calls_exactly_one_library_verb(
    verb, tiny_shapes, tiny_formats, tmp_path, monkeypatch, write_image
):
    """Counted at the top: a library verb another one calls inside (``export_checked`` calls
    ``export_checkpoint``) is part of the one call."""
    import pkgutil

    from test_predict import make_checkpoint

    from detkit.cli import VERBS, main

    assert set(CLI_VERBS) == set(VERBS)
    monkeypatch.chdir(tmp_path)
    data = f"root={tiny_shapes} num_train=8 num_val=4"
    calls: list[str] = []
    depth = [0]

    def counting(name: str):
        real = pkgutil.resolve_name(name)

        def counted(*args, **kwargs):
            calls.append(name) if depth[0] == 0 else None
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1

        return counted

    for name in LIBRARY_VERBS:
        monkeypatch.setattr(name, counting(name))
    expected, command = CLI_VERBS[verb]
    w = make_checkpoint(tmp_path / "w/best.pt", overrides=data.split()) if "{w}" in command else ""
    image = write_image(tmp_path / "a.jpg", (64, 96))
    args = command.format(w=w, image=image, data=data, yolo=tiny_formats["yolo"], tmp=tmp_path)
    assert main(args.split()) == 0
    assert calls == [expected]


def test_parameters_name_their_types():
    """A parameter annotated ``Any`` (``*args`` / ``**kwargs`` aside) says nothing of what it
    takes: a model is a ``DetectionModel``, a split a ``DetectionSplit``, an image an
    ``ImageLike``."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                found += [
                    (path.relative_to(PACKAGE).as_posix(), node.name, p.arg)
                    for p in params
                    if p is not None
                    and p.arg not in ("args", "kwargs")
                    and isinstance(p.annotation, ast.Name)
                    and p.annotation.id == "Any"
                ]
    # Detector.explain calls explain(self, ...): naming Detector there would close a cycle
    assert found == [("inference/explain.py", "explain", "detector")]
