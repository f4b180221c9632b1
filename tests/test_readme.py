"""The README's Python example runs as written, and its two set-up commands are what CI runs."""

import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_python_api_example_runs(capsys):
    example = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S)[1]
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == " Paris"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(commands) == 2 and commands[0].endswith("&& layerscope")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
