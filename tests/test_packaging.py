"""The distribution: published as ``otter-mq`` (``otter`` on PyPI is another project), imported and run as
``otter``, with complete metadata, one version and README links that work on a package index."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib

import otter

ROOT = Path(__file__).parents[1]
DISTRIBUTION = "otter-mq"
REPOSITORY = "https://github.com/otter-mq/otter"


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_in_the_package_the_metadata_and_the_command() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict) and "version" not in project and project["dynamic"] == ["version"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "otter.__version__"}  # type: ignore[index]
    assert metadata.version(DISTRIBUTION) == otter.__version__
    result = subprocess.run([sys.executable, "-m", "otter", "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["otter", otter.__version__]


def test_the_distribution_is_otter_mq_and_installs_the_otter_package_and_command() -> None:
    dist = metadata.distribution(DISTRIBUTION)
    assert dist.metadata["Name"] == DISTRIBUTION
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"otter": "otter.cli:main"}
    assert Path(otter.__file__).parent.name == "otter"


def test_extras_name_this_distribution() -> None:
    requirements = metadata.requires(DISTRIBUTION) or []
    own = [r for r in requirements if re.match(r"otter\b", r)]
    assert sorted(own) == [
        'otter-mq[dashboard,fast,metrics,site,test]; extra == "dev"', 'otter-mq[fast]; extra == "bench"'
    ]


def test_metadata_is_complete_and_the_license_file_ships() -> None:
    md = metadata.metadata(DISTRIBUTION)
    assert md["License-Expression"] == "MIT"
    assert md.get_all("License-File") == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    shipped = [str(f) for f in metadata.files(DISTRIBUTION) or () if f.name == "LICENSE"]
    assert shipped and shipped[0].endswith("licenses/LICENSE")
    urls = dict(url.split(", ", 1) for url in md.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Changelog", "Documentation"} <= set(urls)
    assert all(url.startswith(REPOSITORY) for url in urls.values())
    classifiers = md.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.10" in classifiers
    assert "rabbitmq" in (md["Keywords"] or "") and md["Author-email"]


def test_readme_links_are_absolute_so_they_work_on_a_package_index() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert links, "the README links to the docs"
    relative = [link for link in links if not re.match(r"https?://", link)]
    assert relative == []
    ours = [link for link in links if "otter-mq" in link]
    assert ours and all(link.startswith(f"{REPOSITORY}/blob/main/") for link in ours)
