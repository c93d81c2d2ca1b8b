"""One rank of a test's parallel run (or the single process it is compared with): runs
gancore.fit for each configuration of a JSON list and saves, per configuration, the final
parameters and history, or the one-line error. argv: SPEC.json OUT.pt"""
import importlib
import json
import sys

import torch

import gancore
from gancore.errors import GancoreError

torch.set_num_threads(1)
runs = json.loads(open(sys.argv[1]).read())
results = {}


def plugin(name: str):
    """A built-in's name, or MODULE:CLASS of a test plugin class."""
    if ":" not in name:
        return name
    module, cls = name.split(":")
    return getattr(importlib.import_module(module), cls)


for run in runs:
    try:
        plugins = {plugin(name): options for name, options in run.get("plugins", {}).items()}
        result = gancore.fit(plugins=plugins, progress=False, **run["settings"])
        results[run["label"]] = {
            "parameters": {name: {key: value.detach().clone() for key, value in module.state_dict().items()} for name, module in result.models.items()},
            "history": result.history,
        }
    except GancoreError as error:
        results[run["label"]] = {"error": str(error)}
torch.save(results, sys.argv[2])
