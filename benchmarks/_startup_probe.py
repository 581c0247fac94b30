"""``python _startup_probe.py ARGS``: ``camlens ARGS``, then one line ``FRAMEWORKS <exit status>
<frameworks imported>`` (for benchmarks/startup.py). The app's server is replaced by a return,
so that ``camlens app`` stops where it would start serving: model loaded, app built."""

import sys

if sys.argv[1:2] == ["app"]:  # other commands do not pay for uvicorn's import
    import uvicorn

    uvicorn.Server.run = lambda self, *args, **kwargs: None

from camlens.cli import main

try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
found = sorted({m.split(".")[0] for m in sys.modules} & {"jax", "keras", "tensorflow", "torch"})
print("FRAMEWORKS", code, ",".join(found), flush=True)
sys.exit(code)
