"""docs/kubernetes.md quotes the manifests field by field; these tests keep every quote true.

A quote is an HTML comment naming the file, `<!-- from: base/frontend-deployment.yaml -->`
(relative to deploy/kubernetes), followed by a ```yaml block: the block must be part of that
file, every mapping key in it present there with the same value, every list item in it equal
to (part of) some item of the file's list. The images the page shows must exist.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "kubernetes.md"
KUBE = ROOT / "deploy" / "kubernetes"
QUOTE = re.compile(
    r"^(?P<indent>[ \t]*)<!-- from: (?P<file>\S+) -->\n"
    r"(?P=indent)```yaml\n(?P<body>.*?)\n(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)\)")


@dataclass(frozen=True)
class Quote:
    file: str
    line: int
    body: str

    def value(self) -> Any:
        return yaml.safe_load(textwrap.dedent(self.body))


def quotes() -> list[Quote]:
    text = PAGE.read_text()
    return [
        Quote(m["file"], text.count("\n", 0, m.start()) + 1, m["body"])
        for m in QUOTE.finditer(text)
    ]


def part_of(quoted: Any, actual: Any) -> bool:
    """True when `quoted` is `actual` with parts left out (never changed or added)."""
    if isinstance(quoted, dict):
        return isinstance(actual, dict) and all(
            key in actual and part_of(value, actual[key]) for key, value in quoted.items()
        )
    if isinstance(quoted, list):
        return isinstance(actual, list) and all(
            any(part_of(item, candidate) for candidate in actual) for item in quoted
        )
    return type(quoted) is type(actual) and quoted == actual


def manifest(file: str) -> Any:
    (document,) = [d for d in yaml.safe_load_all((KUBE / file).read_text()) if d]
    return document


@pytest.mark.parametrize("quote", quotes(), ids=lambda q: f"{q.file}:line{q.line}")
def test_every_quoted_block_is_part_of_the_manifest_it_names(quote: Quote) -> None:
    assert (KUBE / quote.file).is_file(), f"line {quote.line}: no {quote.file}"
    assert part_of(quote.value(), manifest(quote.file)), (
        f"docs/kubernetes.md line {quote.line} quotes {quote.file} wrongly:\n{quote.body}"
    )


def test_the_walkthrough_quotes_selectors_ports_dns_replicas_requests_and_probes() -> None:
    quoted: dict[str, list[Any]] = {}
    for quote in quotes():
        quoted.setdefault(quote.file, []).append(quote.value())
    assert set(quoted) >= {
        "base/frontend-deployment.yaml",
        "base/frontend-service.yaml",
        "base/redis-follower-service.yaml",
        "base/redis-leader-service.yaml",
        "base/redis-leader-deployment.yaml",
    }
    text = yaml.safe_dump(quoted["base/frontend-deployment.yaml"])
    for field in ("matchLabels", "replicas", "GET_HOSTS_FROM", "containerPort",
                  "readinessProbe", "livenessProbe", "requests", "preStop"):  # fmt: skip
        assert field in text, field
    service = yaml.safe_dump(quoted["base/frontend-service.yaml"])
    for field in ("selector", "port", "targetPort"):
        assert field in service, field


def test_part_of_rejects_a_changed_value_an_invented_key_and_an_invented_list_item() -> None:
    actual = manifest("base/frontend-deployment.yaml")
    assert part_of({"spec": {"replicas": 3}}, actual)
    assert not part_of({"spec": {"replicas": 4}}, actual)
    assert not part_of({"spec": {"replicas": "3"}}, actual)
    assert not part_of({"spec": {"paused": False}}, actual)
    containers = {"spec": {"template": {"spec": {"containers": [{"name": "backend"}]}}}}
    assert not part_of(containers, actual)


def test_the_screenshots_the_page_shows_exist_and_are_pngs() -> None:
    shown = {m["path"] for m in IMAGE.finditer(PAGE.read_text())}
    assert {"status-3.png", "status-5.png", "status-2.png"} <= shown
    for path in shown:
        image = PAGE.parent / path
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
