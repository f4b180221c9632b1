"""The README runs as written: its three examples (a lens grid, an intervention, a sweep) give the output it
shows, its two set-up commands are what CI runs, and it stays one screenful of introduction."""

import re

from tests.examples import ROOT, blocks, read, run_python, run_transcript

README = "README.md"


def test_lens_grid_example(cli_demo_lm):
    (transcript,) = blocks(README, "### A lens grid", "console")
    run_transcript(transcript)


def test_intervention_example(demo_lm):
    (code,) = blocks(README, "### An intervention", "python")
    (printed,) = blocks(README, "### An intervention", "text")
    assert run_python(code, {}, README) == printed


def test_sweep_example(cli_demo_lm):
    (transcript,) = blocks(README, "### A sweep", "console")
    run_transcript(transcript)


def test_ci_runs_the_readme_test_command():
    text = read(README)
    commands = [block.rstrip("\n") for block in blocks(README, "# layerscope", "bash")]
    assert len(commands) == 2 == text.count("```bash") and commands[0].endswith("&& layerscope")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci
    setup_ends = text.index(commands[1]) + len(commands[1])
    assert text[:setup_ends].count("\n") < 40  # both commands within the first 40 lines


def test_readme_is_short():
    assert len(read(README).encode()) <= 12 * 1024


def test_readme_links_lead_somewhere():
    """Every relative link of the README names a file of the repository, and a `#heading` one of its headings
    (as the site's table of contents spells them); the site's own links are checked by its strict build."""
    from markdown.extensions.toc import slugify

    links = re.findall(r"\]\(([^)]+)\)", read(README))
    assert len(links) > 10
    for link in links:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.*)$", read(path), re.M)
            assert anchor in {slugify(heading, "-") for heading in headings}, link
