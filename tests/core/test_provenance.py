import torch

from gancore.provenance import build_info, build_key


def test_build_info_names_what_changes_cpu_arithmetic():
    info = build_info()
    assert info["torch"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["threads"] == torch.get_num_threads()
    assert info["commit"] is None or len(info["commit"].split("+")[0]) == 40
    key = build_key(info)
    assert info["cpu_capability"] in key and torch.__version__ in key
