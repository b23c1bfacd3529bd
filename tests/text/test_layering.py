import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in output.stdout.split()}


def test_text_core_imports_no_framework_and_no_torch():
    assert not imported_after("import mamba3_integrations.text") & {
        "torch",
        "llama_index",
        "langchain_core",
        "langchain_text_splitters",
    }


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("from mamba3_integrations.langchain import OrderPreservingCompressor", "llama_index"),
        ("from mamba3_integrations.llama_index import Mamba3SemanticNodeParser", "langchain_core"),
    ],
)
def test_adapters_import_only_their_framework(statement, absent):
    assert absent not in imported_after(statement)
